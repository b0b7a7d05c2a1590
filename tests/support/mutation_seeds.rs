//! The valid inputs tests/mutation.rs mutates, made by the project itself (the PEFT-fixture
//! Llama exported as GGUF, saved by `save_hf`, given a SentencePiece vocabulary; an Arrow file
//! written from a fixture stream), and the dictionaries its JSON mutations draw keys and values
//! from: each format's own field names, so a mutation reaches past the parser into the checks.

use std::path::{Path, PathBuf};

use tunelab::gguf::export::{export_gguf, ExportOptions, ExportType};
use tunelab::gguf::{GgufReader, GgufWriter, Value};
use tunelab::model::{self, Model};

use crate::mutate::Dictionary;
use crate::mutate_formats::GgufSeed;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

// ---- dictionaries for JSON mutations -------------------------------------------------------------

pub static DATA_DICT: Dictionary = Dictionary {
    keys: &[
        "instruction",
        "input",
        "output",
        "system",
        "history",
        "conversations",
        "messages",
        "from",
        "value",
        "role",
        "content",
        "tools",
        "text",
        "file_name",
        "formatting",
        "columns",
        "tags",
        "ranking",
        "split",
        "num_samples",
        "hf_hub_url",
        "prompt",
        "query",
        "response",
        "role_tag",
        "content_tag",
        "user_tag",
        "assistant_tag",
        "system_tag",
        "function_tag",
        "observation_tag",
        "_data_files",
        "filename",
        "images",
    ],
    strings: &[
        "human",
        "gpt",
        "user",
        "assistant",
        "system",
        "function_call",
        "observation",
        "tool",
        "alpaca",
        "sharegpt",
        "openai",
        "train",
        "test",
        "alpaca.json",
        "alpaca.jsonl",
        "alpaca.csv",
        "alpaca.parquet",
        "alpaca_saved",
        "sharegpt.json",
        "data-00000-of-00001.arrow",
        "..",
        "",
        "conversations",
        "messages",
        "instruction",
        "output",
    ],
};

pub static HF_CONFIG_DICT: Dictionary = Dictionary {
    keys: &[
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "rope_type",
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
        "max_position_embeddings",
        "tie_word_embeddings",
        "attention_bias",
        "bos_token_id",
        "eos_token_id",
        "torch_dtype",
    ],
    strings: &[
        "llama", "qwen2", "mistral", "llama3", "gpt2", "bfloat16", "float32", "default",
    ],
};

pub static PEFT_CONFIG_DICT: Dictionary = Dictionary {
    keys: &[
        "peft_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "use_rslora",
        "use_dora",
        "base_model_name_or_path",
        "task_type",
        "bias",
        "modules_to_save",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "fan_in_fan_out",
    ],
    strings: &[
        "LORA",
        "CAUSAL_LM",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "all-linear",
        "lm_head",
        "none",
        "PREFIX_TUNING",
    ],
};

pub static HF_TENSOR_NAMES: &[&str] = &[
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.q_proj.bias",
    "model.layers.1.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.99.mlp.up_proj.weight",
    "__metadata__",
];

pub static LORA_TENSOR_NAMES: &[&str] = &[
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
    "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight",
    "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight",
    "base_model.model.model.layers.9.self_attn.v_proj.lora_A.weight",
    "base_model.model.model.layers.99999999999.self_attn.v_proj.lora_B.weight",
    "base_model.model.lm_head.lora_A.weight",
    "__metadata__",
];

// ---- seed files ------------------------------------------------------------------------------

