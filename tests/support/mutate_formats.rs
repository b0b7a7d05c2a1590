//! Format-aware damage for tests/mutation.rs: a safetensors file's 8-byte header length and its
//! JSON tensor table (dtype, shape, data_offsets, names); a GGUF file's header fields (counts,
//! lengths, type ids, dimensions, offsets) overwritten with boundary values, found by walking a
//! valid seed; and GGUF files rebuilt by tunelab's writer whose content lies (wrong value types,
//! cut arrays, renamed, reshaped or retyped tensors).

#![allow(dead_code)]

use serde_json::{json, Value};
use tunelab::rng::Rng;

use crate::mutate::{
    below, bytes, chance, interesting, json_tree, pick, Dictionary, Mutant, INTERESTING_U64,
};

// ---- safetensors -------------------------------------------------------------------------------

/// safetensors dtype names, real and not.
const SAFETENSORS_DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "C64", "XYZ", "",
];

/// A safetensors file damaged in its 8-byte header length, its JSON tensor table (dtype, shape,
/// data_offsets, names), or its data; `names` are tensor names to rename entries to.
pub fn safetensors(rng: &mut Rng, input: &[u8], names: &'static [&'static str]) -> Mutant {
    let n = u64::from_le_bytes(input[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&input[8..8 + n]).expect("a valid seed");
    let data = &input[8 + n..];
    match below(rng, 10) {
        0 => {
            let (v, shown) = interesting(rng, n as u64, input.len() as u64);
            let mut b = input.to_vec();
            b[..8].copy_from_slice(&v.to_le_bytes());
            Mutant {
                bytes: b,
                what: format!("header length = {shown}"),
            }
        }
        1 => bytes(rng, input, 8 + n),
        _ => {
            let mut header = header;
            let what = tensor_table(rng, &mut header, names, data.len());
            let mut text = serde_json::to_vec(&header).expect("json");
            while !text.len().is_multiple_of(8) {
                text.push(b' ');
            }
            let mut b = (text.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(&text);
            b.extend_from_slice(data);
            Mutant {
                bytes: b,
                what: format!("header: {what}"),
            }
        }
    }
}

/// One change to a safetensors tensor table.
fn tensor_table(
    rng: &mut Rng,
    header: &mut Value,
    names: &'static [&'static str],
    data_len: usize,
) -> String {
    let dict = Dictionary {
        keys: &["dtype", "shape", "data_offsets", "__metadata__", "format"],
        strings: SAFETENSORS_DTYPES,
    };
    let table = header.as_object_mut().expect("an object");
    let tensors: Vec<String> = table
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    if tensors.is_empty() || chance(rng, 0.15) {
        return json_tree(rng, header, &dict);
    }
    let name = pick(rng, &tensors).clone();
    let entry = table.get_mut(&name).expect("entry");
    let big = |rng: &mut Rng| -> Value {
        match below(rng, 4) {
            0 => json!(-1),
            1 => json!(data_len + below(rng, 16)),
            _ => json!(*pick(rng, INTERESTING_U64)),
        }
    };
    match below(rng, 7) {
        0 => {
            let d = *pick(rng, SAFETENSORS_DTYPES);
            entry["dtype"] = json!(d);
            format!("{name:?}: dtype {d:?}")
        }
        1 => {
            let shape = entry["shape"].as_array_mut().expect("shape");
            match below(rng, 4) {
                0 => {
                    shape.push(json!(*pick(rng, &[1u64, 2, 0])));
                }
                1 => {
                    shape.pop();
                }
                2 if !shape.is_empty() => {
                    let i = below(rng, shape.len());
                    shape[i] = big(rng);
                }
                _ => shape.reverse(),
            }
            format!("{name:?}: shape {}", entry["shape"])
        }
        2 => {
            let offsets = entry["data_offsets"].as_array_mut().expect("offsets");
            match below(rng, 3) {
                0 => offsets.reverse(),
                _ => {
                    let i = below(rng, 2);
                    offsets[i] = big(rng);
                }
            }
            format!("{name:?}: data_offsets {}", entry["data_offsets"])
        }
        3 => {
            let new = (*pick(rng, names)).to_string();
            let v = table.shift_remove(&name).expect("entry");
            table.insert(new.clone(), v);
            format!("{name:?} renamed {new:?}")
        }
        4 => {
            let new = (*pick(rng, names)).to_string();
            let v = entry.clone();
            table.insert(new.clone(), v);
            format!("{name:?} copied as {new:?}")
        }
        5 => {
            table.shift_remove(&name);
            format!("{name:?} removed")
        }
        _ => json_tree(rng, entry, &dict),
    }
}

// ---- GGUF --------------------------------------------------------------------------------------

/// What a GGUF header field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Version, tensor count, key/value count.
    Header,
    /// A key's or tensor name's length.
    NameLength,
    /// A value's type id, an array's element type.
    ValueType,
    /// A string value's length.
    StringLength,
    /// An array's element count.
    ArrayCount,
    /// A numeric metadata value (block count, head count, token ids, alignment...).
    Number,
    /// A tensor's dimension count.
    DimCount,
    /// A tensor dimension.
    Dim,
    /// A tensor's ggml type id.
    TensorType,
    /// A tensor's data offset.
    TensorOffset,
}

