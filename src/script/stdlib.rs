//! The Rhai standard library of tunelab, compiled into the binary.
//!
//! Every `stdlib/NAME.rhai` file is embedded here and imported from scripts as
//! `import "lab/NAME" as x;`, so a script runs the same wherever the binary is copied. Errors inside
//! a stdlib module name the file as `stdlib/NAME.rhai` (see [`source_name`]). A test below checks
//! that no file in `stdlib/` is forgotten in [`STDLIB`].

/// `(import path, source text)` for every embedded module.
pub const STDLIB: &[(&str, &str)] = &[
    ("lab/assert", include_str!("../../stdlib/assert.rhai")),
    ("lab/fmt", include_str!("../../stdlib/fmt.rhai")),
];

/// The prefix that marks an import as an embedded stdlib module.
pub const PREFIX: &str = "lab/";

/// The source text of the embedded module imported as `path` (e.g. `lab/assert`).
pub fn source(path: &str) -> Option<&'static str> {
    STDLIB.iter().find(|(p, _)| *p == path).map(|(_, s)| *s)
}

/// The file name errors show for the module imported as `path`: `lab/fmt` → `stdlib/fmt.rhai`.
pub fn source_name(path: &str) -> String {
    format!("stdlib/{}.rhai", path.strip_prefix(PREFIX).unwrap_or(path))
}

/// The source text of an embedded module given the file name errors show (`stdlib/fmt.rhai`).
pub fn source_by_file_name(name: &str) -> Option<&'static str> {
    let stem = name.strip_prefix("stdlib/")?.strip_suffix(".rhai")?;
    source(&format!("{PREFIX}{stem}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stdlib_file_is_embedded_with_its_current_text() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/stdlib");
        let mut on_disk = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("rhai") {
                continue;
            }
            on_disk += 1;
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let import = format!("{PREFIX}{stem}");
            let embedded = source(&import)
                .unwrap_or_else(|| panic!("{} is not listed in STDLIB", path.display()));
            assert_eq!(embedded, std::fs::read_to_string(&path).unwrap());
        }
        assert_eq!(
            on_disk,
            STDLIB.len(),
            "STDLIB lists a file that is not in stdlib/"
        );
    }

    #[test]
    fn file_names_map_both_ways() {
        assert_eq!(source_name("lab/fmt"), "stdlib/fmt.rhai");
        assert!(source_by_file_name("stdlib/fmt.rhai").is_some());
        assert!(source_by_file_name("stdlib/nope.rhai").is_none());
    }
}
