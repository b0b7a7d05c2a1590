//! What tests/mutation.rs feeds to which loader: the targets (a format, its seeds, how they are
//! mutated, the loader a user reaches), the mutated input number N of a target, and the load
//! itself — followed, for a model that loads, by a short forward pass.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tunelab::cancel::CancelToken;
use tunelab::data::registry::Columns;
use tunelab::data::{self, OnError};
use tunelab::gguf::imatrix_file::{ImatrixData, ImatrixEntry};
use tunelab::gguf::GgufReader;
use tunelab::lora::{peft, Adapter, LoraConfig};
use tunelab::model::{self, Logits, Model, Pass};
use tunelab::rng::Rng;

use crate::mutate::{self, Dictionary, Mutant};
use crate::mutate_formats::{self, Field, GgufSeed};
use crate::seeds::{
    arrow_file_format, every_value_gguf, exported, fixture, registered, root, with_alignment,
    with_spm_vocab, DATA_DICT, HF_CONFIG_DICT, HF_TENSOR_NAMES, LORA_TENSOR_NAMES,
    PEFT_CONFIG_DICT,
};

/// How a target's seeds are mutated.
#[derive(Clone, Copy)]
pub enum Mutation {
    /// GGUF header fields, rebuilt files with lying content, or bytes (header first).
    Gguf,
    /// safetensors header length, tensor table or bytes; the names are tensor names to rename to.
    Safetensors(&'static [&'static str]),
    /// A JSON document with this dictionary.
    Json(&'static Dictionary),
    /// JSON Lines with this dictionary.
    JsonLines(&'static Dictionary),
    /// Delimited or plain text.
    Text,
    /// A binary format: bytes anywhere, or near the end (Parquet's footer).
    Binary,
}

/// The loader a target's inputs go to.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// `GgufReader::open`, then every tensor's bytes.
    GgufReader,
    /// `model::load` of a `.gguf` (dequantized or quantized), then a forward pass.
    GgufModel,
    /// `model::load` of a Hugging Face folder, then a forward pass.
    HfFolder,
    /// `peft::load` of an adapter folder onto the base model, then a forward pass with it.
    Peft,
    /// `data::load` of a dataset file or folder by path.
    DataPath,
    /// `data::load` of a registered name through a mutated dataset_info.json.
    DataName,
    /// `ImatrixData::load` of an importance matrix (GGUF or legacy `.dat`), then what
    /// llama-quantize and `--show-statistics` read from it, and both writers.
    Imatrix,
}

/// A valid input and where it lives.
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
    /// A folder whose other files the input needs (copied beside it), if any.
    pub companion: Option<PathBuf>,
    /// GGUF seeds: header fields, header length, parsed content.
    pub gguf: Option<(Vec<Field>, usize, GgufSeed)>,
    /// Registry seeds: the names it registers.
    pub names: Vec<String>,
}

impl Seed {
    fn file(name: &str, path: &Path) -> Seed {
        Seed {
            name: name.to_string(),
            bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            companion: None,
            gguf: None,
            names: Vec::new(),
        }
    }

    fn beside(name: &str, dir: &Path, file: &str) -> Seed {
        Seed {
            companion: Some(dir.to_path_buf()),
            ..Seed::file(name, &dir.join(file))
        }
    }

    fn gguf(name: &str, bytes: Vec<u8>, scratch: &Path) -> Seed {
        let path = scratch.join(format!("{name}.seed.gguf"));
        std::fs::write(&path, &bytes).unwrap();
        let (fields, header_end) = mutate_formats::gguf_fields(&bytes);
        Seed {
            name: name.to_string(),
            gguf: Some((fields, header_end, GgufSeed::read(&path))),
            companion: None,
            names: Vec::new(),
            bytes,
        }
    }
}

/// One kind of hostile input.
pub struct Target {
    pub name: &'static str,
    /// The mutated file's name in the case folder.
    pub file: &'static str,
    pub seeds: Vec<Seed>,
    pub mutation: Mutation,
    pub load: Load,
}

/// What every load needs: the base model (for adapters) and the scratch folder.
pub struct Context {
    pub base: Model,
    pub scratch: PathBuf,
}

// ---- the targets -------------------------------------------------------------------------------

