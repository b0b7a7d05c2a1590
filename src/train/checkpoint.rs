//! Checkpoints: `out/checkpoint-<step>/` holds the adapter (PEFT files) or a full or freeze run's
//! trained weights (`trained_weights.safetensors`), the optimizer state (`optimizer.safetensors`:
//! moments, f32 or 8-bit, and error feedback's residuals) and `trainer_state.json` (step, loss
//! window, best eval, history),
//! everything a resumed run needs to continue exactly where this one stood. Each checkpoint is
//! built in a temporary folder and renamed into place, so an interruption at any moment leaves
//! the previous checkpoints intact and loadable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::optim::Optimizer;
use super::trainable::{self, FinetuningType, Trainable};
use crate::error::{Error, Result};
use crate::lora::peft;
use crate::model::Model;

/// The trainer's progress, saved with every checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub global_step: usize,
    /// Loss sum and step count since the last log line.
    pub window_loss: f64,
    pub window_steps: usize,
    pub total_tokens: usize,
    /// Training seconds so far (excluding time between an interruption and its resume).
    pub elapsed: f64,
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<usize>,
    pub evals_without_improvement: usize,
    /// (step, loss) of every train log line; (step, eval loss, eval accuracy) of every eval.
    pub loss_history: Vec<(usize, f64)>,
    pub eval_history: Vec<(usize, f64, f64)>,
    /// The settings that fix the data order and schedule; a resume must match them.
    pub fingerprint: serde_json::Value,
}

/// The folder of the checkpoint at `step`.
pub fn dir_for(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// The trained weights of a full or freeze run's checkpoint (f32, Hugging Face names).
pub const TRAINED_WEIGHTS: &str = "trained_weights.safetensors";

/// Write a checkpoint.
pub fn save(
    out: &Path,
    trainable: &Trainable,
    optim: &Optimizer,
    residuals: &[(String, Tensor)],
    state: &TrainerState,
) -> Result<PathBuf> {
    let dir = dir_for(out, state.global_step);
    crate::fsutil::write_dir_atomic(&dir, true, |tmp| {
        let save = |tensors: Vec<(String, Tensor)>, name: &str| -> Result<()> {
            let path = tmp.join(name);
            let map: HashMap<String, Tensor> = tensors.into_iter().collect();
            candle_core::safetensors::save(&map, &path)
                .map_err(|e| Error::msg(format!("{}: {e}", path.display())))
        };
        match trainable {
            Trainable::Lora(adapter) => peft::write_files(adapter, tmp)?,
            Trainable::Weights(w) => save(
                w.vars
                    .iter()
                    .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                    .collect(),
                TRAINED_WEIGHTS,
            )?,
        }
        let mut tensors = optim.state_tensors(&trainable.names())?;
        // Error feedback's residuals are optimizer state too: a resume needs them exactly.
        tensors.extend(
            residuals
                .iter()
                .map(|(n, t)| (format!("grad_residual.{n}"), t.clone())),
        );
        save(tensors, "optimizer.safetensors")?;
        let mut json = serde_json::to_value(state).expect("state serializes");
        json["optimizer_steps"] = optim.t.into();
        let text = serde_json::to_string_pretty(&json).expect("json");
        std::fs::write(tmp.join("trainer_state.json"), text)
            .map_err(|e| Error::io(tmp.join("trainer_state.json"), e))
    })?;
    Ok(dir)
}

/// The newest complete checkpoint in `out`.
pub fn latest(out: &Path) -> Option<(usize, PathBuf)> {
    std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .max_by_key(|(step, _)| *step)
}

/// Read a checkpoint back: what it trained (an adapter, or the weights put into a trainable copy
/// of `base`, selected by `selected`), its optimizer tensors (see [`Optimizer::restore`]), the
/// optimizer's step count and the trainer state.
pub fn load(
    dir: &Path,
    base: &Model,
    finetuning_type: FinetuningType,
    selected: &dyn Fn(&str) -> bool,
) -> Result<(Trainable, HashMap<String, Tensor>, usize, TrainerState)> {
    let device = &base.llama.device;
    let trainable = match finetuning_type {
        FinetuningType::Lora => Trainable::Lora(peft::load(dir, &base.llama)?),
        _ => {
            let path = dir.join(TRAINED_WEIGHTS);
            let values = candle_core::safetensors::load(&path, device).map_err(|e| {
                Error::msg(format!(
                    "{}: {e}; resume from an earlier checkpoint",
                    path.display()
                ))
            })?;
            Trainable::Weights(trainable::weights(base, selected, Some((&values, &path)))?)
        }
    };
    let path = dir.join("optimizer.safetensors");
    let moments = candle_core::safetensors::load(&path, device)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::data(&state_path, format!("line {}", e.line()), e.to_string()))?;
    let steps = json
        .get("optimizer_steps")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as usize;
    let state: TrainerState = serde_json::from_value(json)
        .map_err(|e| Error::data(&state_path, "trainer state", e.to_string()))?;
    Ok((trainable, moments, steps, state))
}

/// Delete `trainer_log.jsonl` and the `checkpoint-N` folders in `out` (`overwrite_output_dir`).
pub fn remove_run(out: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        if name.starts_with("checkpoint-") && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(|err| Error::io(&path, err))?;
        } else if name == "trainer_log.jsonl" {
            std::fs::remove_file(&path).map_err(|err| Error::io(&path, err))?;
        }
    }
    Ok(())
}
