//! Writing a GGUF file in llama.cpp's strict layout: version 3, the key/values and tensor
//! descriptions in the order given, the data section aligned, each tensor's bytes at the offset its
//! description says, in description order with no gaps (llama.cpp's reader requires
//! `offset_i = Σ_{j<i} pad(bytes_j)`), each padded with zeros to the alignment. The file is written
//! under a temporary name and renamed, so a crash never leaves half a model.

use std::io::Write;
use std::path::Path;

use super::types::{pad, GgmlType, TensorInfo, Value};
use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_NAME, VERSION};
use crate::error::{Error, Result};

/// A GGUF file being assembled.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Set `key` (replacing an earlier value in place, keeping its position).
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
    }

    /// Remove `key` if present.
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Add a tensor: `ne` in ggml order (row length first) and its bytes in `ggml_type`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ne: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<()> {
        let name = name.into();
        let fail = |m: String| Error::msg(format!("GGUF tensor \"{name}\": {m}"));
        if name.len() >= MAX_NAME {
            return Err(fail(format!(
                "the name is {} bytes; ggml allows at most {}",
                name.len(),
                MAX_NAME - 1
            )));
        }
        if ne.is_empty() || ne.len() > MAX_DIMS {
            return Err(fail(format!(
                "{} dimensions; ggml allows 1 to {MAX_DIMS}",
                ne.len()
            )));
        }
        if self.tensors.iter().any(|(t, _)| t.name == name) {
            return Err(fail("added twice".into()));
        }
        let elements: u64 = ne.iter().product();
        if !ne[0].is_multiple_of(ggml_type.block) {
            return Err(fail(format!(
                "row length {} is not a multiple of {}'s block of {}",
                ne[0], ggml_type.name, ggml_type.block
            )));
        }
        let expected = ggml_type.bytes_for(elements).expect("whole blocks");
        if data.len() as u64 != expected {
            return Err(fail(format!(
                "{} bytes given; {} weights of {} take {expected}",
                data.len(),
                elements,
                ggml_type.name
            )));
        }
        self.tensors.push((
            TensorInfo {
                name,
                ne: ne.to_vec(),
                ggml_type,
                offset: 0,
            },
            data,
        ));
        Ok(())
    }

    /// The alignment the file will use (`general.alignment`, else 32).
    fn alignment(&self) -> Result<u64> {
        match self.get("general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(Value::U32(a)) if a.is_power_of_two() => Ok(*a as u64),
            Some(other) => Err(Error::msg(format!(
                "GGUF key \"general.alignment\" must be a u32 power of two, not {other:?}"
            ))),
        }
    }

    /// The header: everything before the data section, padded to the alignment.
    fn header(&self) -> Result<(Vec<u8>, u64)> {
        let align = self.alignment()?;
        for (key, value) in &self.metadata {
            check_array(value).map_err(|m| Error::msg(format!("GGUF key \"{key}\": {m}")))?;
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0u64;
        for (info, data) in &self.tensors {
            write_string(&mut out, &info.name);
            out.extend_from_slice(&(info.ne.len() as u32).to_le_bytes());
            for n in &info.ne {
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.extend_from_slice(&info.ggml_type.id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += pad(data.len() as u64, align);
        }
        out.resize(pad(out.len() as u64, align) as usize, 0);
        Ok((out, align))
    }

    /// Header, then each tensor's bytes padded to the alignment, into `sink`.
    fn write_to(&self, sink: &mut impl Write) -> Result<std::io::Result<()>> {
        let (header, align) = self.header()?;
        Ok((|| {
            sink.write_all(&header)?;
            let zeros = vec![0u8; align as usize];
            for (_, data) in &self.tensors {
                sink.write_all(data)?;
                let padding = pad(data.len() as u64, align) - data.len() as u64;
                sink.write_all(&zeros[..padding as usize])?;
            }
            Ok(())
        })())
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?
            .expect("writing to memory does not fail");
        Ok(out)
    }

    /// Write the file atomically, streaming the tensors (no second copy of them in memory).
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let tmp = crate::fsutil::temp_name(path);
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut sink = std::io::BufWriter::with_capacity(1 << 20, file);
        let written = match self.write_to(&mut sink) {
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(io) => io.and_then(|()| {
                sink.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                std::fs::rename(&tmp, path)
            }),
        };
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }
}

/// Arrays hold elements of their declared type only.
fn check_array(value: &Value) -> std::result::Result<(), String> {
    if let Value::Array(elem, items) = value {
        for item in items {
            if item.type_id() != *elem {
                return Err(format!(
                    "an array of type {elem} holds a value of type {}",
                    item.type_id()
                ));
            }
            check_array(item)?;
        }
    }
    Ok(())
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(*v as u8),
        Value::String(s) => write_string(out, s),
        Value::Array(elem, items) => {
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}
