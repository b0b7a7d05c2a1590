//! JSON readers: a JSON array of objects, or JSON Lines (one object per line).
//!
//! A `.json` file may be either, as with Hugging Face's json builder that LLaMA-Factory uses: it is
//! an array when its first non-blank character is `[`, JSON Lines otherwise. Arrays are streamed
//! element by element (only one row exists as a `Value` at a time). A syntax error names the line
//! and column; a line of JSON Lines that does not parse names that line. Blank lines are skipped.

use std::io::Read;
use std::path::Path;

use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde_json::Value;

use super::{for_each_line, strip_bom, utf8, Loc, Row, RowSink, MAX_JSON_ARRAY_BYTES};
use crate::error::{Error, Result};

/// Read a `.json` file: an array of objects, or JSON Lines.
pub fn read_json(path: &Path, sink: &mut RowSink) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 4096];
    let n = file.read(&mut head).map_err(|e| Error::io(path, e))?;
    let first = strip_bom(&head[..n])
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied();
    match first {
        None => Err(Error::data(
            path,
            "line 1",
            "the file is empty; expected a JSON array or JSON Lines",
        )),
        Some(b'[') => read_array(path, sink),
        Some(_) => read_json_lines(path, sink),
    }
}

/// Read a JSON array of objects, streaming its elements.
pub fn read_array(path: &Path, sink: &mut RowSink) -> Result<()> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if size > MAX_JSON_ARRAY_BYTES {
        return Err(Error::data(
            path,
            "file size",
            format!("{size} bytes is more than the {MAX_JSON_ARRAY_BYTES}-byte limit for a JSON array; write it as JSON Lines (.jsonl), which streams"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = utf8(strip_bom(&bytes), path, Loc::Record(1)).map_err(|_| {
        let bad = std::str::from_utf8(strip_bom(&bytes))
            .unwrap_err()
            .valid_up_to();
        let line = strip_bom(&bytes)[..bad]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        Error::data(
            path,
            format!("line {line}"),
            "not valid UTF-8; re-save the file as UTF-8",
        )
    })?;
    let mut failure = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = ArraySeed {
        sink,
        path,
        failure: &mut failure,
    };
    let result = seed.deserialize(&mut de).and_then(|()| de.end());
    match (result, failure) {
        (_, Some(err)) => Err(err),
        (Err(e), None) => Err(syntax_error(path, &e)),
        (Ok(()), None) => Ok(()),
    }
}

/// A serde_json syntax error as `path: line L column C: message`.
fn syntax_error(path: &Path, e: &serde_json::Error) -> Error {
    let message = e.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m)
        .to_string();
    Error::data(
        path,
        format!("line {} column {}", e.line(), e.column()),
        format!("invalid JSON: {message}"),
    )
}

struct ArraySeed<'a, 'b> {
    sink: &'a mut RowSink<'b>,
    path: &'a Path,
    failure: &'a mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for ArraySeed<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ArraySeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let mut record = 0;
        while let Some(value) = seq.next_element::<Value>()? {
            record += 1;
            let loc = Loc::Record(record);
            let outcome = match value {
                Value::Object(row) => (self.sink)(self.path, loc, row),
                other => Err(not_an_object(self.path, loc, &other)),
            };
            if let Err(e) = outcome {
                *self.failure = Some(e);
                return Err(A::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

/// JSON's name for the kind of `value` ("a string", "an array", ...), for error messages.
pub fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn not_an_object(path: &Path, loc: Loc, value: &Value) -> Error {
    let kind = kind_name(value);
    Error::data(
        path,
        loc.to_string(),
        format!("expected a JSON object {{...}}, got {kind}"),
    )
}

/// Read JSON Lines: one object per line, blank lines skipped.
pub fn read_json_lines(path: &Path, sink: &mut RowSink) -> Result<()> {
    let mut rows = 0;
    for_each_line(path, |number, text| {
        if text.trim().is_empty() {
            return Ok(());
        }
        let loc = Loc::Line(number);
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let message = e.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(m, _)| m);
            Error::data(
                path,
                format!("line {number} column {}", e.column()),
                format!("invalid JSON: {message}"),
            )
        })?;
        rows += 1;
        match value {
            Value::Object(row) => sink(path, loc, row),
            other => Err(not_an_object(path, loc, &other)),
        }
    })?;
    if rows == 0 {
        return Err(Error::data(
            path,
            "line 1",
            "the file is empty; expected JSON Lines (one object per line)",
        ));
    }
    Ok(())
}

/// Rows of a JSON value that is an array of objects (for tests and in-memory data).
pub fn rows_of(value: Value) -> Vec<Row> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::rows;
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, body: &[u8]) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn array_and_lines_give_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(&dir, "a.json", b"\xEF\xBB\xBF[{\"x\": 1}, {\"x\": 2}]");
        let b = file(&dir, "b.json", b"{\"x\": 1}\n\n{\"x\": 2}\n");
        let c = file(&dir, "c.jsonl", b"{\"x\": 1}\r\n{\"x\": 2}");
        let ra = rows(&a).unwrap();
        assert_eq!(ra.len(), 2);
        assert_eq!(ra[1].0, Loc::Record(2));
        let rb = rows(&b).unwrap();
        assert_eq!(rb[1].0, Loc::Line(3));
        for (x, y) in ra.iter().zip(rows(&c).unwrap()) {
            assert_eq!(x.1, y.1);
        }
    }

    #[test]
    fn broken_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(&dir, "b.jsonl", b"{\"x\": 1}\n{\"x\": 2,\n{\"x\": 3}\n");
        let e = rows(&p).unwrap_err().to_string();
        assert!(e.contains("b.jsonl: line 2 column"), "{e}");
        assert!(e.contains("invalid JSON"), "{e}");
    }

    #[test]
    fn array_syntax_error_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(&dir, "a.json", b"[\n {\"x\": 1},\n {\"x\" 2}\n]");
        let e = rows(&p).unwrap_err().to_string();
        assert!(e.contains("a.json: line 3 column"), "{e}");
        let p = file(&dir, "n.json", b"[{\"x\": 1}, 7]");
        let e = rows(&p).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: record 2: expected a JSON object {{...}}, got a number",
                p.display()
            )
        );
    }

    #[test]
    fn empty_and_non_utf8_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(&dir, "e.json", b"  \n");
        assert!(rows(&p)
            .unwrap_err()
            .to_string()
            .contains("the file is empty"));
        let p = file(&dir, "l.jsonl", b"{\"x\": \"ok\"}\n{\"x\": \"caf\xe9\"}\n");
        let e = rows(&p).unwrap_err().to_string();
        assert!(
            e.contains("line 2: not valid UTF-8 (at byte 10 of the line)"),
            "{e}"
        );
        let p = file(&dir, "l.json", b"[{\"x\": \"ok\"},\n{\"x\": \"caf\xe9\"}]");
        let e = rows(&p).unwrap_err().to_string();
        assert!(e.contains("line 2: not valid UTF-8"), "{e}");
    }
}
