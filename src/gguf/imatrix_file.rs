//! Importance-matrix files as llama.cpp writes and reads them (`tools/imatrix/imatrix.cpp`,
//! `common/imatrix-loader.cpp`, `tools/quantize/quantize.cpp`), and the per-column values
//! llama-quantize hands its quantizers.
//!
//! An importance matrix holds, for every weight matrix a model multiplies its activations by, the
//! sum over tokens of each input column's squared activation, and how many tokens went in. Two
//! file formats carry it:
//!
//! - **GGUF** (today's, `general.type = "imatrix"`): per tensor `<name>.in_sum2`, f32
//!   `[n_per_row, n_mat]` (the raw sums; `n_mat` is 1 for a dense matrix, the expert count for a
//!   stacked MoE one) and `<name>.counts`, f32 `[1, n_mat]` (tokens per matrix); keys
//!   `imatrix.datasets` (array of strings), `imatrix.chunk_count` and `imatrix.chunk_size` (u32).
//!   Trailing dimensions of 1 are not written, so a dense matrix's tensors are `[n_per_row]` and
//!   `[1]`.
//! - **Legacy `.dat`** (little endian): `i32 n_entries`, then per entry `i32 len, name bytes,
//!   i32 ncall, i32 nval, f32 values[nval]` where `values = sum / count × ncall` and
//!   `ncall = ⌈max count / chunk_size⌉`; then, optionally, `i32 chunk_count, i32 len, dataset`.
//!
//! [`ImatrixData`] keeps what a file holds as it holds it (its [`ImatrixFormat`] says how to read
//! `in_sum2` and `counts`); [`ImatrixData::importance`] turns an entry into the values
//! llama-quantize passes to `ggml_quantize_chunk`. Loading sniffs the content (a GGUF starts with
//! `GGUF`; anything else is read as legacy, as llama.cpp falls back to it), checks every length
//! against the file before allocating, and reports a bad file in one line naming it.

use std::collections::BTreeMap;
use std::path::Path;

use super::types::{type_id, GgmlType, Value};
use super::{GgufReader, GgufWriter, MAGIC};
use crate::error::{Error, Result};

mod legacy;

/// Suffix of the tensor holding an entry's sums of squared activations.
pub const IN_SUM2_SUFFIX: &str = ".in_sum2";
/// Suffix of the tensor holding an entry's token counts.
pub const COUNTS_SUFFIX: &str = ".counts";
/// `general.type` of an imatrix GGUF.
pub const GENERAL_TYPE: &str = "imatrix";
pub const KEY_DATASETS: &str = "imatrix.datasets";
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
/// The chunk size llama-imatrix assumes for a legacy file it reads (its default `-c 512`): the
/// legacy format does not store one.
pub const LEGACY_CHUNK_SIZE: u32 = 512;
/// Longest tensor name read from a legacy file (ggml names are under 64 bytes).
const MAX_LEGACY_NAME: usize = 4096;
/// llama-quantize copies the file and dataset names into 128-byte buffers (127 bytes and a NUL).
const MAX_QUANTIZE_STRING: usize = 127;

/// Which file format an [`ImatrixData`] came from, i.e. how its numbers are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImatrixFormat {
    /// `in_sum2` holds raw sums of squares and `counts` the tokens per matrix (GGUF; collection).
    #[default]
    Gguf,
    /// `in_sum2` holds `sum / count × ncall` and `counts` is `[ncall]` (legacy `.dat`).
    Legacy,
}

/// One weight matrix's statistics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImatrixEntry {
    /// `n_per_row × n_mat` values, matrix by matrix.
    pub in_sum2: Vec<f32>,
    /// `n_mat` values (legacy: one, `ncall`).
    pub counts: Vec<f32>,
}

impl ImatrixEntry {
    /// Matrices in this entry (1 for a dense tensor).
    pub fn n_mat(&self) -> usize {
        self.counts.len().max(1)
    }

    /// Input columns per matrix (the weight's row length).
    pub fn n_per_row(&self) -> usize {
        self.in_sum2.len() / self.n_mat()
    }
}

