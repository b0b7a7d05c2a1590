//! The legacy `.dat` importance-matrix format (llama-imatrix's `--output-format dat`, the only one
//! before GGUF), little endian: `i32 n_entries`, then per entry `i32 len, name bytes, i32 ncall,
//! i32 nval, f32 values[nval]` with `values = sum / count × ncall`; then, optionally,
//! `i32 chunk_count, i32 len, dataset name`. Reading checks every length against the bytes left.

use std::collections::BTreeMap;
use std::path::Path;

use super::{
    check_shape, f32_bytes, f32_values, rounded_count, ImatrixData, ImatrixEntry, ImatrixFormat,
    MAX_LEGACY_NAME,
};
use crate::error::{Error, Result};

/// The bytes of `data` in the legacy format (see [`ImatrixData::to_legacy_bytes`]).
pub(super) fn to_bytes(data: &ImatrixData) -> std::result::Result<Vec<u8>, String> {
    let mut stored: Vec<(&str, i32, Vec<f32>)> = Vec::new();
    for (name, e) in &data.entries {
        check_shape(name, e)?;
        let values = match data.format {
            ImatrixFormat::Legacy => {
                let ncall = e.counts.first().map_or(0, |&c| rounded_count(c));
                (ncall as i32, e.in_sum2.clone())
            }
            ImatrixFormat::Gguf => {
                let counts: Vec<i64> = e.counts.iter().map(|&c| rounded_count(c)).collect();
                if counts.iter().all(|&c| c == 0) {
                    continue; // llama-imatrix: "has no data - skipping"
                }
                if data.chunk_size == 0 {
                    return Err(
                            "the chunk size is unknown (0), which the legacy format needs to count calls"
                                .into(),
                        );
                }
                let cs = data.chunk_size as i64;
                let max = counts.iter().copied().max().unwrap_or(0);
                let ncall = max.saturating_add(cs - 1) / cs; // ceiling: no accidental zeros
                let ne0 = e.n_per_row();
                let values = e
                    .in_sum2
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let (mut value, mut count) = (v, counts[i / ne0] as f32);
                        if count == 0.0 {
                            (value, count) = (1.0, 1.0); // partial data (an idle expert)
                        }
                        (value / count) * ncall as f32
                    })
                    .collect();
                (ncall as i32, values)
            }
        };
        stored.push((name, values.0, values.1));
    }
    let mut out = Vec::new();
    let i32le = |out: &mut Vec<u8>, v: i32| out.extend_from_slice(&v.to_le_bytes());
    i32le(&mut out, stored.len() as i32);
    for (name, ncall, values) in &stored {
        i32le(&mut out, name.len() as i32);
        out.extend_from_slice(name.as_bytes());
        i32le(&mut out, *ncall);
        i32le(&mut out, values.len() as i32);
        out.extend_from_slice(&f32_bytes(values));
    }
    i32le(&mut out, data.chunk_count as i32);
    // llama-imatrix writes the text file it read, else the last dataset it loaded.
    let dataset = data.datasets.last().map_or("", String::as_str);
    i32le(&mut out, dataset.len() as i32);
    out.extend_from_slice(dataset.as_bytes());
    Ok(out)
}

/// A cursor over a legacy file's bytes; every read is checked against what is left.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Bytes<'_> {
    fn left(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize, at: &str) -> Result<&[u8]> {
        if n > self.left() {
            return Err(Error::data(
                self.path,
                at,
                format!(
                    "needs {n} bytes at offset {} but the file ends at {}: the file is truncated or not an importance matrix",
                    self.pos,
                    self.data.len()
                ),
            ));
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn i32(&mut self, at: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(
            self.take(4, at)?.try_into().expect("4 bytes"),
        ))
    }

    /// A length field: not negative, at most `max`, and no more than `unit`-sized items than
    /// the bytes left.
    fn len(&mut self, at: &str, what: &str, unit: usize, max: usize) -> Result<usize> {
        let n = self.i32(at)?;
        if n < 0 || n as usize > max || (n as usize).saturating_mul(unit) > self.left() {
            return Err(Error::data(
                self.path,
                at,
                format!(
                    "{what} {n} is impossible with {} bytes left: the file is truncated or not an importance matrix",
                    self.left()
                ),
            ));
        }
        Ok(n as usize)
    }
}

/// The legacy format (see the module docs).
pub(super) fn load(path: &Path, data: &[u8]) -> Result<ImatrixData> {
    let mut b = Bytes { data, pos: 0, path };
    // An entry takes at least 16 bytes: name length, ncall, nval and one value.
    let n_entries = b.len("header", "entry count", 16, usize::MAX)?;
    if n_entries == 0 {
        return Err(Error::data(
            path,
            "header",
            "no data (0 entries): not an importance matrix; give a .gguf or .dat written by `tunelab imatrix` or llama-imatrix",
        ));
    }
    let mut entries = BTreeMap::new();
    for i in 0..n_entries {
        let at = format!("entry {}", i + 1);
        let len = b.len(&at, "name length", 1, MAX_LEGACY_NAME)?;
        let name = String::from_utf8(b.take(len, &at)?.to_vec())
            .map_err(|_| Error::data(path, &at, "the tensor name is not UTF-8"))?;
        let at = format!("entry {} \"{name}\"", i + 1);
        let ncall = b.i32(&at)?;
        let nval = b.len(&at, "value count", 4, usize::MAX)?;
        if nval == 0 {
            return Err(Error::data(path, &at, "no values"));
        }
        let values = f32_values(b.take(nval * 4, &at)?);
        let entry = ImatrixEntry {
            in_sum2: values,
            counts: vec![ncall as f32],
        };
        if entries.insert(name, entry).is_some() {
            return Err(Error::data(path, &at, "appears twice"));
        }
    }
    // The trailer (chunk count, then the dataset name) is optional, but not half there.
    let (mut chunk_count, mut datasets) = (0u32, Vec::new());
    if b.left() > 0 {
        let n = b.i32("trailer (chunk count)")?;
        chunk_count = u32::try_from(n).map_err(|_| {
            Error::data(
                path,
                "trailer",
                format!("chunk count {n} is negative: the file is corrupt"),
            )
        })?;
        if b.left() > 0 {
            let len = b.len("trailer (dataset)", "dataset name length", 1, usize::MAX)?;
            let name = b.take(len, "trailer (dataset)")?;
            if len > 0 {
                datasets.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        if b.left() > 0 {
            return Err(Error::data(
                path,
                "trailer",
                format!(
                    "{} bytes after the dataset name: not a legacy importance matrix",
                    b.left()
                ),
            ));
        }
    }
    Ok(ImatrixData {
        entries,
        chunk_count,
        chunk_size: 0,
        datasets,
        format: ImatrixFormat::Legacy,
        has_metadata: false,
    })
}