/// Every target with its seeds.
pub fn targets(ctx: &Context) -> Vec<Target> {
    let scratch = &ctx.scratch;
    let f32_gguf = exported(&ctx.base, "F32", scratch);
    let q8_gguf = exported(&ctx.base, "Q8_0", scratch);
    let aligned = with_alignment(&f32_gguf, scratch);
    let spm = with_spm_vocab(&f32_gguf, scratch);
    let saved_hf = scratch.join("saved-hf");
    model::save::save_hf(&ctx.base, &saved_hf, &Default::default()).unwrap();
    let saved_peft = scratch.join("saved-peft");
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let adapter = Adapter::new(&ctx.base.llama, lora, 7, "base").unwrap();
    peft::save(&adapter, &saved_peft, false).unwrap();
    let text_file = scratch.join("lines.txt");
    std::fs::write(
        &text_file,
        "Hello there.\nSecond line, with a comma\n\n你好\t🙂\nlast line without newline",
    )
    .unwrap();

    let base = fixture("peft/base");
    let (qv, rs) = (fixture("peft/qv"), fixture("peft/rslora_all"));
    let formats = fixture("formats");
    let malformed = fixture("malformed");
    let shipped = root().join("data");
    let file = |name: &str, path: PathBuf| Seed::file(name, &path);
    let registry = |name: &str, dir: &Path| Seed {
        names: registered(&std::fs::read(dir.join("dataset_info.json")).unwrap()),
        ..Seed::beside(name, &formats, "dataset_info.json")
    };
    let arrow_stream = formats.join("alpaca_saved/data-00000-of-00001.arrow");
    let imatrix = fixture("imatrix");
    vec![
        Target {
            name: "gguf-reader",
            file: "m.gguf",
            seeds: vec![
                Seed::gguf("every-value", every_value_gguf(), scratch),
                Seed::gguf("base-q8_0", q8_gguf.clone(), scratch),
            ],
            mutation: Mutation::Gguf,
            load: Load::GgufReader,
        },
        Target {
            name: "gguf-model",
            file: "m.gguf",
            seeds: vec![
                Seed::gguf("base-f32", f32_gguf, scratch),
                Seed::gguf("base-q8_0", q8_gguf, scratch),
                Seed::gguf("base-aligned", aligned, scratch),
                Seed::gguf("base-spm", spm, scratch),
            ],
            mutation: Mutation::Gguf,
            load: Load::GgufModel,
        },
        Target {
            name: "hf-safetensors",
            file: "model.safetensors",
            seeds: vec![
                Seed::beside("transformers", &base, "model.safetensors"),
                Seed::beside("save_hf", &saved_hf, "model.safetensors"),
            ],
            mutation: Mutation::Safetensors(HF_TENSOR_NAMES),
            load: Load::HfFolder,
        },
        Target {
            name: "hf-config",
            file: "config.json",
            seeds: vec![
                Seed::beside("transformers", &base, "config.json"),
                Seed::beside("save_hf", &saved_hf, "config.json"),
            ],
            mutation: Mutation::Json(&HF_CONFIG_DICT),
            load: Load::HfFolder,
        },
        Target {
            name: "peft-config",
            file: "adapter_config.json",
            seeds: vec![
                Seed::beside("peft-qv", &qv, "adapter_config.json"),
                Seed::beside("peft-rslora", &rs, "adapter_config.json"),
                Seed::beside("tunelab", &saved_peft, "adapter_config.json"),
            ],
            mutation: Mutation::Json(&PEFT_CONFIG_DICT),
            load: Load::Peft,
        },
        Target {
            name: "peft-safetensors",
            file: "adapter_model.safetensors",
            seeds: vec![
                Seed::beside("peft-qv", &qv, "adapter_model.safetensors"),
                Seed::beside("peft-rslora", &rs, "adapter_model.safetensors"),
                Seed::beside("tunelab", &saved_peft, "adapter_model.safetensors"),
            ],
            mutation: Mutation::Safetensors(LORA_TENSOR_NAMES),
            load: Load::Peft,
        },
        Target {
            name: "data-json",
            file: "data.json",
            seeds: vec![
                file("alpaca", formats.join("alpaca.json")),
                file("sharegpt", formats.join("sharegpt.json")),
                file("identity", shipped.join("identity.json")),
                file("wrong_roles", malformed.join("wrong_roles.json")),
            ],
            mutation: Mutation::Json(&DATA_DICT),
            load: Load::DataPath,
        },
        Target {
            name: "data-jsonl",
            file: "data.jsonl",
            seeds: vec![
                file("alpaca", formats.join("alpaca.jsonl")),
                file("broken_line", malformed.join("broken_line.jsonl")),
            ],
            mutation: Mutation::JsonLines(&DATA_DICT),
            load: Load::DataPath,
        },
        Target {
            name: "data-csv",
            file: "data.csv",
            seeds: vec![
                file("alpaca", formats.join("alpaca.csv")),
                file("spreadsheet", malformed.join("spreadsheet.csv")),
            ],
            mutation: Mutation::Text,
            load: Load::DataPath,
        },
        Target {
            name: "data-tsv",
            file: "data.tsv",
            seeds: vec![file("alpaca", formats.join("alpaca.tsv"))],
            mutation: Mutation::Text,
            load: Load::DataPath,
        },
        Target {
            name: "data-txt",
            file: "data.txt",
            seeds: vec![file("lines", text_file)],
            mutation: Mutation::Text,
            load: Load::DataPath,
        },
        Target {
            name: "data-parquet",
            file: "data.parquet",
            seeds: vec![
                file("alpaca", formats.join("alpaca.parquet")),
                file("sharegpt", formats.join("sharegpt.parquet")),
            ],
            mutation: Mutation::Binary,
            load: Load::DataPath,
        },
        Target {
            name: "data-arrow",
            file: "data.arrow",
            seeds: vec![
                file("stream", arrow_stream.clone()),
                file(
                    "sharegpt-stream",
                    formats.join("sharegpt_saved/data-00000-of-00001.arrow"),
                ),
                Seed {
                    name: "file-format".into(),
                    bytes: arrow_file_format(&arrow_stream),
                    companion: None,
                    gguf: None,
                    names: Vec::new(),
                },
            ],
            mutation: Mutation::Binary,
            load: Load::DataPath,
        },
        Target {
            name: "data-saved-state",
            file: "state.json",
            seeds: vec![Seed::beside(
                "alpaca_saved",
                &formats.join("alpaca_saved"),
                "state.json",
            )],
            mutation: Mutation::Json(&DATA_DICT),
            load: Load::DataPath,
        },
        Target {
            name: "data-registry",
            file: "dataset_info.json",
            seeds: vec![
                registry("formats", &formats),
                Seed {
                    bytes: std::fs::read(shipped.join("dataset_info.json")).unwrap(),
                    ..registry("shipped", &shipped)
                },
                Seed {
                    bytes: std::fs::read(malformed.join("dataset_info.json")).unwrap(),
                    ..registry("malformed", &malformed)
                },
            ],
            mutation: Mutation::Json(&DATA_DICT),
            load: Load::DataName,
        },
        Target {
            name: "imatrix-gguf",
            file: "m.imatrix.gguf",
            seeds: vec![
                Seed::gguf(
                    "llama-imatrix-tiny",
                    std::fs::read(imatrix.join("tiny.imatrix.gguf")).unwrap(),
                    scratch,
                ),
                Seed::gguf(
                    "experts",
                    experts_imatrix()
                        .to_gguf_writer()
                        .unwrap()
                        .to_bytes()
                        .unwrap(),
                    scratch,
                ),
            ],
            mutation: Mutation::Gguf,
            load: Load::Imatrix,
        },
        Target {
            name: "imatrix-dat",
            file: "m.imatrix.dat",
            seeds: vec![
                file("llama-imatrix-tiny", imatrix.join("tiny.imatrix.dat")),
                Seed {
                    name: "experts".into(),
                    bytes: experts_imatrix().to_legacy_bytes().unwrap(),
                    companion: None,
                    gguf: None,
                    names: Vec::new(),
                },
            ],
            mutation: Mutation::Binary,
            load: Load::Imatrix,
        },
    ]
}

