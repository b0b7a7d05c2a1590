//! Reading a GGUF file: the header is parsed and checked up front (magic, version, every length
//! against the bytes left in the file, names, types, dimensions, offsets, alignment); tensor data
//! is read on demand, so a multi-gigabyte model costs only its header until its tensors are used.
//!
//! Checks follow llama.cpp's own reader (`ggml/src/gguf.cpp`): keys and tensor names are unique,
//! names are shorter than 64 bytes, at most 4 dimensions, `ne[0]` a multiple of the type's block,
//! every tensor inside the file and aligned. A failed check is one error naming the file, the key
//! or tensor, and what is wrong.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::types::{pad, type_id, GgmlType, TensorInfo, Value};
use super::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_NAME};
use crate::error::{Error, Result};

/// Arrays nest at most this deep (llama.cpp writes one level; deeper is a corrupt file).
const MAX_NESTING: usize = 8;

/// A parsed GGUF header, and the file to read tensor bytes from.
#[derive(Debug, Clone)]
pub struct GgufReader {
    pub path: PathBuf,
    pub version: u32,
    /// Key/values in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor descriptions in file order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts.
    pub data_offset: u64,
    pub file_len: u64,
}

/// A byte source that knows how many bytes are left, so no length read from the file can make
/// it allocate more than the file holds.
struct Source<'a> {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl Source<'_> {
    fn fail(&self, at: &str, message: impl Into<String>) -> Error {
        Error::data(self.path, at, message)
    }

    fn bytes(&mut self, n: u64, at: &str) -> Result<Vec<u8>> {
        if n > self.len - self.pos {
            return Err(self.fail(
                at,
                format!(
                    "needs {n} bytes at offset {} but the file ends at {}: the file is truncated or corrupt",
                    self.pos, self.len
                ),
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| Error::io(self.path, e))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, at: &str) -> Result<[u8; N]> {
        Ok(self.bytes(N as u64, at)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, at: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(at)?))
    }

    fn u64(&mut self, at: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(at)?))
    }

    fn string(&mut self, at: &str) -> Result<String> {
        let n = self.u64(at)?;
        let bytes = self.bytes(n, at)?;
        String::from_utf8(bytes).map_err(|_| self.fail(at, "a string is not valid UTF-8"))
    }

    /// A value of type `ty`, arrays nested at most `depth` more levels.
    fn value(&mut self, ty: u32, at: &str, depth: usize) -> Result<Value> {
        use type_id::*;
        Ok(match ty {
            U8 => Value::U8(self.array::<1>(at)?[0]),
            I8 => Value::I8(self.array::<1>(at)?[0] as i8),
            U16 => Value::U16(u16::from_le_bytes(self.array(at)?)),
            I16 => Value::I16(i16::from_le_bytes(self.array(at)?)),
            U32 => Value::U32(self.u32(at)?),
            I32 => Value::I32(i32::from_le_bytes(self.array(at)?)),
            F32 => Value::F32(f32::from_le_bytes(self.array(at)?)),
            BOOL => match self.array::<1>(at)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.fail(at, format!("a bool holds {b}, not 0 or 1"))),
            },
            STRING => Value::String(self.string(at)?),
            ARRAY => {
                if depth == 0 {
                    return Err(self.fail(at, format!("arrays nest deeper than {MAX_NESTING}")));
                }
                let elem = self.u32(at)?;
                let count = self.u64(at)?;
                // Every element takes at least one byte (strings and arrays at least 8).
                let least = match elem {
                    STRING | ARRAY => 8,
                    _ => element_size(elem).ok_or_else(|| {
                        self.fail(at, format!("unknown array element type {elem}"))
                    })?,
                };
                if count.saturating_mul(least) > self.len - self.pos {
                    return Err(self.fail(
                        at,
                        format!("an array of {count} elements cannot fit in the rest of the file: the file is truncated or corrupt"),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, at, depth - 1)?);
                }
                Value::Array(elem, items)
            }
            U64 => Value::U64(self.u64(at)?),
            I64 => Value::I64(i64::from_le_bytes(self.array(at)?)),
            F64 => Value::F64(f64::from_le_bytes(self.array(at)?)),
            other => return Err(self.fail(at, format!("unknown value type {other}"))),
        })
    }
}

/// Bytes of one scalar of value type `ty`.
fn element_size(ty: u32) -> Option<u64> {
    use type_id::*;
    Some(match ty {
        U8 | I8 | BOOL => 1,
        U16 | I16 => 2,
        U32 | I32 | F32 => 4,
        U64 | I64 | F64 => 8,
        _ => return None,
    })
}

