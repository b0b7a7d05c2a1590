//! Hostile inputs that once crashed a loader (each found by tests/mutation.rs), built by hand so
//! they outlive changes to the mutator: every one must now fail with one line naming the file.

use std::path::{Path, PathBuf};

use tunelab::gguf::{GgufWriter, Value};

use crate::mutate_formats::{self, GgufSeed};
use crate::seeds::{arrow_file_format, every_value_gguf, exported, fixture};
use crate::targets::{Context, Load};

/// One hostile input that once crashed a loader, built by hand (so it survives changes to the
/// mutator): a name, the loader, and the files of its folder.
pub struct Regression {
    pub name: &'static str,
    pub load: Load,
    /// The file given to the loader (its folder for folder loaders).
    pub file: &'static str,
    pub files: Vec<(&'static str, Vec<u8>)>,
    /// A folder whose files go beside them.
    pub companion: Option<PathBuf>,
    /// Registered names (for `Load::DataName`).
    pub names: Vec<String>,
}

/// `bytes` with the little-endian `value` written over the GGUF header field called `field`.
pub fn patch_gguf(bytes: &[u8], field: &str, value: u64) -> Vec<u8> {
    let (fields, _) = mutate_formats::gguf_fields(bytes);
    let f = fields
        .iter()
        .find(|f| f.name == field)
        .unwrap_or_else(|| panic!("no field {field}"));
    let mut b = bytes.to_vec();
    b[f.at..f.at + f.width].copy_from_slice(&value.to_le_bytes()[..f.width]);
    b
}

/// A GGUF rebuilt from `seed` with `metadata` and `tensor` changes applied.
pub fn rebuilt(
    seed: &GgufSeed,
    metadata: impl Fn(&mut Vec<(String, Value)>),
    tensor: impl Fn(&mut tunelab::gguf::TensorInfo, &mut Vec<u8>),
) -> Vec<u8> {
    let mut w = GgufWriter::new();
    let mut kv = seed.metadata.clone();
    metadata(&mut kv);
    for (k, v) in kv {
        w.set(k, v);
    }
    for (t, data) in &seed.tensors {
        let (mut t, mut data) = (t.clone(), data.clone());
        tensor(&mut t, &mut data);
        w.add_tensor(&t.name, &t.ne, t.ggml_type, data).unwrap();
    }
    w.to_bytes().unwrap()
}

/// `path`'s bytes with `at` set to `value`.
pub fn patched(path: &Path, at: usize, value: &[u8]) -> Vec<u8> {
    let mut b = std::fs::read(path).unwrap();
    b[at..at + value.len()].copy_from_slice(value);
    b
}

/// `path`'s bytes with `bytes` inserted at `at`.
fn inserted(path: &Path, at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut b = std::fs::read(path).unwrap();
    b.splice(at..at, bytes.iter().copied());
    b
}

/// A JSON file with `key` set to `value`.
pub fn json_with(path: &Path, key: &str, value: serde_json::Value) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v[key] = value;
    serde_json::to_vec_pretty(&v).unwrap()
}