/// An importance matrix with a stacked-experts entry (two matrices, one never routed to).
fn experts_imatrix() -> ImatrixData {
    let mut d = ImatrixData {
        chunk_count: 2,
        chunk_size: 64,
        datasets: vec!["a.txt".into(), "b.txt".into()],
        has_metadata: true,
        ..Default::default()
    };
    d.entries.insert(
        "blk.0.ffn_down_exps.weight".into(),
        ImatrixEntry {
            in_sum2: vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0],
            counts: vec![128.0, 0.0],
        },
    );
    d.entries.insert(
        "blk.1.ffn_down_exps.weight".into(),
        ImatrixEntry {
            in_sum2: vec![5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 2.0, 3.0],
            counts: vec![64.0, 64.0],
        },
    );
    d
}

// ---- one input -----------------------------------------------------------------------------------

/// The mutated input number `index` of `target`.
pub fn mutant(target: &Target, seed: u64, index: u64) -> (Rng, &Seed, Mutant) {
    let name_hash = target.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng::new(seed ^ name_hash ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let s = mutate::pick(&mut rng, &target.seeds);
    let m = match target.mutation {
        Mutation::Gguf => {
            let (fields, header_end, parsed) = s.gguf.as_ref().expect("a GGUF seed");
            match mutate::below(&mut rng, 10) {
                0..=3 => mutate_formats::gguf_field(&mut rng, &s.bytes, fields),
                4..=6 => mutate_formats::gguf_semantic(&mut rng, parsed),
                _ => mutate::bytes(&mut rng, &s.bytes, *header_end),
            }
        }
        Mutation::Safetensors(names) => mutate_formats::safetensors(&mut rng, &s.bytes, names),
        Mutation::Json(dict) => mutate::json_doc(&mut rng, &s.bytes, dict),
        Mutation::JsonLines(dict) => mutate::json_lines(&mut rng, &s.bytes, dict),
        Mutation::Text => mutate::text(&mut rng, &s.bytes),
        Mutation::Binary => {
            let tail = s.bytes.len().saturating_sub(512);
            if mutate::chance(&mut rng, 0.5) {
                let m = mutate::bytes(&mut rng, &s.bytes[tail..], 0);
                let mut b = s.bytes[..tail].to_vec();
                b.extend_from_slice(&m.bytes);
                Mutant {
                    bytes: b,
                    what: format!("in the last 512 bytes: {}", m.what),
                }
            } else {
                mutate::bytes(&mut rng, &s.bytes, 0)
            }
        }
    };
    (rng, s, m)
}

/// Copy a folder's files (and folders) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A short forward pass (with `adapter`) of a model that loaded; its errors are fine.
pub fn forward(m: &Model, adapter: Option<&Adapter>) {
    let vocab = m.config().vocab_size.max(1) as u32;
    let ids: Vec<u32> = [0u32, 1, 2].iter().map(|i| i % vocab).collect();
    let Ok(ids) = Tensor::new(ids.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)) else {
        return;
    };
    let pass = Pass {
        adapter,
        ..Default::default()
    };
    let _ = m.llama.forward_with(&ids, None, None, Logits::All, pass);
}