/// A field of a GGUF header: where it is, how wide, what it holds, and a name for reports.
#[derive(Debug, Clone)]
pub struct Field {
    pub at: usize,
    pub width: usize,
    pub kind: FieldKind,
    pub name: String,
}

/// The fields of a valid GGUF file's header (the seed's), and where the header ends.
pub fn gguf_fields(b: &[u8]) -> (Vec<Field>, usize) {
    struct Walk<'a> {
        b: &'a [u8],
        pos: usize,
        fields: Vec<Field>,
    }
    impl Walk<'_> {
        fn field(&mut self, width: usize, kind: FieldKind, name: String) -> u64 {
            let mut le = [0u8; 8];
            le[..width].copy_from_slice(&self.b[self.pos..self.pos + width]);
            self.fields.push(Field {
                at: self.pos,
                width,
                kind,
                name,
            });
            self.pos += width;
            u64::from_le_bytes(le)
        }
        fn string(&mut self, kind: FieldKind, name: String) -> String {
            let n = self.field(8, kind, name) as usize;
            let s = String::from_utf8_lossy(&self.b[self.pos..self.pos + n]).into_owned();
            self.pos += n;
            s
        }
        fn value(&mut self, ty: u64, name: &str) {
            match ty {
                0 | 1 | 7 => self.pos += 1,
                2 | 3 => self.pos += 2,
                4..=6 => {
                    self.field(4, FieldKind::Number, name.to_string());
                }
                8 => {
                    self.string(FieldKind::StringLength, name.to_string());
                }
                9 => {
                    let elem = self.field(4, FieldKind::ValueType, format!("{name} element type"));
                    let n = self.field(8, FieldKind::ArrayCount, format!("{name} count"));
                    for i in 0..n {
                        self.value(elem, &format!("{name}[{i}]"));
                    }
                }
                _ => {
                    self.field(8, FieldKind::Number, name.to_string());
                }
            }
        }
    }
    let mut w = Walk {
        b,
        pos: 4,
        fields: Vec::new(),
    };
    w.field(4, FieldKind::Header, "version".into());
    let n_tensors = w.field(8, FieldKind::Header, "tensor count".into());
    let n_kv = w.field(8, FieldKind::Header, "key/value count".into());
    for i in 0..n_kv {
        let key = w.string(FieldKind::NameLength, format!("key {i} length"));
        let ty = w.field(4, FieldKind::ValueType, format!("{key} type"));
        w.value(ty, &key);
    }
    for i in 0..n_tensors {
        let name = w.string(FieldKind::NameLength, format!("tensor {i} name length"));
        let dims = w.field(4, FieldKind::DimCount, format!("{name} n_dims"));
        for d in 0..dims {
            w.field(8, FieldKind::Dim, format!("{name} ne[{d}]"));
        }
        w.field(4, FieldKind::TensorType, format!("{name} type"));
        w.field(8, FieldKind::TensorOffset, format!("{name} offset"));
    }
    let end = w.pos;
    (w.fields, end)
}

