//! PEFT's adapter folder: `adapter_config.json` (peft_type LORA, r, lora_alpha, lora_dropout,
//! target_modules, use_rslora, base_model_name_or_path, task_type CAUSAL_LM) and
//! `adapter_model.safetensors` with tensors named
//! `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (r, in) / `lora_B.weight`
//! (out, r), f32. Written atomically (a temporary folder renamed into place).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Var};
use serde_json::json;

use super::adapter::{Adapter, LoraPair};
use super::config::{LoraConfig, Target};
use crate::error::{candle_message, Error, Result};
use crate::model::Llama;

/// Layer numbers in tensor names are below this (more than any model has): the adapter's
/// layer table is sized by the largest, which comes from the file.
const MAX_LAYERS: usize = 1 << 16;

/// The adapter's `adapter_config.json`.
pub fn config_json(adapter: &Adapter) -> serde_json::Value {
    let c = &adapter.config;
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": adapter.base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": c.alpha,
        "lora_dropout": c.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": c.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": c.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": c.rslora,
    })
}

/// Write the two PEFT files into `dir` (which exists), each atomically.
pub fn write_files(adapter: &Adapter, dir: &Path) -> Result<()> {
    let tensors: HashMap<String, candle_core::Tensor> = adapter
        .named_vars()
        .into_iter()
        .map(|(name, v)| Ok((name, v.as_tensor().to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    let path = dir.join("adapter_model.safetensors");
    let tmp = crate::fsutil::temp_name(&path);
    candle_core::safetensors::save(&tensors, &tmp)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    let text = serde_json::to_string_pretty(&config_json(adapter)).expect("json");
    crate::fsutil::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}

/// Save `adapter` as a PEFT folder `dir`, which must be absent or empty unless `overwrite`.
pub fn save(adapter: &Adapter, dir: &Path, overwrite: bool) -> Result<()> {
    crate::fsutil::write_dir_atomic(dir, overwrite, |tmp| write_files(adapter, tmp))
}

/// Read a PEFT folder written by tunelab or PEFT, for `llama` (shapes are checked).
pub fn load(dir: &Path, llama: &Llama) -> Result<Adapter> {
    let adapter = read(dir, &llama.device)?;
    adapter.check_fits(llama, dir)?;
    Ok(adapter)
}

/// [`load`] plus the template the adapter was trained with ([`training_template`]): an adapter
/// as a user hands it over, ready to chat with, serve or export.
pub fn load_trained(dir: &Path, llama: &Llama) -> Result<Adapter> {
    let mut adapter = load(dir, llama)?;
    adapter.template = training_template(dir);
    Ok(adapter)
}

/// [`read`] plus the template the adapter was trained with ([`training_template`]).
pub fn read_trained(dir: &Path, device: &candle_core::Device) -> Result<Adapter> {
    let mut adapter = read(dir, device)?;
    adapter.template = training_template(dir);
    Ok(adapter)
}

/// Read a PEFT folder onto `device`; [`Adapter::check_fits`] checks it against a model.
pub fn read(dir: &Path, device: &candle_core::Device) -> Result<Adapter> {
    let config_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        Error::io_hint(
            &config_path,
            e,
            "an adapter folder holds adapter_config.json and adapter_model.safetensors: a run's out folder, or one of its checkpoint-N folders",
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::data(&config_path, format!("line {}", e.line()), e.to_string()))?;
    let bad = |key: &str, what: &str| {
        Error::data(&config_path, format!("key \"{key}\""), what.to_string())
    };
    if v.get("peft_type").and_then(|p| p.as_str()) != Some("LORA") {
        return Err(bad("peft_type", "only LORA adapters are supported"));
    }
    let rank = v
        .get("r")
        .and_then(|r| r.as_u64())
        .ok_or_else(|| bad("r", "missing or not a positive integer"))? as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(|a| a.as_f64())
        .ok_or_else(|| bad("lora_alpha", "missing or not a number"))?;
    let dropout = v
        .get("lora_dropout")
        .and_then(|d| d.as_f64())
        .unwrap_or(0.0);
    let rslora = v
        .get("use_rslora")
        .and_then(|d| d.as_bool())
        .unwrap_or(false);
    if v.get("use_dora").and_then(|d| d.as_bool()).unwrap_or(false) {
        return Err(bad("use_dora", "DoRA adapters are not supported"));
    }
    let base_model = v
        .get("base_model_name_or_path")
        .and_then(|b| b.as_str())
        .unwrap_or("")
        .to_string();

    let weights_path = dir.join("adapter_model.safetensors");
    if !weights_path.is_file() {
        return Err(Error::msg(format!(
            "{}: missing (PEFT's .bin adapters are not read; save with safetensors)",
            weights_path.display()
        )));
    }
    let tensors = candle_core::safetensors::load(&weights_path, device).map_err(|e| {
        Error::msg(format!(
            "{}: {}",
            weights_path.display(),
            candle_message(&e)
        ))
    })?;
    let mut targets = Vec::new();
    let mut a_parts: HashMap<(usize, Target), candle_core::Tensor> = HashMap::new();
    let mut b_parts: HashMap<(usize, Target), candle_core::Tensor> = HashMap::new();
    for (name, tensor) in tensors {
        let parsed = parse_name(&name).filter(|(layer, ..)| *layer < MAX_LAYERS);
        let (layer, target, is_a) = parsed.ok_or_else(|| {
            Error::data(
                &weights_path,
                format!("tensor \"{name}\""),
                format!("not a LoRA factor of a Llama block projection (expected base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight and the like, N below {MAX_LAYERS})"),
            )
        })?;
        let expected_rank = if is_a {
            tensor.dims().first()
        } else {
            tensor.dims().get(1)
        };
        if tensor.rank() != 2 || expected_rank != Some(&rank) {
            return Err(Error::data(
                &weights_path,
                format!("tensor \"{name}\""),
                format!(
                    "shape {:?} does not have rank r = {rank} (adapter_config.json)",
                    tensor.dims()
                ),
            ));
        }
        if !targets.contains(&target) {
            targets.push(target);
        }
        let tensor = tensor.to_dtype(DType::F32)?;
        if is_a {
            a_parts.insert((layer, target), tensor);
        } else {
            b_parts.insert((layer, target), tensor);
        }
    }
    let num_layers = a_parts.keys().map(|(l, _)| l + 1).max().unwrap_or(0);
    let mut layers: Vec<[Option<LoraPair>; 7]> = vec![Default::default(); num_layers];
    for ((layer, target), a) in a_parts {
        let b = b_parts.remove(&(layer, target)).ok_or_else(|| {
            Error::data(
                &weights_path,
                format!("block {layer} {}", target.name()),
                "lora_A without its lora_B",
            )
        })?;
        layers[layer][target.index()] = Some(LoraPair {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
        });
    }
    if let Some(((layer, target), _)) = b_parts.into_iter().next() {
        return Err(Error::data(
            &weights_path,
            format!("block {layer} {}", target.name()),
            "lora_B without its lora_A",
        ));
    }
    targets.sort();
    let config = LoraConfig {
        rank,
        alpha,
        dropout,
        targets,
        rslora,
    };
    Ok(Adapter {
        requantized_base: None,
        config,
        layers,
        base_model,
        template: None,
    })
}

/// The template a tunelab run trained with: `training_args.json` in `dir` (a run folder) or its
/// parent (a checkpoint folder).
pub fn training_template(dir: &Path) -> Option<String> {
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .find_map(|d| {
            let text = std::fs::read_to_string(d.join("training_args.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v.get("template")?
                .as_str()
                .filter(|t| !t.is_empty())
                .map(String::from)
        })
}

/// `base_model.model.model.layers.3.mlp.up_proj.lora_B.weight` → (3, Up, false).
fn parse_name(name: &str) -> Option<(usize, Target, bool)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let rest = rest.strip_suffix(".weight").unwrap_or(rest);
    let (path, factor) = rest.rsplit_once('.')?;
    let is_a = match factor {
        "lora_A" => true,
        "lora_B" => false,
        _ => return None,
    };
    let target = Target::ALL.into_iter().find(|t| t.path() == path)?;
    Some((layer, target, is_a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        assert_eq!(
            parse_name("base_model.model.model.layers.12.self_attn.v_proj.lora_A.weight"),
            Some((12, Target::V, true))
        );
        assert_eq!(
            parse_name("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"),
            Some((0, Target::Down, false))
        );
        assert_eq!(parse_name("base_model.model.lm_head.lora_A.weight"), None);
    }
}
