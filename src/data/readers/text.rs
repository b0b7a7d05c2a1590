//! Plain text: one record per line, in the column `text` (Hugging Face's text builder, which
//! LLaMA-Factory uses for `.txt`). Line endings are removed; empty lines are records too.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;

use super::{strip_bom, utf8, Loc, Row, RowSink, MAX_LINE_BYTES};
use crate::error::{Error, Result};

/// The column every line goes into.
pub const TEXT_COLUMN: &str = "text";

/// Read a `.txt` file.
pub fn read(path: &Path, sink: &mut RowSink) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(path, e))?;
        if read == 0 {
            break;
        }
        number += 1;
        let loc = Loc::Line(number);
        if line.len() > MAX_LINE_BYTES {
            return Err(Error::data(
                path,
                loc.to_string(),
                format!("line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        let bytes = if number == 1 {
            strip_bom(&line)
        } else {
            &line[..]
        };
        let text = utf8(bytes, path, loc)?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        let mut row = Row::new();
        row.insert(TEXT_COLUMN.into(), Value::String(text.to_string()));
        sink(path, loc, row)?;
    }
    if number == 0 {
        return Err(Error::data(path, "line 1", "the file is empty"));
    }
    Ok(())
}
