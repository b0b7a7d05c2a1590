//! Writing a model as a Hugging Face folder, the files LLaMA-Factory's export writes: `config.json`,
//! `generation_config.json`, `model.safetensors` or shards with `model.safetensors.index.json`,
//! `tokenizer.json`, `tokenizer_config.json` (with the chat template) and an Ollama `Modelfile`;
//! transformers and tunelab load it back. The folder is built under a temporary name and renamed
//! when complete, so a failure leaves nothing behind.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::json;

use super::shards::{plan_shards, shard_names};
use super::Model;
use crate::data::template::Tokens;
use crate::data::template_export::FlatTemplate;
use crate::error::{Error, Result};
use crate::generate::chat::TemplateChoice;

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

/// How [`save_hf`] writes a folder.
#[derive(Debug, Clone)]
pub struct SaveHfOptions {
    /// Largest shard in bytes (transformers' `max_shard_size`; LLaMA-Factory's `export_size`).
    pub shard_size: u64,
    /// Weight dtype; None: f16 stays f16, anything else is written as bf16 (LLaMA-Factory's
    /// export keeps the model's dtype but turns f32 into bf16).
    pub dtype: Option<DType>,
    /// The chat template the Modelfile and `tokenizer_config.json` carry: a built-in name, or
    /// None / `auto` for the model's own (as chat picks it).
    pub template: Option<String>,
    /// Replace a non-empty folder instead of refusing.
    pub overwrite: bool,
}

impl Default for SaveHfOptions {
    fn default() -> Self {
        SaveHfOptions {
            shard_size: 5_000_000_000,
            dtype: None,
            template: None,
            overwrite: false,
        }
    }
}

/// What [`save_hf`] wrote.
#[derive(Debug, Clone)]
pub struct SavedHf {
    /// File names in the folder, weights first.
    pub files: Vec<String>,
    pub shards: usize,
    /// Bytes of weights (the index's `total_size`).
    pub weight_bytes: u64,
    pub dtype: DType,
}

/// Write `model` to the folder `dir` (absent or empty unless `overwrite`), built under a
/// temporary name and renamed when complete.
pub fn save_hf(model: &Model, dir: &Path, opts: &SaveHfOptions) -> Result<SavedHf> {
    let mut saved = None;
    crate::fsutil::write_dir_atomic(dir, opts.overwrite, |tmp| {
        saved = Some(write_files(model, tmp, opts)?);
        Ok(())
    })?;
    saved.ok_or_else(|| Error::msg("save_hf wrote nothing"))
}

/// Write `model`'s folder files into the existing folder `dir` beside what it holds (a full
/// fine-tuning run's folder, with its logs and checkpoints, as LLaMA-Factory leaves it). The
/// files are written completely under a temporary folder first, then each is renamed into place.
pub fn save_hf_into(model: &Model, dir: &Path, opts: &SaveHfOptions) -> Result<SavedHf> {
    let tmp = dir.join(".model.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let saved = match write_files(model, &tmp, opts) {
        Ok(saved) => saved,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    for name in &saved.files {
        let to = dir.join(name);
        std::fs::rename(tmp.join(name), &to).map_err(|e| Error::io(&to, e))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(saved)
}

/// The dtype weights are written in.
fn weight_dtype(model: &Model, opts: &SaveHfOptions) -> DType {
    opts.dtype.unwrap_or(match model.llama.weights_dtype() {
        DType::F16 => DType::F16,
        _ => DType::BF16,
    })
}

fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// The chat template as text formatters (for the Modelfile), and the Jinja template
/// `tokenizer_config.json` carries.
fn chat_template_for(
    model: &Model,
    opts: &SaveHfOptions,
) -> Result<(FlatTemplate, Option<String>)> {
    let tokens = Tokens {
        bos: model.bos_token.clone().unwrap_or_default(),
        eos: model.eos_token.clone().unwrap_or_default(),
        today: String::new(),
    };
    let name = opts.template.as_deref().unwrap_or("auto");
    Ok(match TemplateChoice::resolve(name, model)? {
        TemplateChoice::Jinja(jinja) => {
            let prefix = if model.add_bos {
                tokens.bos.clone()
            } else {
                String::new()
            };
            (
                FlatTemplate::from_jinja(&jinja, &prefix, &tokens)?,
                Some(jinja),
            )
        }
        TemplateChoice::BuiltIn(t) => {
            let flat = t.flat(&tokens);
            let jinja = flat.jinja();
            (flat, Some(jinja))
        }
    })
}

fn write_files(model: &Model, dir: &Path, opts: &SaveHfOptions) -> Result<SavedHf> {
    let write_text = |name: &str, text: &str| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    };
    let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
        write_text(
            name,
            &(serde_json::to_string_pretty(v).unwrap_or_default() + "\n"),
        )
    };
    let dtype = weight_dtype(model, opts);
    let mut config = hf_config(model);
    config["torch_dtype"] = json!(torch_dtype_name(dtype));
    write_json("config.json", &config)?;

    let tensors: Vec<(String, Tensor)> = model
        .llama
        .hf_tensors()?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    let sizes: Vec<u64> = tensors
        .iter()
        .map(|(_, t)| (t.elem_count() * dtype.size_in_bytes()) as u64)
        .collect();
    let plan = plan_shards(&sizes, opts.shard_size);
    let names = shard_names(plan.len());
    let mut weight_map = BTreeMap::new();
    for (shard, file) in plan.iter().zip(&names) {
        let part: HashMap<String, Tensor> = shard.iter().map(|&i| tensors[i].clone()).collect();
        for name in part.keys() {
            weight_map.insert(name.clone(), json!(file));
        }
        let path = dir.join(file);
        candle_core::safetensors::save(&part, &path)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    }
    let weight_bytes: u64 = sizes.iter().sum();
    if names.len() > 1 {
        write_json(
            "model.safetensors.index.json",
            &json!({"metadata": {"total_size": weight_bytes}, "weight_map": weight_map}),
        )?;
    }

    let tok_path = dir.join("tokenizer.json");
    model
        .tokenizer
        .inner()
        .save(&tok_path, false)
        .map_err(|e| Error::msg(format!("{}: {e}", tok_path.display())))?;
    let (flat, jinja) = chat_template_for(model, opts)?;
    let mut tk = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": model.add_bos,
        "padding_side": "left",
    });
    if let Some(t) = &jinja {
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
    )?;
    write_text("Modelfile", &flat.ollama_modelfile())?;

    let mut files = names.clone();
    if names.len() > 1 {
        files.push("model.safetensors.index.json".into());
    }
    files.extend(
        [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "Modelfile",
        ]
        .map(String::from),
    );
    Ok(SavedHf {
        files,
        shards: names.len(),
        weight_bytes,
        dtype,
    })
}