/// An Arrow IPC file whose record batch block claims a body of 1 TB.
pub fn arrow_file_with_huge_block(stream: &Path) -> Vec<u8> {
    let mut b = arrow_file_format(stream);
    let len = b.len();
    let footer_len = u32::from_le_bytes(b[len - 10..len - 6].try_into().unwrap()) as usize;
    let footer_at = len - 10 - footer_len;
    let block = {
        let footer = arrow_ipc::root_as_footer(&b[footer_at..len - 10]).unwrap();
        let block = footer.recordBatches().unwrap().get(0);
        (block.offset(), block.metaDataLength(), block.bodyLength())
    };
    let mut pattern = block.0.to_le_bytes().to_vec();
    pattern.extend_from_slice(&block.1.to_le_bytes());
    let at = (footer_at..len - 10)
        .find(|&i| b[i..].starts_with(&pattern))
        .expect("the block in the footer")
        + 16;
    assert_eq!(b[at..at + 8], block.2.to_le_bytes());
    b[at..at + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
    b
}

pub fn regressions(ctx: &Context) -> Vec<Regression> {
    let scratch = &ctx.scratch;
    let f32_gguf = exported(&ctx.base, "F32", scratch);
    let f32_path = scratch.join("regression-f32.gguf");
    std::fs::write(&f32_path, &f32_gguf).unwrap();
    let seed = GgufSeed::read(&f32_path);
    let base = fixture("peft/base");
    let formats = fixture("formats");
    let one = |name, load, file: &'static str, bytes: Vec<u8>| Regression {
        name,
        load,
        file,
        files: vec![(file, bytes)],
        companion: None,
        names: Vec::new(),
    };
    let beside = |name, load, file: &'static str, bytes: Vec<u8>, dir: &Path| Regression {
        companion: Some(dir.to_path_buf()),
        ..one(name, load, file, bytes)
    };
    vec![
        one(
            "GGUF dimensions whose product overflows (GgufReader: overflow in bytes_for)",
            Load::GgufReader,
            "m.gguf",
            patch_gguf(&every_value_gguf(), "a.weight ne[0]", i64::MAX as u64),
        ),
        one(
            "GGUF dimensions whose product overflows (model loader: overflow in elem_count)",
            Load::GgufModel,
            "m.gguf",
            patch_gguf(&f32_gguf, "blk.0.ffn_up.weight ne[1]", 1 << 62),
        ),
        one(
            "GGUF tensor with a zero dimension (candle read an empty buffer as blocks: UB abort)",
            Load::GgufModel,
            "m.gguf",
            rebuilt(
                &seed,
                |_| {},
                |t, data| {
                    if t.name == "blk.0.attn_norm.weight" {
                        t.ne = vec![0];
                        data.clear();
                    }
                },
            ),
        ),
        one(
            "GGUF ffn_up wider than the metadata says (forward pass: chunk size 0 panic)",
            Load::GgufModel,
            "m.gguf",
            rebuilt(
                &seed,
                |_| {},
                |t, data| {
                    if t.name == "blk.0.ffn_up.weight" {
                        t.ne = vec![256, 64];
                        data.resize(256 * 64 * 4, 0);
                    }
                },
            ),
        ),
        one(
            "GGUF without tokenizer.ggml.merges (candle's error took two lines)",
            Load::GgufModel,
            "m.gguf",
            rebuilt(
                &seed,
                |kv| kv.retain(|(k, _)| k != "tokenizer.ggml.merges"),
                |_, _| {},
            ),
        ),
        one(
            "a role holding a line break (the error quoting it took two lines)",
            Load::DataPath,
            "data.json",
            br#"[{"conversations": [{"from": "human", "value": "q"}, {"from": "functio\n_call", "value": "a"}]}]"#
                .to_vec(),
        ),
        one(
            "GGUF q weight of three dimensions (error did not name the file)",
            Load::GgufModel,
            "m.gguf",
            rebuilt(
                &seed,
                |_| {},
                |t, _| {
                    if t.name == "blk.1.attn_k.weight" {
                        t.ne.push(1);
                    }
                },
            ),
        ),
        one(
            "GGUF token list cut short (tokenizers panics building a merge longer than any token)",
            Load::GgufModel,
            "m.gguf",
            rebuilt(
                &seed,
                |kv| {
                    for (k, v) in kv.iter_mut() {
                        if let (true, Value::Array(_, tokens)) = (k == "tokenizer.ggml.tokens", v) {
                            tokens.truncate(943);
                        }
                    }
                },
                |_, _| {},
            ),
        ),
        beside(
            "config.json head_dim 2^31 (an 8 GiB rope table)",
            Load::HfFolder,
            "config.json",
            json_with(&base.join("config.json"), "head_dim", (1u64 << 31).into()),
            &base,
        ),
        beside(
            "config.json num_hidden_layers 2^24 (layers preallocated from the file)",
            Load::HfFolder,
            "config.json",
            json_with(
                &base.join("config.json"),
                "num_hidden_layers",
                (1u64 << 24).into(),
            ),
            &base,
        ),
        beside(
            "PEFT tensor of layer 99999999999 (layer table sized by it)",
            Load::Peft,
            "adapter_model.safetensors",
            lora_layer_renamed(&fixture("peft/qv/adapter_model.safetensors")),
            &fixture("peft/qv"),
        ),
        one(
            "Arrow stream with a buffer past the body (arrow-buffer slice panic)",
            Load::DataPath,
            "data.arrow",
            patched(
                &formats.join("sharegpt_saved/data-00000-of-00001.arrow"),
                810,
                &[0x2c],
            ),
        ),
        one(
            "Arrow file whose footer claims a 1 TB block (allocated before reading)",
            Load::DataPath,
            "data.arrow",
            arrow_file_with_huge_block(&formats.join("alpaca_saved/data-00000-of-00001.arrow")),
        ),
        one(
            "Parquet column chunk with a negative start (parquet metadata panic)",
            Load::DataPath,
            "data.parquet",
            patched(&formats.join("alpaca.parquet"), 884, &[0xff]),
        ),
        one(
            "Parquet page with a bit-packed run past its buffer (arrow-buffer panic)",
            Load::DataPath,
            "data.parquet",
            patched(&formats.join("alpaca.parquet"), 157, &[0xff]),
        ),
        one(
            "Parquet page header skipping a corrupt list at the end of the file (a hang)",
            Load::DataPath,
            "data.parquet",
            inserted(
                &formats.join("sharegpt.parquet"),
                4,
                &[
                    0x9b, 0xd1, 0x12, 0x4b, 0x5f, 0x81, 0xd3, 0xf2, 0x50, 0xdd, 0x9d, 0x53, 0x17,
                    0x34, 0x0e, 0x67, 0x8b, 0xfd, 0x10, 0x8e,
                ],
            ),
        ),
        one(
            "Parquet statistics whose sizes overflow (overflow panic)",
            Load::DataPath,
            "data.parquet",
            patched(&formats.join("alpaca.parquet"), 1461, &1u32.to_le_bytes()),
        ),
        Regression {
            names: vec!["alpaca_json".into()],
            ..beside(
                "dataset_info.json num_samples 10^12 (the sample order grown to match)",
                Load::DataName,
                "dataset_info.json",
                br#"{"alpaca_json": {"file_name": "alpaca.json", "num_samples": 1000000000000}}"#
                    .to_vec(),
                &formats,
            )
        },
    ]
}

/// PEFT's qv adapter with its first tensor renamed to layer 99999999999.
pub fn lora_layer_renamed(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(b[8..8 + n].to_vec()).unwrap();
    let header = header.replacen("layers.0.", "layers.99999999999.", 1);
    let mut header = header.into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&b[8 + n..]);
    out
}