/// An importance matrix: entries by llama.cpp tensor name (`blk.0.attn_q.weight`, ...).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImatrixData {
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// Chunks of text the statistics were collected over.
    pub chunk_count: u32,
    /// Tokens per chunk (0 when unknown: a legacy file).
    pub chunk_size: u32,
    /// The calibration texts, as named when collected.
    pub datasets: Vec<String>,
    pub format: ImatrixFormat,
    /// GGUF: all three `imatrix.*` keys were present (llama-quantize refuses a GGUF imatrix
    /// without them). Collected data has them.
    pub has_metadata: bool,
}

/// What llama-quantize writes into a model quantized with `--imatrix FILE`
/// (`quantize.imatrix.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeImatrixKeys {
    /// `quantize.imatrix.file`: the path as given on the command line.
    pub file: String,
    /// `quantize.imatrix.dataset`: the first dataset, when the file names one.
    pub dataset: Option<String>,
    /// `quantize.imatrix.entries_count`.
    pub entries_count: u32,
    /// `quantize.imatrix.chunks_count`: written only when positive.
    pub chunks_count: Option<u32>,
}

impl QuantizeImatrixKeys {
    /// The key/values in llama-quantize's order; integers are u32, as it writes them.
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let mut out = vec![(
            "quantize.imatrix.file".to_string(),
            Value::String(self.file.clone()),
        )];
        if let Some(d) = &self.dataset {
            out.push(("quantize.imatrix.dataset".into(), Value::String(d.clone())));
        }
        out.push((
            "quantize.imatrix.entries_count".into(),
            Value::U32(self.entries_count),
        ));
        if let Some(n) = self.chunks_count {
            out.push(("quantize.imatrix.chunks_count".into(), Value::U32(n)));
        }
        out
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// llama.cpp reads counts back with `lround`.
fn rounded_count(c: f32) -> i64 {
    c.round() as i64
}

impl ImatrixData {
    /// The per-column importance llama-quantize passes to `ggml_quantize_chunk` for `tensor`
    /// (`n_per_row × n_mat` values), or None when the file has no entry for it.
    ///
    /// GGUF: `in_sum2 / count` per matrix, the count rounded to an integer first; a matrix
    /// that saw no tokens gets 1 for every column (no preference). Legacy: `values / ncall`, or
    /// the values unchanged when `ncall` is not positive.
    pub fn importance(&self, tensor: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(tensor)?;
        Some(match self.format {
            ImatrixFormat::Gguf => {
                let ne0 = e.n_per_row();
                let mut out = vec![0f32; e.in_sum2.len()];
                for (j, &c) in e.counts.iter().enumerate() {
                    let count = rounded_count(c) as f32;
                    let (sums, dst) = (
                        &e.in_sum2[j * ne0..(j + 1) * ne0],
                        &mut out[j * ne0..(j + 1) * ne0],
                    );
                    for (d, &s) in dst.iter_mut().zip(sums) {
                        *d = if count > 0.0 { s / count } else { 1.0 };
                    }
                }
                out
            }
            ImatrixFormat::Legacy => {
                let ncall = e.counts.first().map_or(0, |&c| rounded_count(c));
                if ncall > 0 {
                    e.in_sum2.iter().map(|&s| s / ncall as f32).collect()
                } else {
                    e.in_sum2.clone()
                }
            }
        })
    }

    /// The `quantize.imatrix.*` values llama-quantize writes for this matrix loaded from
    /// `imatrix_file` (the path as the user gave it). Fails, as llama-quantize does, for a GGUF
    /// imatrix without its `imatrix.*` keys.
    pub fn quantize_keys(&self, imatrix_file: &str) -> Result<QuantizeImatrixKeys> {
        if self.format == ImatrixFormat::Gguf && !self.has_metadata {
            return Err(Error::msg(format!(
                "{imatrix_file}: the imatrix GGUF lacks {KEY_DATASETS}, {KEY_CHUNK_COUNT} or {KEY_CHUNK_SIZE} (llama-quantize refuses it); collect it again with `tunelab imatrix` or llama-imatrix"
            )));
        }
        Ok(QuantizeImatrixKeys {
            file: truncated(imatrix_file, MAX_QUANTIZE_STRING),
            dataset: self
                .datasets
                .first()
                .map(|d| truncated(d, MAX_QUANTIZE_STRING)),
            entries_count: self.entries.len() as u32,
            chunks_count: Some(self.chunk_count).filter(|&n| n > 0),
        })
    }