/// A GGUF file with one header field (chosen kind first, so the thousands of token strings do not
/// drown the counts) overwritten with a boundary value, or a type id with another id.
pub fn gguf_field(rng: &mut Rng, input: &[u8], fields: &[Field]) -> Mutant {
    let kinds: Vec<FieldKind> = {
        let mut k: Vec<FieldKind> = fields.iter().map(|f| f.kind).collect();
        k.dedup();
        let mut unique = Vec::new();
        for kind in k {
            if !unique.contains(&kind) {
                unique.push(kind);
            }
        }
        unique
    };
    let kind = *pick(rng, &kinds);
    let of_kind: Vec<&Field> = fields.iter().filter(|f| f.kind == kind).collect();
    let f = *pick(rng, &of_kind);
    let mut le = [0u8; 8];
    le[..f.width].copy_from_slice(&input[f.at..f.at + f.width]);
    let old = u64::from_le_bytes(le);
    let (v, shown) = match kind {
        FieldKind::ValueType | FieldKind::TensorType if chance(rng, 0.7) => {
            let v = below(rng, 42) as u64;
            (v, v.to_string())
        }
        _ => interesting(rng, old, input.len() as u64),
    };
    let mut b = input.to_vec();
    b[f.at..f.at + f.width].copy_from_slice(&v.to_le_bytes()[..f.width]);
    Mutant {
        bytes: b,
        what: format!("{} (byte {}) = {shown}, was {old}", f.name, f.at),
    }
}

/// A parsed GGUF seed: its key/values and tensors with their bytes, to rebuild changed files from.
pub struct GgufSeed {
    pub metadata: Vec<(String, tunelab::gguf::Value)>,
    pub tensors: Vec<(tunelab::gguf::TensorInfo, Vec<u8>)>,
}

impl GgufSeed {
    pub fn read(path: &std::path::Path) -> GgufSeed {
        let r = tunelab::gguf::GgufReader::open(path).expect("a valid seed");
        let tensors = r
            .tensors
            .iter()
            .map(|t| (t.clone(), r.tensor_bytes(t).expect("seed tensor")))
            .collect();
        GgufSeed {
            metadata: r.metadata.clone(),
            tensors,
        }
    }
}

/// Metadata keys and tensor names a model loader looks for (to add, rename to, or remove).
const GGUF_KEYS: &[&str] = &[
    "general.architecture",
    "general.alignment",
    "llama.block_count",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.key_length",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "llama.context_length",
    "llama.vocab_size",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
];
const GGUF_STRINGS: &[&str] = &[
    "llama",
    "qwen2",
    "mistral",
    "gpt2",
    "smollm",
    "llama-bpe",
    "qwen2",
    "bert",
    "",
    "<|im_end|>",
];
const GGUF_TENSOR_NAMES: &[&str] = &[
    "token_embd.weight",
    "output.weight",
    "output_norm.weight",
    "rope_freqs.weight",
    "blk.0.attn_q.weight",
    "blk.0.attn_q.bias",
    "blk.0.attn_k.weight",
    "blk.0.attn_k.bias",
    "blk.1.ffn_up.weight",
    "blk.99.attn_v.weight",
];

/// A hostile metadata value: boundary integers of every width, odd floats, wrong kinds.
fn gguf_value(rng: &mut Rng) -> tunelab::gguf::Value {
    use tunelab::gguf::types::type_id;
    use tunelab::gguf::Value as V;
    let n = *pick(rng, INTERESTING_U64);
    match below(rng, 12) {
        0 => V::U32(n as u32),
        1 => V::U64(n),
        2 => V::I32(n as i32),
        3 => V::I64(n as i64),
        4 => V::U8(n as u8),
        5 => V::F32(*pick(
            rng,
            &[0.0f32, -1.0, f32::NAN, f32::INFINITY, 1e-30, 1e30],
        )),
        6 => V::F64(*pick(
            rng,
            &[0.0f64, -1.0, f64::NAN, f64::NEG_INFINITY, 1e300],
        )),
        7 => V::Bool(chance(rng, 0.5)),
        8 => V::String((*pick(rng, GGUF_STRINGS)).to_string()),
        9 => V::Array(type_id::U32, vec![]),
        10 => V::strings(
            ["a", "b", "Ġ", "<|im_end|>"]
                .into_iter()
                .take(below(rng, 5)),
        ),
        _ => V::Array(
            type_id::I32,
            (0..below(rng, 4)).map(|_| V::I32(n as i32)).collect(),
        ),
    }
}