impl GgufReader {
    /// Parse and check the header of `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufReader> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut s = Source {
            inner: BufReader::with_capacity(1 << 16, file),
            pos: 0,
            len,
            path,
        };
        let magic: [u8; 4] = s.array("header")?;
        if magic != MAGIC {
            return Err(s.fail(
                "header",
                "not a GGUF file (it does not start with \"GGUF\")",
            ));
        }
        let version = s.u32("header")?;
        if !(2..=3).contains(&version) {
            return Err(s.fail(
                "header",
                format!("GGUF version {version}; tunelab reads versions 2 and 3"),
            ));
        }
        let n_tensors = s.u64("header")?;
        let n_kv = s.u64("header")?;
        // A key/value takes at least 8 + 1 + 4 + 1 bytes, a tensor description 8 + 1 + 4 + 8 + 4 + 8.
        if n_kv.saturating_mul(14) > len || n_tensors.saturating_mul(33) > len {
            return Err(s.fail(
                "header",
                format!("{n_kv} key/values and {n_tensors} tensors cannot fit in {len} bytes: the file is truncated or corrupt"),
            ));
        }
        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = s.string(&format!("key/value {i}"))?;
            let at = format!("key \"{key}\"");
            if metadata.iter().any(|(k, _)| *k == key) {
                return Err(s.fail(&at, "appears twice"));
            }
            let ty = s.u32(&at)?;
            let value = s.value(ty, &at, MAX_NESTING)?;
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v {
                Value::U32(a) if a.is_power_of_two() => *a as u64,
                other => {
                    return Err(s.fail(
                        "key \"general.alignment\"",
                        format!("must be a u32 power of two, not {other:?}"),
                    ))
                }
            },
        };
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = s.string(&format!("tensor {i}"))?;
            let at = format!("tensor \"{name}\"");
            if name.len() >= MAX_NAME {
                return Err(s.fail(
                    &at,
                    format!(
                        "its name is {} bytes; ggml allows at most {}",
                        name.len(),
                        MAX_NAME - 1
                    ),
                ));
            }
            if tensors.iter().any(|t| t.name == name) {
                return Err(s.fail(&at, "appears twice"));
            }
            let n_dims = s.u32(&at)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(s.fail(
                    &at,
                    format!("{n_dims} dimensions; ggml allows 1 to {MAX_DIMS}"),
                ));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(s.u64(&at)?);
            }
            let type_id = s.u32(&at)?;
            let ggml_type = GgmlType::from_id(type_id)
                .ok_or_else(|| s.fail(&at, format!("unknown ggml type {type_id}")))?;
            if ne[0] % ggml_type.block != 0 {
                return Err(s.fail(
                    &at,
                    format!(
                        "row length {} is not a multiple of {}'s block of {}",
                        ne[0], ggml_type.name, ggml_type.block
                    ),
                ));
            }
            let offset = s.u64(&at)?;
            if offset % alignment != 0 {
                return Err(s.fail(
                    &at,
                    format!("data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            tensors.push(TensorInfo {
                name,
                ne,
                ggml_type,
                offset,
            });
        }
        let data_offset = pad(s.pos, alignment);
        for t in &tensors {
            let end =
                t.ne.iter()
                    .try_fold(1u64, |a, &n| a.checked_mul(n))
                    .and_then(|n| t.ggml_type.bytes_for(n))
                    .and_then(|b| b.checked_add(t.offset))
                    .and_then(|e| e.checked_add(data_offset));
            if end.is_none_or(|e| e > len) {
                return Err(s.fail(
                    &format!("tensor \"{}\"", t.name),
                    format!("its data runs past the end of the file ({len} bytes): the file is truncated"),
                ));
            }
        }
        Ok(GgufReader {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_len: len,
        })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The description of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of `tensor` (one of this file's).
    pub fn tensor_bytes(&self, tensor: &TensorInfo) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; tensor.bytes() as usize];
        self.read_tensor_into(tensor, &mut buf)?;
        Ok(buf)
    }

    /// The bytes of `tensor` into `buf`, which holds exactly that many.
    pub fn read_tensor_into(&self, tensor: &TensorInfo, buf: &mut [u8]) -> Result<()> {
        if buf.len() as u64 != tensor.bytes() {
            return Err(Error::msg(format!(
                "{}: tensor {} has {} bytes, not {}",
                self.path.display(),
                tensor.name,
                tensor.bytes(),
                buf.len()
            )));
        }
        let mut f = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        f.seek(SeekFrom::Start(self.data_offset + tensor.offset))
            .map_err(|e| Error::io(&self.path, e))?;
        f.read_exact(buf).map_err(|e| Error::io(&self.path, e))
    }
}