    /// The same statistics as raw sums and token counts (llama-imatrix's reading of a legacy
    /// file: values and `ncall` times [`LEGACY_CHUNK_SIZE`]).
    pub fn to_raw(&self) -> ImatrixData {
        if self.format == ImatrixFormat::Gguf {
            return self.clone();
        }
        let cs = LEGACY_CHUNK_SIZE as f32;
        let entries = self
            .entries
            .iter()
            .map(|(name, e)| {
                let ncall = e.counts.first().map_or(0, |&c| rounded_count(c));
                let entry = ImatrixEntry {
                    in_sum2: e.in_sum2.iter().map(|&v| v * cs).collect(),
                    counts: vec![(ncall * LEGACY_CHUNK_SIZE as i64) as f32],
                };
                (name.clone(), entry)
            })
            .collect();
        ImatrixData {
            entries,
            chunk_count: self.chunk_count,
            chunk_size: LEGACY_CHUNK_SIZE,
            datasets: self.datasets.clone(),
            format: ImatrixFormat::Gguf,
            has_metadata: true,
        }
    }

    /// Save to `path`: legacy format for a `.dat` name, GGUF otherwise (llama-imatrix's default
    /// whatever the suffix); written under a temporary name and renamed.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if is_dat(path) {
            let bytes = self
                .to_legacy_bytes()
                .map_err(|m| Error::msg(format!("{}: {m}", path.display())))?;
            crate::fsutil::write_atomic(path, &bytes)
        } else {
            self.to_gguf_writer()
                .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?
                .write(path)
        }
    }

    /// The GGUF file llama-imatrix would write: keys, then `in_sum2` and `counts` per entry in
    /// name order.
    pub fn to_gguf_writer(&self) -> Result<GgufWriter> {
        let raw = self.to_raw();
        let f32_type = GgmlType::from_id(0).expect("F32 is ggml type 0");
        let mut w = GgufWriter::new();
        w.set("general.type", Value::String(GENERAL_TYPE.into()));
        w.set(KEY_DATASETS, Value::strings(raw.datasets.iter().cloned()));
        w.set(KEY_CHUNK_COUNT, Value::U32(raw.chunk_count));
        w.set(KEY_CHUNK_SIZE, Value::U32(raw.chunk_size));
        for (name, e) in &raw.entries {
            check_shape(name, e).map_err(Error::msg)?;
            let (n_mat, n_per_row) = (e.n_mat() as u64, e.n_per_row() as u64);
            w.add_tensor(
                format!("{name}{IN_SUM2_SUFFIX}"),
                &trimmed(&[n_per_row, n_mat]),
                f32_type,
                f32_bytes(&e.in_sum2),
            )?;
            w.add_tensor(
                format!("{name}{COUNTS_SUFFIX}"),
                &trimmed(&[1, n_mat]),
                f32_type,
                f32_bytes(&e.counts),
            )?;
        }
        Ok(w)
    }

    /// The legacy `.dat` bytes llama-imatrix's `--output-format dat` would write. Raw entries
    /// become `sum / count × ncall` with `ncall = ⌈max count / chunk_size⌉`; a matrix that saw no
    /// tokens stores 1 × ncall; an entry with no tokens at all is left out.
    pub fn to_legacy_bytes(&self) -> std::result::Result<Vec<u8>, String> {
        legacy::to_bytes(self)
    }

    /// Load a GGUF or legacy importance matrix (told apart by the first four bytes).
    pub fn load(path: impl AsRef<Path>) -> Result<ImatrixData> {
        let path = path.as_ref();
        let mut head = [0u8; 4];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let mut n = 0;
            while n < 4 {
                match f.read(&mut head[n..]).map_err(|e| Error::io(path, e))? {
                    0 => break,
                    k => n += k,
                }
            }
            n
        };
        if n == 4 && head == MAGIC {
            load_gguf(path)
        } else {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            legacy::load(path, &bytes)
        }
    }
}

/// Whether `path` names a legacy file.
fn is_dat(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("dat"))
}