/// A GGUF with every value type (nested arrays too) and three tensor types, aligned to 64.
pub fn every_value_gguf() -> Vec<u8> {
    use tunelab::gguf::types::type_id;
    use tunelab::gguf::GgmlType;
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("general.alignment", Value::U32(64));
    for (k, v) in [
        ("u8", Value::U8(200)),
        ("i16", Value::I16(-30000)),
        ("u32", Value::U32(4_000_000_000)),
        ("f32", Value::F32(-1.5e-7)),
        ("bool", Value::Bool(true)),
        ("string", Value::String("héllo 世界".into())),
        ("u64", Value::U64(u64::MAX)),
        ("f64", Value::F64(std::f64::consts::PI)),
        ("strings", Value::strings(["a", "", "ccc"])),
        (
            "nested",
            Value::Array(
                type_id::ARRAY,
                vec![
                    Value::Array(type_id::I32, vec![Value::I32(1), Value::I32(-2)]),
                    Value::Array(type_id::STRING, vec![Value::String("x".into())]),
                ],
            ),
        ),
    ] {
        w.set(format!("test.{k}"), v);
    }
    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let ty = |n| GgmlType::from_name(n).unwrap();
    w.add_tensor("a.weight", &[3, 2], ty("F32"), f32s).unwrap();
    w.add_tensor("b.weight", &[64, 3], ty("Q8_0"), vec![7u8; 6 * 34])
        .unwrap();
    w.add_tensor("c.weight", &[256], ty("Q4_K"), vec![1u8; 144])
        .unwrap();
    w.to_bytes().unwrap()
}

/// `base` exported as a llama GGUF of type `ty`.
pub fn exported(base: &Model, ty: &str, scratch: &Path) -> Vec<u8> {
    let path = scratch.join(format!("base-{ty}.gguf"));
    let opts = ExportOptions {
        target: ExportType::named(ty).unwrap(),
    };
    export_gguf(base, None, &path, &opts).unwrap();
    std::fs::read(&path).unwrap()
}

/// The same file with `general.alignment` written out (so its value is a field to mutate).
pub fn with_alignment(gguf: &[u8], scratch: &Path) -> Vec<u8> {
    let path = scratch.join("aligned.gguf");
    std::fs::write(&path, gguf).unwrap();
    let seed = GgufSeed::read(&path);
    let mut w = GgufWriter::new();
    w.set("general.alignment", Value::U32(32));
    for (k, v) in seed.metadata {
        w.set(k, v);
    }
    for (t, data) in seed.tensors {
        w.add_tensor(&t.name, &t.ne, t.ggml_type, data).unwrap();
    }
    w.to_bytes().unwrap()
}

/// The same model with a SentencePiece vocabulary (llama.cpp's `llama-spm` test vocabulary cut to
/// the model's 1024 tokens) instead of its byte-level BPE, so the SentencePiece builder is fed too.
pub fn with_spm_vocab(gguf: &[u8], scratch: &Path) -> Vec<u8> {
    let path = scratch.join("spm-base.gguf");
    std::fs::write(&path, gguf).unwrap();
    let seed = GgufSeed::read(&path);
    let spm = GgufReader::open(fixture("tokenizer/llamacpp/ggml-vocab-llama-spm.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in seed.metadata {
        if !k.starts_with("tokenizer.") {
            w.set(k, v);
        }
    }
    for (k, v) in &spm.metadata {
        if let Some(rest) = k.strip_prefix("tokenizer.") {
            let v = match v.clone() {
                Value::Array(ty, mut items) if rest.starts_with("ggml.") => {
                    items.truncate(1024);
                    Value::Array(ty, items)
                }
                other => other,
            };
            w.set(k.clone(), v);
        }
    }
    for (t, data) in seed.tensors {
        w.add_tensor(&t.name, &t.ne, t.ggml_type, data).unwrap();
    }
    let bytes = w.to_bytes().unwrap();
    std::fs::write(&path, &bytes).unwrap();
    model::load(path.to_str().unwrap(), &Default::default()).expect("the SentencePiece seed loads");
    bytes
}

/// The names a registry registers.
pub fn registered(bytes: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

/// The `.arrow` stream of a save_to_disk fixture rewritten in the Arrow IPC file format.
pub fn arrow_file_format(stream: &Path) -> Vec<u8> {
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::fs::File::open(stream).unwrap(), None)
            .unwrap();
    let schema = reader.schema();
    let mut out = Vec::new();
    {
        let mut w = arrow_ipc::writer::FileWriter::try_new(&mut out, &schema).unwrap();
        for batch in reader {
            w.write(&batch.unwrap()).unwrap();
        }
        w.finish().unwrap();
    }
    out
}
