//! Building a [`Model`] from files: a Hugging Face folder (`config.json`, `model.safetensors` or
//! shards listed in `model.safetensors.index.json`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`) or a GGUF file (metadata, tensors, tokenizer, chat template).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use super::config;
use super::gguf::{unpermute_rows, GgufFile};
use super::linear::{Linear, Weight};
use super::llama::{Block, Llama};
use super::tokenizer::Tokenizer;
use super::{LoadOptions, Model, ModelParts};
use crate::error::{candle_message, Error, Result};

/// Largest JSON side file read (config, tokenizer_config, index).
const MAX_JSON_BYTES: u64 = 64 << 20;

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_JSON_BYTES {
        return Err(Error::data(
            path,
            "file size",
            "too large for a model side file",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::data(
            path,
            format!("line {} column {}", e.line(), e.column()),
            format!("invalid JSON: {e}"),
        )
    })
}

/// A token string from tokenizer_config.json (a string, or `{"content": ...}`).
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The safetensors files of a folder: the shards of the index, or `model.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v = read_json(&index)?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| Error::data(&index, "key \"weight_map\"", "missing or not an object"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if f.contains("..") || Path::new(f).is_absolute() {
                return Err(Error::data(
                    &index,
                    "weight_map",
                    format!("shard \"{f}\" must be a file inside the folder"),
                ));
            }
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::io_hint(dir.join("model.safetensors"), std::io::Error::new(std::io::ErrorKind::NotFound, "no weights"), "a Hugging Face folder holds model.safetensors or shards listed in model.safetensors.index.json"))
}

/// Load a Hugging Face folder.
pub fn load_hf(dir: &Path, opts: &LoadOptions, device: &Device) -> Result<Model> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        Error::io_hint(
            &config_path,
            e,
            "a Hugging Face model folder has config.json",
        )
    })?;
    let mut cfg = config::from_hf_json(&text, &config_path.display().to_string())?;
    let dtype = super::compute_dtype(opts, device);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for file in safetensors_files(dir)? {
        let loaded = candle_core::safetensors::load(&file, device).map_err(|e| {
            Error::data(
                &file,
                "file",
                format!(
                    "not a readable safetensors file ({}); is it complete?",
                    candle_message(&e)
                ),
            )
        })?;
        tensors.extend(loaded);
    }
    let take = |name: &str| -> Result<Tensor> {
        let t = tensors.get(name).ok_or_else(|| {
            Error::data(
                dir,
                format!("tensor \"{name}\""),
                "missing from the safetensors files",
            )
        })?;
        Ok(t.to_dtype(dtype)?)
    };
    let maybe = |name: &str| -> Result<Option<Tensor>> {
        tensors
            .get(name)
            .map(|t| t.to_dtype(dtype))
            .transpose()
            .map_err(Error::from)
    };
    let embed = take("model.embed_tokens.weight")?;
    check_shapes(
        dir,
        &cfg,
        &[("model.embed_tokens.weight".into(), embed.dims())],
    )?;
    // Not preallocated: the layer count comes from the file, and a missing layer stops the loop.
    let mut blocks = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let lin = |name: &str| -> Result<Linear> {
            Ok(Linear::dense(
                take(&format!("{p}.{name}.weight"))?,
                maybe(&format!("{p}.{name}.bias"))?,
            ))
        };
        blocks.push(Block {
            attn_norm: take(&format!("{p}.input_layernorm.weight"))?,
            q: lin("self_attn.q_proj")?,
            k: lin("self_attn.k_proj")?,
            v: lin("self_attn.v_proj")?,
            o: lin("self_attn.o_proj")?,
            mlp_norm: take(&format!("{p}.post_attention_layernorm.weight"))?,
            gate: lin("mlp.gate_proj")?,
            up: lin("mlp.up_proj")?,
            down: lin("mlp.down_proj")?,
        });
    }
    let norm = take("model.norm.weight")?;
    let lm_head = match maybe("lm_head.weight")? {
        Some(w) if !cfg.tie_word_embeddings => Linear::dense(w, None),
        _ => {
            cfg.tie_word_embeddings = true;
            Linear::dense(embed.clone(), None)
        }
    };
    check_shapes(dir, &cfg, &weight_shapes(&embed, &blocks, &norm, &lm_head))?;
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let tk_config = dir.join("tokenizer_config.json");
    let tk = if tk_config.is_file() {
        read_json(&tk_config)?
    } else {
        serde_json::Value::Null
    };
    let chat_template = match &tk["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .or(list.first())
            .and_then(|t| t["template"].as_str().map(str::to_owned)),
        _ => None,
    };
    let mut stop_ids = cfg.eos_token_ids.clone();
    let gen_config = dir.join("generation_config.json");
    if gen_config.is_file() {
        stop_ids.extend(config::token_ids(&Some(
            read_json(&gen_config)?["eos_token_id"].clone(),
        )));
    }
    let eos_token = token_string(tk.get("eos_token"));
    if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_id(t)) {
        stop_ids.push(id);
    }
    stop_ids.sort();
    stop_ids.dedup();
    let llama = Llama::new(cfg, embed, blocks, norm, lm_head, dtype);
    Ok(Model::new(ModelParts {
        llama,
        tokenizer,
        chat_template,
        source: dir.display().to_string(),
        format: "hf",
        quantized: false,
        stop_ids,
        add_bos: tk["add_bos_token"].as_bool().unwrap_or(false),
        bos_token: token_string(tk.get("bos_token")),
        eos_token,
    }))
}

/// Every weight of a loaded model by its Hugging Face name, with its shape.
fn weight_shapes<'a>(
    embed: &'a Tensor,
    blocks: &'a [Block],
    norm: &'a Tensor,
    lm_head: &'a Linear,
) -> Vec<(String, &'a [usize])> {
    let linear = |l: &'a Linear| match &l.weight {
        Weight::Dense(w) => w.dims(),
        Weight::Quantized(_, shape) => shape.dims(),
    };
    let mut out = vec![
        ("model.embed_tokens.weight".to_string(), embed.dims()),
        ("model.norm.weight".to_string(), norm.dims()),
        ("lm_head.weight".to_string(), linear(lm_head)),
    ];
    for (i, b) in blocks.iter().enumerate() {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), b.attn_norm.dims()));
        out.push((
            format!("{p}.post_attention_layernorm.weight"),
            b.mlp_norm.dims(),
        ));
        for t in crate::lora::Target::ALL {
            let (name, l) = (t.path(), b.linear(t));
            out.push((format!("{p}.{name}.weight"), linear(l)));
            if let Some(bias) = &l.bias {
                out.push((format!("{p}.{name}.bias"), bias.dims()));
            }
        }
    }
    out
}

/// The shape the config gives the weight called `name` (Hugging Face names).
fn expected_shape(cfg: &config::LlamaConfig, name: &str) -> Vec<usize> {
    let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let part = name.rsplit('.').nth(1).unwrap_or("");
    let (out, inp) = match part {
        "embed_tokens" | "lm_head" => (v, c),
        "q_proj" => (q, c),
        "k_proj" | "v_proj" => (kv, c),
        "o_proj" => (c, q),
        "gate_proj" | "up_proj" => (f, c),
        "down_proj" => (c, f),
        _ => return vec![c], // the norms
    };
    if name.ends_with(".bias") {
        vec![out]
    } else {
        vec![out, inp]
    }
}

/// Each weight's shape against the config: a file whose tensors disagree with its own config is
/// refused here, naming the tensor, instead of failing (or worse) in the forward pass.
fn check_shapes(
    file: &Path,
    cfg: &config::LlamaConfig,
    shapes: &[(String, &[usize])],
) -> Result<()> {
    for (name, dims) in shapes {
        let expected = expected_shape(cfg, name);
        if *dims != expected.as_slice() {
            return Err(Error::data(
                file,
                format!("tensor \"{name}\""),
                format!("shape {dims:?} does not match the config's {expected:?}"),
            ));
        }
    }
    Ok(())
}

/// Load a GGUF file, dequantized (`opts.quantized == false`) or quantized.
pub fn load_gguf(path: &Path, opts: &LoadOptions, device: &Device) -> Result<Model> {
    let gguf = GgufFile::open(path)?;
    let cfg = gguf.config()?;
    let dense_dtype = if opts.quantized {
        DType::F32
    } else {
        super::compute_dtype(opts, device)
    };
    // Tensors are read and reshaped on the CPU, then moved to the device once.
    let cpu = &Device::Cpu;
    let dense = |name: &str| -> Result<Tensor> {
        Ok(gguf
            .qtensor(name, cpu)?
            .dequantize(cpu)?
            .to_dtype(dense_dtype)?
            .to_device(device)?)
    };
    // A q/k tensor whose shape does not split into the metadata's heads is named with the file.
    let in_file =
        |tensor: &str, e: Error| Error::data(path, format!("tensor \"{tensor}\""), e.to_string());
    let linear = |name: &str, permute_heads: Option<usize>| -> Result<Linear> {
        let weight_name = format!("{name}.weight");
        let mut q = gguf.qtensor(&weight_name, cpu)?;
        if let Some(heads) = permute_heads {
            q = unpermute_rows(&q, heads, cpu).map_err(|e| in_file(&weight_name, e))?;
        }
        let bias_name = format!("{name}.bias");
        let bias = if gguf.has_tensor(&bias_name) {
            let mut b = gguf.qtensor(&bias_name, cpu)?;
            if let Some(heads) = permute_heads {
                b = unpermute_bias(&b, heads, cpu).map_err(|e| in_file(&bias_name, e))?;
            }
            Some(
                b.dequantize(cpu)?
                    .to_dtype(dense_dtype)?
                    .to_device(device)?,
            )
        } else {
            None
        };
        if opts.quantized {
            Linear::quantized(qtensor_on(q, device)?, bias)
        } else {
            Ok(Linear::dense(
                q.dequantize(cpu)?
                    .to_dtype(dense_dtype)?
                    .to_device(device)?,
                bias,
            ))
        }
    };
    let embed = dense("token_embd.weight")?;
    let embed_type = gguf.qtensor("token_embd.weight", cpu)?.dtype();
    // Not preallocated: the layer count comes from the file, and a missing layer stops the loop.
    let mut blocks = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        let p = format!("blk.{i}");
        blocks.push(Block {
            attn_norm: dense(&format!("{p}.attn_norm.weight"))?,
            q: linear(&format!("{p}.attn_q"), Some(cfg.num_attention_heads))?,
            k: linear(&format!("{p}.attn_k"), Some(cfg.num_key_value_heads))?,
            v: linear(&format!("{p}.attn_v"), None)?,
            o: linear(&format!("{p}.attn_output"), None)?,
            mlp_norm: dense(&format!("{p}.ffn_norm.weight"))?,
            gate: linear(&format!("{p}.ffn_gate"), None)?,
            up: linear(&format!("{p}.ffn_up"), None)?,
            down: linear(&format!("{p}.ffn_down"), None)?,
        });
    }
    let norm = dense("output_norm.weight")?;
    let head_name = if gguf.has_tensor("output.weight") {
        "output"
    } else {
        "token_embd"
    };
    let lm_head = if opts.quantized {
        linear(head_name, None)?
    } else if head_name == "token_embd" {
        Linear::dense(embed.clone(), None)
    } else {
        linear(head_name, None)?
    };
    check_shapes(path, &cfg, &weight_shapes(&embed, &blocks, &norm, &lm_head))?;
    // The tokenizer converter wants the parsed content; read the header again (cheap).
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| Error::data(path, "header", candle_message(&e)))?;
    let tokenizer = Tokenizer::from_gguf(&gguf, &content)?;
    let token = |key: &str| gguf.uint(key).and_then(|id| tokenizer.token(id as u32));
    let mut stop_ids = cfg.eos_token_ids.clone();
    for t in [
        "<|im_end|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<|endoftext|>",
    ] {
        if let Some(id) = tokenizer.token_id(t) {
            if gguf.uint("tokenizer.ggml.eos_token_id") == Some(id as u64)
                || t == "<|eot_id|>"
                || t == "<|im_end|>"
            {
                stop_ids.push(id);
            }
        }
    }
    stop_ids.sort();
    stop_ids.dedup();
    let mut llama = Llama::new(cfg, embed, blocks, norm, lm_head, dense_dtype);
    if opts.quantized {
        llama.embed_type = Some(embed_type);
    }
    Ok(Model::new(ModelParts {
        llama,
        chat_template: gguf.string("tokenizer.chat_template"),
        bos_token: token("tokenizer.ggml.bos_token_id"),
        eos_token: token("tokenizer.ggml.eos_token_id"),
        tokenizer,
        source: path.display().to_string(),
        format: "gguf",
        quantized: opts.quantized,
        stop_ids,
        add_bos: matches!(
            gguf.metadata().get("tokenizer.ggml.add_bos_token"),
            Some(gguf_file::Value::Bool(true))
        ),
    }))
}

/// `q`'s blocks, byte for byte, on `device`.
fn qtensor_on(
    q: candle_core::quantized::QTensor,
    device: &Device,
) -> Result<candle_core::quantized::QTensor> {
    if device.is_cpu() {
        return Ok(q);
    }
    let storage = candle_core::quantized::QStorage::from_data(q.data()?, device, q.dtype())?;
    Ok(candle_core::quantized::QTensor::new(
        storage,
        q.shape().clone(),
    )?)
}

/// Undo the q/k permutation on a bias vector (n_head · head_dim).
fn unpermute_bias(
    b: &candle_core::quantized::QTensor,
    n_head: usize,
    device: &Device,
) -> Result<candle_core::quantized::QTensor> {
    let v = b.dequantize(device)?;
    let n = v.dim(0)?;
    let as_matrix = candle_core::quantized::QTensor::quantize(
        &v.reshape((n, 1))?,
        candle_core::quantized::GgmlDType::F32,
    )?;
    let fixed = unpermute_rows(&as_matrix, n_head, device)?;
    let flat = fixed.dequantize(device)?.reshape(n)?;
    Ok(candle_core::quantized::QTensor::quantize(
        &flat,
        candle_core::quantized::GgmlDType::F32,
    )?)
}
