//! Plain text: one record per line, in the column `text` (Hugging Face's text builder, which
//! LLaMA-Factory uses for `.txt`). Line endings are removed; empty lines are records too.

use std::path::Path;

use serde_json::Value;

use super::{for_each_line, Loc, Row, RowSink};
use crate::error::{Error, Result};

/// The column every line goes into.
pub const TEXT_COLUMN: &str = "text";

/// Read a `.txt` file.
pub fn read(path: &Path, sink: &mut RowSink) -> Result<()> {
    let lines = for_each_line(path, |number, text| {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        let mut row = Row::new();
        row.insert(TEXT_COLUMN.into(), Value::String(text.to_string()));
        sink(path, Loc::Line(number), row)
    })?;
    if lines == 0 {
        return Err(Error::data(path, "line 1", "the file is empty"));
    }
    Ok(())
}
