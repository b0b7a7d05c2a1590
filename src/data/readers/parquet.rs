//! Parquet reader: every row group, in order; list and struct columns become arrays and objects.

use std::io::Read;
use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{ChunkReader, Length};

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
        ParquetRecordBatchReaderBuilder::try_new(EndGuard(file))
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

/// How often a reader may be asked for bytes at the end of the file before it fails.
const MAX_READS_AT_END: usize = 64;

/// A `.parquet` file whose readers fail once asked for bytes at its end too often. The parquet
/// crate skips unknown Thrift fields with `io::copy`, which stops quietly at the end of the
/// file: a page header with a corrupt list of 2^31 skipped values read past the end 2^31 times
/// (a hang found by tests/mutation.rs). A sound file is never read at its end more than once.
struct EndGuard(std::fs::File);

impl Length for EndGuard {
    fn len(&self) -> u64 {
        self.0.len()
    }
}

impl ChunkReader for EndGuard {
    type T = AtEnd<<std::fs::File as ChunkReader>::T>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(AtEnd {
            inner: self.0.get_read(start)?,
            reads_at_end: 0,
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        self.0.get_bytes(start, length)
    }
}

/// A reader that counts the reads that found nothing left and fails after [`MAX_READS_AT_END`].
struct AtEnd<R> {
    inner: R,
    reads_at_end: usize,
}

impl<R: Read> Read for AtEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.reads_at_end += 1;
            if self.reads_at_end > MAX_READS_AT_END {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "a length in the file runs past its end",
                ));
            }
        }
        Ok(n)
    }
}
