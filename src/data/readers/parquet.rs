//! Parquet reader: every row group, in order; list and struct columns become arrays and objects.

use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::arrow_value::batch_rows;
use super::{decoder_call, Loc, RowSink};
use crate::error::{Error, Result};

/// Read a `.parquet` file.
pub fn read(path: &Path, sink: &mut RowSink) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let not_parquet =
        |why: String| Error::data(path, "file", format!("not a readable Parquet file: {why}"));
    // The parquet crate panics on some corrupt files (negative column offsets, bit-packed runs
    // past the buffer), so its calls run under `decoder_call`.
    let mut reader = decoder_call(|| {
        ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(4096).build())
            .map_err(|e| e.to_string())
    })
    .and_then(|r| r)
    .map_err(not_parquet)?;
    let mut record = 0;
    loop {
        let next =
            decoder_call(|| reader.next().transpose().map_err(|e| e.to_string())).and_then(|r| r);
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(why) => {
                return Err(Error::data(
                    path,
                    format!("after record {record}"),
                    format!("corrupt Parquet data: {why}"),
                ))
            }
        };
        let rows = batch_rows(&batch).map_err(|(column, kind)| {
            Error::data(path, format!("column \"{column}\""), format!("unsupported Parquet type {kind}; use strings, numbers, booleans, lists or structs"))
        })?;
        for row in rows {
            record += 1;
            sink(path, Loc::Record(record), row)?;
        }
    }
    if record == 0 {
        return Err(Error::data(path, "file", "the Parquet file has no rows"));
    }
    Ok(())
}
