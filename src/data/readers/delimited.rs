//! CSV (RFC 4180) and TSV readers: a header row, then one record per row.
//!
//! Quoted fields may hold the delimiter, doubled quotes and newlines, so a spreadsheet's export of
//! multi-line answers loads as written; a UTF-8 byte-order mark is ignored. Every value is a string
//! (Hugging Face's csv builder would guess numbers, which then breaks text columns); an empty cell
//! is the empty string. A record is located by the line it starts on.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use serde_json::Value;

use super::{utf8, Loc, Row, RowSink, MAX_LINE_BYTES};
use crate::error::{Error, Result};

/// Read a delimited file (`b','` for CSV, `b'\t'` for TSV).
pub fn read(path: &Path, delimiter: u8, sink: &mut RowSink) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let newlines = Rc::new(RefCell::new(NewlineIndex::default()));
    let counted = LineCounter {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        offset: 0,
        index: newlines.clone(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(false)
        .from_reader(counted);
    let headers = reader
        .byte_headers()
        .map_err(|e| csv_error(path, e))?
        .clone();
    if headers.is_empty() || (headers.len() == 1 && headers[0].is_empty()) {
        return Err(Error::data(
            path,
            "line 1",
            "the file is empty; expected a header row naming the columns",
        ));
    }
    let mut names = Vec::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        let name = utf8(h, path, Loc::Line(1))?.trim().to_string();
        if names.contains(&name) {
            return Err(Error::data(
                path,
                "line 1",
                format!(
                    "column {} repeats the header \"{name}\"; column names must be unique",
                    i + 1
                ),
            ));
        }
        names.push(name);
    }
    let mut record = csv::ByteRecord::new();
    let mut rows = 0;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(path, e)),
        }
        let start = record.position().map_or(0, |p| p.byte());
        let loc = Loc::Line(newlines.borrow_mut().line_at(start));
        if record.as_slice().len() > MAX_LINE_BYTES {
            return Err(Error::data(
                path,
                loc.to_string(),
                format!("record longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        let mut row = Row::new();
        for (name, field) in names.iter().zip(record.iter()) {
            row.insert(
                name.clone(),
                Value::String(utf8(field, path, loc)?.to_string()),
            );
        }
        sink(path, loc, row)?;
        rows += 1;
    }
    if rows == 0 {
        return Err(Error::data(
            path,
            "line 2",
            "no records after the header row",
        ));
    }
    Ok(())
}

/// Newline offsets seen so far but not yet passed, to turn a record's byte offset into its line
/// (the csv crate's own line count skips newlines inside quoted fields).
#[derive(Default)]
struct NewlineIndex {
    pending: VecDeque<u64>,
    passed: usize,
}

impl NewlineIndex {
    /// The 1-based line of byte `offset` (offsets must not decrease between calls).
    fn line_at(&mut self, offset: u64) -> usize {
        // `<=`: after a CRLF, csv reports the record as starting at the `\n` it has yet to skip.
        while self.pending.front().is_some_and(|&n| n <= offset) {
            self.pending.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

/// A reader that records where every newline is, for [`NewlineIndex`].
struct LineCounter<R> {
    inner: R,
    offset: u64,
    index: Rc<RefCell<NewlineIndex>>,
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut index = self.index.borrow_mut();
        for (i, _) in buf[..n].iter().enumerate().filter(|(_, &b)| b == b'\n') {
            index.pending.push_back(self.offset + i as u64);
        }
        self.offset += n as u64;
        Ok(n)
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => Error::data(
            path,
            format!("line {}", pos.as_ref().map_or(0, |p| p.line())),
            format!("expected {expected_len} fields (as in the header), got {len}; quote fields that contain the delimiter"),
        ),
        csv::ErrorKind::Io(io) => Error::io(path, std::io::Error::new(io.kind(), io.to_string())),
        _ => Error::data(path, "parse", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::rows;

    #[test]
    fn quoted_commas_quotes_and_newlines_survive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sheet.csv");
        let body =
            "\u{FEFF}question,answer\r\n\"Hi, there\",\"Line one\nline \"\"two\"\"\"\r\nplain,\r\n";
        std::fs::write(&p, body).unwrap();
        let r = rows(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1["question"], "Hi, there");
        assert_eq!(r[0].1["answer"], "Line one\nline \"two\"");
        assert_eq!(r[1].1["answer"], "");
        assert_eq!(r[1].0.to_string(), "line 4");
    }

    #[test]
    fn wrong_field_count_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tsv");
        std::fs::write(&p, "a\tb\n1\t2\n3\t4\t5\n").unwrap();
        let e = rows(&p).unwrap_err().to_string();
        assert!(e.ends_with("t.tsv: line 3: expected 2 fields (as in the header), got 3; quote fields that contain the delimiter"), "{e}");
    }
}
