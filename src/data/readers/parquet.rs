//! Parquet reader: every row group, in order; list and struct columns become arrays and objects.

use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::arrow_value::batch_rows;
use super::{Loc, RowSink};
use crate::error::{Error, Result};

/// Read a `.parquet` file.
pub fn read(path: &Path, sink: &mut RowSink) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let not_parquet = |e: parquet::errors::ParquetError| {
        Error::data(path, "file", format!("not a readable Parquet file: {e}"))
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(not_parquet)?
        .with_batch_size(4096)
        .build()
        .map_err(not_parquet)?;
    let mut record = 0;
    for batch in reader {
        let batch = batch.map_err(|e| {
            Error::data(
                path,
                format!("after record {record}"),
                format!("corrupt Parquet data: {e}"),
            )
        })?;
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
