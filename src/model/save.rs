//! Writing a model as a Hugging Face folder: `config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json` (with the chat template) and `generation_config.json`, that transformers
//! and tunelab load back. The folder is written under a temporary name and renamed when complete.
//! (Sharding, dtype choice and the Ollama Modelfile come with the export issue.)

use std::path::Path;

use serde_json::json;

use super::Model;
use crate::error::{Error, Result};

/// The `config.json` of `model`.
pub fn hf_config(model: &Model) -> serde_json::Value {
    let c = model.config();
    let mut v = json!({
        "architectures": [if c.architecture == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": c.architecture,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    if let Some(bos) = c.bos_token_id {
        v["bos_token_id"] = json!(bos);
    }
    if !c.eos_token_ids.is_empty() {
        v["eos_token_id"] = if c.eos_token_ids.len() == 1 {
            json!(c.eos_token_ids[0])
        } else {
            json!(c.eos_token_ids)
        };
    }
    if let Some(s) = &c.rope_scaling {
        v["rope_scaling"] = json!({
            "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    v
}

/// Write `model` to the folder `dir` (which must not exist or be empty).
pub fn save_hf(model: &Model, dir: &Path) -> Result<()> {
    crate::fsutil::write_dir_atomic(dir, false, |tmp| write_files(model, tmp))
}

fn write_files(model: &Model, dir: &Path) -> Result<()> {
    let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(
            &path,
            serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
        )
        .map_err(|e| Error::io(&path, e))
    };
    write_json("config.json", &hf_config(model))?;
    let tensors = model.llama.hf_tensors()?;
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect(), &path)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let tok_path = dir.join("tokenizer.json");
    model
        .tokenizer
        .inner()
        .save(&tok_path, false)
        .map_err(|e| Error::msg(format!("{}: {e}", tok_path.display())))?;
    let mut tk =
        json!({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": model.add_bos});
    if let Some(t) = &model.chat_template {
        tk["chat_template"] = json!(t);
    }
    if let Some(t) = &model.bos_token {
        tk["bos_token"] = json!(t);
    }
    if let Some(t) = &model.eos_token {
        tk["eos_token"] = json!(t);
    }
    write_json("tokenizer_config.json", &tk)?;
    write_json(
        "generation_config.json",
        &json!({"eos_token_id": model.stop_ids, "bos_token_id": model.config().bos_token_id}),
    )
}
