//! Reading raw rows from dataset files, one format per file in this folder.
//!
//! A reader turns a file into rows (`serde_json` objects: column name → value) and hands each one
//! to a callback with its [`Loc`] (line or record number, 1-based), so conversion can name the
//! exact place of a bad record and nothing holds a second copy of the whole file. The format is
//! chosen by extension, as LLaMA-Factory chooses its Hugging Face builder (`FILEEXT2TYPE`), plus
//! `.tsv`, which LLaMA-Factory lacks. A folder loads every file in it (one extension only), or is a
//! Hugging Face `save_to_disk` folder when it holds `state.json`.

pub mod arrow_ipc;
pub mod arrow_value;
pub mod delimited;
pub mod json;
pub mod parquet;
pub mod text;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One raw row: column name → value.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// Where a row is in its file, 1-based, as a user would look for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// A line of a line-oriented file (JSON Lines, CSV, TSV, text).
    Line(usize),
    /// The n-th record of a JSON array, Parquet or Arrow file.
    Record(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Record(n) => write!(f, "record {n}"),
        }
    }
}

/// The callback rows are handed to.
pub type RowSink<'a> = dyn FnMut(&Path, Loc, Row) -> Result<()> + 'a;

/// Longest line accepted in a line-oriented file; longer is almost surely not a dataset.
pub const MAX_LINE_BYTES: usize = 64 << 20;
/// Largest JSON-array file read whole into memory.
pub const MAX_JSON_ARRAY_BYTES: u64 = 16 << 30;

/// The file formats tunelab reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    JsonLines,
    Csv,
    Tsv,
    Parquet,
    Arrow,
    Text,
}

impl Format {
    /// The format of `path`, from its extension.
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        Ok(match ext.as_str() {
            "json" => Format::Json,
            "jsonl" => Format::JsonLines,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "parquet" => Format::Parquet,
            "arrow" => Format::Arrow,
            "txt" => Format::Text,
            _ => return Err(Error::data(
                path,
                "file name",
                "unknown file type; allowed file types: arrow, csv, json, jsonl, parquet, tsv, txt",
            )),
        })
    }
}

/// Read every row of `path` (a file, a folder of same-type files, or a `save_to_disk` folder).
pub fn read_rows(path: &Path, sink: &mut RowSink) -> Result<()> {
    if path.is_dir() {
        if path.join("state.json").is_file() {
            return arrow_ipc::read_saved_dataset(path, sink);
        }
        for file in folder_files(path)? {
            read_file(&file, sink)?;
        }
        return Ok(());
    }
    if !path.exists() {
        return Err(Error::io_hint(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            "check file_name in dataset_info.json (it is relative to the dataset folder)",
        ));
    }
    read_file(path, sink)
}

/// The files of a dataset folder: every non-hidden file, sorted, all of one format.
pub fn folder_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    let Some(first) = files.first() else {
        return Err(Error::data(dir, "folder", "no data files in this folder"));
    };
    let format = Format::of(first)?;
    for file in &files {
        if Format::of(file)? != format {
            return Err(Error::data(
                dir,
                "folder",
                format!(
                    "file types should be identical: {} and {} differ; keep one format per folder",
                    first.display(),
                    file.display()
                ),
            ));
        }
    }
    Ok(files)
}

fn read_file(path: &Path, sink: &mut RowSink) -> Result<()> {
    match Format::of(path)? {
        Format::Json => json::read_json(path, sink),
        Format::JsonLines => json::read_json_lines(path, sink),
        Format::Csv => delimited::read(path, b',', sink),
        Format::Tsv => delimited::read(path, b'\t', sink),
        Format::Parquet => parquet::read(path, sink),
        Format::Arrow => arrow_ipc::read_arrow_file(path, sink),
        Format::Text => text::read(path, sink),
    }
}

/// Call `each(line_number, text)` for every line of `path` (1-based; the line ending kept),
/// checking the length cap and UTF-8 and dropping a leading byte-order mark. Returns the count.
pub fn for_each_line(
    path: &Path,
    mut each: impl FnMut(usize, &str) -> Result<()>,
) -> Result<usize> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(path, e))?;
        if read == 0 {
            return Ok(number);
        }
        number += 1;
        let loc = Loc::Line(number);
        if line.len() > MAX_LINE_BYTES {
            return Err(Error::data(path, loc.to_string(), format!("line longer than {MAX_LINE_BYTES} bytes; is this really a line-oriented text file?")));
        }
        let bytes = if number == 1 {
            strip_bom(&line)
        } else {
            &line[..]
        };
        each(number, utf8(bytes, path, loc)?)?;
    }
}

/// Run one call into a third-party decoder (Arrow IPC, Parquet), its panic caught and returned as
/// the panic's message: those decoders index with offsets and lengths read from the file and some
/// panic on a corrupt one (found by tests/mutation.rs), which must be an error naming the file,
/// not a crash. The panic is not printed either: the error that names the file is the one line
/// the user sees.
pub(crate) fn decoder_call<T>(call: impl FnOnce() -> T) -> std::result::Result<T, String> {
    quiet_panics::install();
    let was_quiet = quiet_panics::QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
    quiet_panics::QUIET.with(|q| q.set(was_quiet));
    result.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the decoder failed".into())
    })
}

/// A panic hook that stays silent for panics [`decoder_call`] catches on this thread and hands
/// every other panic to the hook that was there before.
mod quiet_panics {
    use std::cell::Cell;
    use std::sync::Once;

    thread_local! {
        /// Set while a decoder call whose panic is caught runs on this thread.
        pub static QUIET: Cell<bool> = const { Cell::new(false) };
    }

    /// Wrap the current panic hook once per process.
    pub fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(|q| q.get()) {
                    previous(info)
                }
            }));
        });
    }
}

/// Strip a UTF-8 byte-order mark (spreadsheet exports often start with one).
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// `bytes` as UTF-8, or an error naming the place and the byte offset.
pub fn utf8<'a>(bytes: &'a [u8], path: &Path, loc: Loc) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        Error::data(
            path,
            loc.to_string(),
            format!(
                "not valid UTF-8 (at byte {} of the {}); re-save the file as UTF-8",
                e.valid_up_to(),
                match loc {
                    Loc::Line(_) => "line",
                    Loc::Record(_) => "record",
                }
            ),
        )
    })
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// All rows of `path` with their locations.
    pub fn rows(path: &Path) -> Result<Vec<(Loc, Row)>> {
        let mut out = Vec::new();
        read_rows(path, &mut |_, loc, row| {
            out.push((loc, row));
            Ok(())
        })?;
        Ok(out)
    }
}
