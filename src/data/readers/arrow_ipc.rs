//! Arrow IPC: `.arrow` files and Hugging Face `save_to_disk` folders.
//!
//! `datasets.Dataset.save_to_disk(dir)` writes `data-00000-of-0000N.arrow` files in the Arrow IPC
//! *stream* format, plus `state.json` (which lists the data files in order under `_data_files`) and
//! `dataset_info.json` (features, not a LLaMA-Factory registry). A `.arrow` file is read as a stream,
//! or as an Arrow IPC file when it starts with the `ARROW1` magic.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;

use super::arrow_value::batch_rows;
use super::{decoder_call, Loc, RowSink};
use crate::error::{Error, Result};

/// Largest `state.json` we read (it lists file names only).
const MAX_STATE_JSON_BYTES: u64 = 16 << 20;

/// Read a Hugging Face `save_to_disk` folder.
pub fn read_saved_dataset(dir: &Path, sink: &mut RowSink) -> Result<()> {
    let files = saved_dataset_files(dir)?;
    let mut record = 0;
    for file in files {
        read_batches(&file, &mut |batch, path| {
            emit(batch, path, &mut record, sink)
        })?;
    }
    if record == 0 {
        return Err(Error::data(dir, "folder", "the saved dataset has no rows"));
    }
    Ok(())
}

/// The data files of a `save_to_disk` folder, in the order `state.json` lists them.
fn saved_dataset_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let state_path = dir.join("state.json");
    let size = std::fs::metadata(&state_path)
        .map_err(|e| Error::io(&state_path, e))?
        .len();
    if size > MAX_STATE_JSON_BYTES {
        return Err(Error::data(
            &state_path,
            "file size",
            "too large for a state.json",
        ));
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::data(
            &state_path,
            format!("line {}", e.line()),
            format!("invalid JSON: {e}"),
        )
    })?;
    let listed = state["_data_files"].as_array().ok_or_else(|| {
        Error::data(
            &state_path,
            "key \"_data_files\"",
            "missing; is this a folder written by datasets' save_to_disk?",
        )
    })?;
    let mut files = Vec::new();
    for (i, entry) in listed.iter().enumerate() {
        let name = entry["filename"].as_str().ok_or_else(|| {
            Error::data(
                &state_path,
                format!("_data_files[{i}]"),
                "expected {\"filename\": \"...\"}",
            )
        })?;
        if name.contains("..") || Path::new(name).is_absolute() {
            return Err(Error::data(
                &state_path,
                format!("_data_files[{i}]"),
                "file name must stay inside the folder",
            ));
        }
        files.push(dir.join(name));
    }
    Ok(files)
}

/// Read a single `.arrow` file.
pub fn read_arrow_file(path: &Path, sink: &mut RowSink) -> Result<()> {
    let mut record = 0;
    read_batches(path, &mut |batch, p| emit(batch, p, &mut record, sink))?;
    if record == 0 {
        return Err(Error::data(path, "file", "the Arrow file has no rows"));
    }
    Ok(())
}

fn emit(batch: RecordBatch, path: &Path, record: &mut usize, sink: &mut RowSink) -> Result<()> {
    let rows = batch_rows(&batch).map_err(|(column, kind)| {
        Error::data(
            path,
            format!("column \"{column}\""),
            format!("unsupported Arrow type {kind}"),
        )
    })?;
    for row in rows {
        *record += 1;
        sink(path, Loc::Record(*record), row)?;
    }
    Ok(())
}

/// Call `each` for every record batch of an Arrow IPC stream or file.
fn read_batches(path: &Path, each: &mut dyn FnMut(RecordBatch, &Path) -> Result<()>) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 6];
    let is_file_format = file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
    file.rewind().map_err(|e| Error::io(path, e))?;
    if is_file_format {
        check_blocks(path, &mut file)?;
        let mut reader = decoding(path, || arrow_ipc::reader::FileReader::try_new(file, None))?;
        while let Some(batch) = decoding(path, || reader.next().transpose())? {
            each(batch, path)?;
        }
    } else {
        let mut reader = decoding(path, || {
            arrow_ipc::reader::StreamReader::try_new(BufReader::new(file), None)
        })?;
        while let Some(batch) = decoding(path, || reader.next().transpose())? {
            each(batch, path)?;
        }
    }
    Ok(())
}

/// Largest Arrow file footer read (it lists the schema and the blocks, not data).
const MAX_FOOTER_BYTES: u64 = 64 << 20;

/// Check that every block the footer of an Arrow IPC file lists lies inside the file: arrow-ipc
/// allocates each block's declared size before reading it (a one-byte change asked for 270 GB).
fn check_blocks(path: &Path, file: &mut std::fs::File) -> Result<()> {
    let corrupt = |what: String| {
        Error::data(
            path,
            "file footer",
            format!("{what}: the Arrow file is truncated or corrupt"),
        )
    };
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut trailer = [0u8; 10];
    if len < 16 {
        return Err(corrupt(format!("{len} bytes is too short")));
    }
    file.seek(SeekFrom::Start(len - 10))
        .and_then(|_| file.read_exact(&mut trailer))
        .map_err(|e| Error::io(path, e))?;
    let footer_len =
        arrow_ipc::reader::read_footer_length(trailer).map_err(|e| corrupt(e.to_string()))? as u64;
    if footer_len > MAX_FOOTER_BYTES || footer_len > len - 10 {
        return Err(corrupt(format!("a footer of {footer_len} bytes")));
    }
    let mut footer = vec![0u8; footer_len as usize];
    file.seek(SeekFrom::Start(len - 10 - footer_len))
        .and_then(|_| file.read_exact(&mut footer))
        .map_err(|e| Error::io(path, e))?;
    // The flatbuffers error lists the path to the bad field on further lines: the first says it.
    let footer = arrow_ipc::root_as_footer(&footer)
        .map_err(|e| corrupt(e.to_string().lines().next().unwrap_or_default().to_string()))?;
    let blocks = footer.dictionaries().into_iter().flatten();
    for (i, block) in blocks
        .chain(footer.recordBatches().into_iter().flatten())
        .enumerate()
    {
        let end = [
            block.offset(),
            block.metaDataLength() as i64,
            block.bodyLength(),
        ]
        .into_iter()
        .try_fold(0u64, |end, n| end.checked_add(u64::try_from(n).ok()?));
        if end.is_none_or(|end| end > len) {
            return Err(corrupt(format!(
                "block {i} does not lie inside the file's {len} bytes"
            )));
        }
    }
    file.rewind().map_err(|e| Error::io(path, e))
}

/// One call into the Arrow IPC decoder, its errors and its panics as one error naming the file
/// (arrow-ipc slices buffers at offsets from the file without checking them against the message
/// body: `Buffer::slice_with_length` panics on a `.arrow` with one byte changed).
fn decoding<T>(
    path: &Path,
    call: impl FnOnce() -> std::result::Result<T, arrow_schema::ArrowError>,
) -> Result<T> {
    decoder_call(call)
        .and_then(|result| result.map_err(|e| e.to_string()))
        .map_err(|why| {
            Error::data(
                path,
                "file",
                format!("not a readable Arrow IPC file: {why}"),
            )
        })
}
