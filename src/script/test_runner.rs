//! `tunelab test [DIR | FILE ...]`: regression scripts, one fresh engine each.
//!
//! Every `*.rhai` under the given folders (default `tests/scripts/`) is a test, except files whose
//! name starts with `_` (helpers that tests import). A script passes when it runs to the end; a
//! `throw` or a failed `lab/assert` assertion fails it. The report is one line per script, then
//! `N passed, N failed`; `--junit PATH` also writes a JUnit XML file for CI dashboards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rhai::Map;

use super::engine::{build_engine, EngineOptions, HostContext};
use super::runner::{read_script, run_source};
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::output::Output;

/// The outcome of one test script.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub path: PathBuf,
    pub duration: Duration,
    /// `None` when the script passed; otherwise the first line and the full report.
    pub failure: Option<(String, String)>,
    /// What the script printed.
    pub output: String,
}

/// The test scripts named by `paths` (folders searched recursively), sorted, helpers skipped.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files)?;
        } else if path.is_file() {
            files.push(crate::fsutil::tidy_path(path));
        } else {
            return Err(Error::io_hint(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
                "give a folder of .rhai scripts or script files",
            ));
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let helper = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('_'));
        if path.is_dir() {
            walk(&path, files)?;
        } else if !helper && path.extension().is_some_and(|e| e == "rhai") {
            files.push(crate::fsutil::tidy_path(&path));
        }
    }
    Ok(())
}

/// Run one script in a fresh engine that shares `cancel`, capturing its output.
pub fn run_one(path: &Path, cancel: &CancelToken) -> TestResult {
    let start = Instant::now();
    let ctx = HostContext {
        output: Output::capture(),
        cancel: cancel.clone(),
    };
    let name = path.to_string_lossy().into_owned();
    let failure = match read_script(path) {
        Err(e) => Some((e.to_string(), e.to_string())),
        Ok(text) => {
            let engine = build_engine(&ctx, &EngineOptions::default());
            run_source(&engine, &name, &text, Map::new())
                .err()
                .map(|f| (f.diagnostic.headline(), f.rendered))
        }
    };
    TestResult {
        path: path.to_path_buf(),
        duration: start.elapsed(),
        failure,
        output: ctx.output.captured(),
    }
}

/// The report line of one result: `ok      path (0.12 s)` or `FAILED  path (0.12 s)` + error.
pub fn report_line(r: &TestResult) -> String {
    let secs = r.duration.as_secs_f64();
    match &r.failure {
        None => format!("ok      {} ({secs:.2} s)", r.path.display()),
        Some((first, _)) => format!(
            "FAILED  {} ({secs:.2} s)\n        {first}",
            r.path.display()
        ),
    }
}

/// The closing line: `N passed, N failed`.
pub fn summary_line(results: &[TestResult]) -> String {
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    format!("{} passed, {failed} failed", results.len() - failed)
}

/// A JUnit XML report of `results`.
pub fn junit_xml(results: &[TestResult]) -> String {
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    let total: f64 = results.iter().map(|r| r.duration.as_secs_f64()).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str(&format!(
        "<testsuite name=\"tunelab\" tests=\"{}\" failures=\"{failed}\" errors=\"0\" time=\"{total:.3}\">\n",
        results.len()
    ));
    for r in results {
        let name = escape(&r.path.to_string_lossy());
        xml.push_str(&format!(
            "  <testcase classname=\"tunelab.scripts\" name=\"{name}\" time=\"{:.3}\"",
            r.duration.as_secs_f64()
        ));
        if r.failure.is_none() && r.output.is_empty() {
            xml.push_str("/>\n");
            continue;
        }
        xml.push_str(">\n");
        if let Some((first, full)) = &r.failure {
            xml.push_str(&format!(
                "    <failure message=\"{}\">{}</failure>\n",
                escape(first),
                escape(full)
            ));
        }
        if !r.output.is_empty() {
            xml.push_str(&format!(
                "    <system-out>{}</system-out>\n",
                escape(&r.output)
            ));
        }
        xml.push_str("  </testcase>\n");
    }
    xml.push_str("</testsuite>\n");
    xml
}

/// Escape text for XML attributes and content; drops characters XML 1.0 forbids.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_counts_failures_and_escapes() {
        let results = vec![
            TestResult {
                path: "a.rhai".into(),
                duration: Duration::from_millis(5),
                failure: None,
                output: String::new(),
            },
            TestResult {
                path: "b.rhai".into(),
                duration: Duration::from_millis(7),
                failure: Some(("b.rhai:1:1: x < y".into(), "full".into())),
                output: "out & about".into(),
            },
        ];
        let xml = junit_xml(&results);
        assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
        assert!(xml.contains("message=\"b.rhai:1:1: x &lt; y\""), "{xml}");
        assert!(
            xml.contains("<system-out>out &amp; about</system-out>"),
            "{xml}"
        );
        assert_eq!(summary_line(&results), "1 passed, 1 failed");
    }

    #[test]
    fn helpers_starting_with_underscore_are_not_tests() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.rhai", "a.rhai", "_util.rhai", "notes.txt"] {
            std::fs::write(dir.path().join(name), "1").unwrap();
        }
        let files = collect(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.rhai", "b.rhai"]);
    }
}
