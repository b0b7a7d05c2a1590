//! Arrow IPC: `.arrow` files and Hugging Face `save_to_disk` folders.
//!
//! `datasets.Dataset.save_to_disk(dir)` writes `data-00000-of-0000N.arrow` files in the Arrow IPC
//! *stream* format, plus `state.json` (which lists the data files in order under `_data_files`) and
//! `dataset_info.json` (features, not a LLaMA-Factory registry). A `.arrow` file is read as a stream,
//! or as an Arrow IPC file when it starts with the `ARROW1` magic.

use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;

use super::arrow_value::batch_rows;
use super::{Loc, RowSink};
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
    let corrupt = |e: arrow_schema::ArrowError| {
        Error::data(path, "file", format!("not a readable Arrow IPC file: {e}"))
    };
    if is_file_format {
        let reader = arrow_ipc::reader::FileReader::try_new(file, None).map_err(corrupt)?;
        for batch in reader {
            each(batch.map_err(corrupt)?, path)?;
        }
    } else {
        let reader = arrow_ipc::reader::StreamReader::try_new(BufReader::new(file), None)
            .map_err(corrupt)?;
        for batch in reader {
            each(batch.map_err(corrupt)?, path)?;
        }
    }
    Ok(())
}