/// Load the input in `dir` as `load` says; `choice` picks options (quantized, on_error, a name).
pub fn load(
    ctx: &Context,
    load: Load,
    dir: &Path,
    file: &Path,
    choice: u64,
    names: &[String],
) -> tunelab::Result<()> {
    match load {
        Load::GgufReader => {
            let r = GgufReader::open(file)?;
            for t in &r.tensors {
                r.tensor_bytes(t)?;
            }
        }
        Load::GgufModel | Load::HfFolder => {
            let opts = model::LoadOptions {
                quantized: choice % 2 == 1,
                ..Default::default()
            };
            let what = if matches!(load, Load::GgufModel) {
                file
            } else {
                dir
            };
            let m = model::load(what.to_str().unwrap(), &opts)?;
            forward(&m, None);
        }
        Load::Peft => {
            let adapter = peft::load(dir, &ctx.base.llama)?;
            forward(&ctx.base, Some(&adapter));
        }
        Load::DataPath | Load::DataName => {
            // A path is loaded from beside the case folder (a save_to_disk folder has a
            // dataset_info.json of its own, which is not a registry); a name from inside it.
            let registry_dir = match load {
                Load::DataName => dir,
                _ => dir.parent().expect("the scratch folder"),
            };
            let mut opts = data::LoadOptions {
                dir: registry_dir.to_path_buf(),
                on_error: if choice.is_multiple_of(2) {
                    OnError::Skip
                } else {
                    OnError::Fail
                },
                ..Default::default()
            };
            if file.extension().is_some_and(|e| e == "txt") {
                opts.columns = Some(Columns {
                    prompt: Some("text".into()),
                    response: Some("text".into()),
                    ..Default::default()
                });
            }
            let what = match load {
                Load::DataName => names[(choice / 2) as usize % names.len()].clone(),
                _ if file.ends_with("state.json") => dir.display().to_string(),
                _ => file.display().to_string(),
            };
            data::load(&what, &opts, &CancelToken::new())?;
        }
        Load::Imatrix => {
            let d = ImatrixData::load(file)?;
            for name in d.entries.keys() {
                d.importance(name);
            }
            tunelab::quant::imatrix_stats::imatrix_stats(&d);
            let _ = d.quantize_keys("m.imatrix");
            // Writing it back may refuse (a name too long for GGUF) but must not panic.
            let _ = d.to_gguf_writer().and_then(|w| w.to_bytes());
            let _ = d.to_legacy_bytes();
        }
    }
    Ok(())
}