/// A structurally valid GGUF whose content lies: a metadata value of the wrong type or a boundary
/// value, a key removed or added, a tensor renamed, dropped, reshaped or retyped (bytes resized to
/// match), an array cut short. Written by tunelab's writer, so only the meaning is hostile.
pub fn gguf_semantic(rng: &mut Rng, seed: &GgufSeed) -> Mutant {
    use tunelab::gguf::{GgufWriter, Value as V};
    let mut metadata = seed.metadata.clone();
    let mut tensors = seed.tensors.clone();
    let what = match below(rng, 9) {
        0..=2 => {
            let i = below(rng, metadata.len());
            let v = gguf_value(rng);
            let what = format!("key {:?} = {v:?}", metadata[i].0);
            metadata[i].1 = v;
            what
        }
        3 => {
            let key = (*pick(rng, GGUF_KEYS)).to_string();
            let v = gguf_value(rng);
            let what = format!("key {key:?} set to {v:?}");
            match metadata.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = v,
                None => metadata.push((key, v)),
            }
            what
        }
        4 => {
            let i = below(rng, metadata.len());
            format!("key {:?} removed", metadata.remove(i).0)
        }
        5 => {
            let arrays: Vec<usize> = (0..metadata.len())
                .filter(|&i| matches!(metadata[i].1, V::Array(..)))
                .collect();
            if arrays.is_empty() {
                return gguf_semantic(rng, seed);
            }
            let i = *pick(rng, &arrays);
            let V::Array(_, items) = &mut metadata[i].1 else {
                unreachable!()
            };
            let keep = below(rng, items.len() + 1);
            items.truncate(keep);
            format!("array {:?} cut to {keep} elements", metadata[i].0)
        }
        6 => {
            let i = below(rng, tensors.len());
            let new = (*pick(rng, GGUF_TENSOR_NAMES)).to_string();
            let what = format!("tensor {:?} renamed {new:?}", tensors[i].0.name);
            if tensors.iter().any(|(t, _)| t.name == new) {
                tensors.remove(i);
            } else {
                tensors[i].0.name = new;
            }
            what
        }
        7 => {
            let i = below(rng, tensors.len());
            format!("tensor {:?} removed", tensors.remove(i).0.name)
        }
        _ => {
            let i = below(rng, tensors.len());
            let (info, data) = &mut tensors[i];
            let ty = if chance(rng, 0.5) {
                *pick(rng, tunelab::gguf::types::GGML_TYPES)
            } else {
                info.ggml_type
            };
            let mut ne = info.ne.clone();
            match below(rng, 4) {
                0 => ne.reverse(),
                1 => ne.push(*pick(rng, &[1u64, 2])),
                2 if ne.len() > 1 => {
                    let last = ne.pop().expect("dim");
                    ne[0] *= last;
                }
                _ => {
                    let d = below(rng, ne.len());
                    ne[d] = *pick(rng, &[1u64, 2, 32, 256, ne[d] * 2, ne[d] / 2]);
                }
            }
            if ne[0] % ty.block != 0 || ne.iter().product::<u64>() > 1 << 22 {
                ne[0] = ne[0].div_ceil(ty.block) * ty.block;
            }
            let elements: u64 = ne.iter().product();
            let Some(bytes) = ty.bytes_for(elements).filter(|&b| b <= 16 << 20) else {
                return gguf_semantic(rng, seed);
            };
            let what = format!(
                "tensor {:?} as {} {ne:?}, was {} {:?}",
                info.name, ty.name, info.ggml_type.name, info.ne
            );
            data.resize(bytes as usize, 0x3c);
            info.ne = ne;
            info.ggml_type = ty;
            what
        }
    };
    // The writer pads to the alignment it is given: a huge one would make a huge seed.
    if metadata
        .iter()
        .any(|(k, v)| k == "general.alignment" && v.as_u64().is_some_and(|a| a > 1 << 16))
    {
        return gguf_semantic(rng, seed);
    }
    let mut w = GgufWriter::new();
    for (k, v) in metadata {
        w.set(k, v);
    }
    for (t, data) in tensors {
        if w.add_tensor(&t.name, &t.ne, t.ggml_type, data).is_err() {
            return gguf_semantic(rng, seed);
        }
    }
    match w.to_bytes() {
        Ok(bytes) => Mutant { bytes, what },
        Err(_) => gguf_semantic(rng, seed),
    }
}