/// An entry's counts must divide its values into whole matrices.
fn check_shape(name: &str, e: &ImatrixEntry) -> std::result::Result<(), String> {
    if e.counts.is_empty()
        || e.in_sum2.is_empty()
        || !e.in_sum2.len().is_multiple_of(e.counts.len())
    {
        return Err(format!(
            "imatrix entry \"{name}\": {} values do not split into {} matrices",
            e.in_sum2.len(),
            e.counts.len()
        ));
    }
    Ok(())
}

/// ggml writes a tensor's dimensions without the trailing ones (at least one).
fn trimmed(ne: &[u64]) -> Vec<u64> {
    let mut v = ne.to_vec();
    while v.len() > 1 && v.last() == Some(&1) {
        v.pop();
    }
    v
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// The GGUF format, through the checked reader.
fn load_gguf(path: &Path) -> Result<ImatrixData> {
    let r = GgufReader::open(path)?;
    let fail = |at: &str, m: String| Error::data(path, at, m);
    if r.tensors.is_empty() {
        return Err(fail("tensors", "no data: the file holds no tensors".into()));
    }
    let u32_key = |key: &str| -> Result<Option<u32>> {
        match r.get(key) {
            None => Ok(None),
            Some(Value::U32(v)) => Ok(Some(*v)),
            Some(other) => Err(fail(
                &format!("key \"{key}\""),
                format!("must be a u32, not {other:?}"),
            )),
        }
    };
    let chunk_count = u32_key(KEY_CHUNK_COUNT)?;
    let chunk_size = u32_key(KEY_CHUNK_SIZE)?;
    // Like llama.cpp, a datasets key of another type is ignored.
    let datasets_key = r.get(KEY_DATASETS);
    let datasets = match datasets_key {
        Some(Value::Array(type_id::STRING, items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    // Pair `<name>.in_sum2` with `<name>.counts`; other tensors are ignored, as llama.cpp does.
    let mut pairs: BTreeMap<String, (Option<usize>, Option<usize>)> = BTreeMap::new();
    for (i, t) in r.tensors.iter().enumerate() {
        if let Some(name) = t.name.strip_suffix(IN_SUM2_SUFFIX) {
            pairs.entry(name.to_string()).or_default().0 = Some(i);
        } else if let Some(name) = t.name.strip_suffix(COUNTS_SUFFIX) {
            pairs.entry(name.to_string()).or_default().1 = Some(i);
        }
    }
    if pairs.is_empty() {
        let kind = match (r.get("general.type"), r.get("general.architecture")) {
            (Some(Value::String(s)), _) => format!(" (general.type is \"{s}\")"),
            (_, Some(Value::String(a))) => format!(" but a {a} model"),
            _ => String::new(),
        };
        return Err(fail(
            "tensors",
            format!("no {IN_SUM2_SUFFIX}/{COUNTS_SUFFIX} tensors: not an importance matrix{kind}; make one with `tunelab imatrix` or llama-imatrix"),
        ));
    }
    let mut entries = BTreeMap::new();
    for (name, (sums, counts)) in pairs {
        let at = format!("imatrix entry \"{name}\"");
        let (Some(sums), Some(counts)) = (sums, counts) else {
            return Err(fail(
                &at,
                format!("mismatched sums and counts: it has only one of {name}{IN_SUM2_SUFFIX} and {name}{COUNTS_SUFFIX}"),
            ));
        };
        let (sums, counts) = (&r.tensors[sums], &r.tensors[counts]);
        for t in [sums, counts] {
            if t.ggml_type.name != "F32" {
                return Err(fail(
                    &at,
                    format!(
                        "tensor {} is {}; sums and counts must be F32",
                        t.name, t.ggml_type.name
                    ),
                ));
            }
        }
        let entry = ImatrixEntry {
            in_sum2: f32_values(&r.tensor_bytes(sums)?),
            counts: f32_values(&r.tensor_bytes(counts)?),
        };
        check_shape(&name, &entry).map_err(|m| Error::msg(format!("{}: {m}", path.display())))?;
        entries.insert(name, entry);
    }
    Ok(ImatrixData {
        entries,
        chunk_count: chunk_count.unwrap_or(0),
        chunk_size: chunk_size.unwrap_or(0),
        datasets,
        format: ImatrixFormat::Gguf,
        has_metadata: datasets_key.is_some() && chunk_count.is_some() && chunk_size.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImatrixData {
        let mut entries = BTreeMap::new();
        entries.insert(
            "blk.0.attn_q.weight".to_string(),
            ImatrixEntry {
                in_sum2: vec![512.0, 1024.0, 256.0, 0.5],
                counts: vec![512.0],
            },
        );
        entries.insert(
            "blk.0.ffn_down_exps.weight".to_string(),
            ImatrixEntry {
                in_sum2: vec![10.0, 20.0, 30.0, 40.0],
                counts: vec![10.0, 0.0],
            },
        );
        ImatrixData {
            entries,
            chunk_count: 4,
            chunk_size: 128,
            datasets: vec!["calibration.txt".into()],
            format: ImatrixFormat::Gguf,
            has_metadata: true,
        }
    }

    #[test]
    fn importance_divides_by_counts_and_gives_idle_experts_ones() {
        let d = sample();
        assert_eq!(
            d.importance("blk.0.attn_q.weight").unwrap(),
            vec![1.0, 2.0, 0.5, 0.5 / 512.0]
        );
        assert_eq!(
            d.importance("blk.0.ffn_down_exps.weight").unwrap(),
            vec![1.0, 2.0, 1.0, 1.0]
        );
        assert!(d.importance("blk.1.attn_q.weight").is_none());
    }

    #[test]
    fn gguf_and_legacy_round_trip_with_the_same_importance() {
        let dir = tempfile::tempdir().unwrap();
        let d = sample();
        let gguf = dir.path().join("m.gguf");
        d.save(&gguf).unwrap();
        assert_eq!(ImatrixData::load(&gguf).unwrap(), d);
        let dat = dir.path().join("m.dat");
        d.save(&dat).unwrap();
        let legacy = ImatrixData::load(&dat).unwrap();
        assert_eq!(legacy.format, ImatrixFormat::Legacy);
        assert_eq!(legacy.chunk_count, 4);
        assert_eq!(legacy.datasets, d.datasets);
        // ncall = ⌈512 / 128⌉ = 4 for attn_q; the idle expert stored 1 × ncall.
        assert_eq!(legacy.entries["blk.0.attn_q.weight"].counts, vec![4.0]);
        for name in d.entries.keys() {
            assert_eq!(legacy.importance(name), d.importance(name), "{name}");
        }
        // Legacy back to GGUF: llama-imatrix's reading (× 512), same importance.
        let again = dir.path().join("again.gguf");
        legacy.save(&again).unwrap();
        let raw = ImatrixData::load(&again).unwrap();
        assert_eq!(raw.chunk_size, LEGACY_CHUNK_SIZE);
        for name in d.entries.keys() {
            assert_eq!(raw.importance(name), d.importance(name), "{name}");
        }
    }

    #[test]
    fn quantize_keys_follow_llama_quantize() {
        let d = sample();
        let long = "x".repeat(200);
        let k = d.quantize_keys(&long).unwrap();
        assert_eq!(k.file.len(), 127);
        assert_eq!(k.dataset.as_deref(), Some("calibration.txt"));
        assert_eq!((k.entries_count, k.chunks_count), (2, Some(4)));
        let keys: Vec<String> = k.metadata().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys[3], "quantize.imatrix.chunks_count");
        let bare = ImatrixData {
            has_metadata: false,
            ..d
        };
        let err = bare.quantize_keys("m.gguf").unwrap_err().to_string();
        assert!(
            err.starts_with("m.gguf: ") && err.contains(KEY_DATASETS),
            "{err}"
        );
    }

    #[test]
    fn legacy_lengths_are_checked_before_anything_is_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.dat");
        let mut bytes = 1i32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&3i32.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        bytes.extend_from_slice(&1i32.to_le_bytes());
        bytes.extend_from_slice(&i32::MAX.to_le_bytes()); // nval
        bytes.extend_from_slice(&[0u8; 8]); // two values
        std::fs::write(&path, &bytes).unwrap();
        let err = ImatrixData::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.dat") && err.contains("value count 2147483647"),
            "{err}"
        );
    }
}
