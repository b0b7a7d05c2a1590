//! Checkpoints: `out/checkpoint-<step>/` holds the adapter (PEFT files), the optimizer moments
//! (`optimizer.safetensors`) and `trainer_state.json` (step, loss window, best eval, history),
//! everything a resumed run needs to continue exactly where this one stood. Each checkpoint is
//! built in a temporary folder and renamed into place, so an interruption at any moment leaves
//! the previous checkpoints intact and loadable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use crate::error::{Error, Result};
use crate::lora::{peft, Adapter};
use crate::model::Llama;

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

/// Write a checkpoint.
pub fn save(out: &Path, adapter: &Adapter, optim: &AdamW, state: &TrainerState) -> Result<PathBuf> {
    let dir = dir_for(out, state.global_step);
    crate::fsutil::write_dir_atomic(&dir, true, |tmp| {
        peft::write_files(adapter, tmp)?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (i, (name, _)) in adapter.named_vars().iter().enumerate() {
            tensors.insert(format!("exp_avg.{name}"), optim.m[i].clone());
            tensors.insert(format!("exp_avg_sq.{name}"), optim.v[i].clone());
        }
        let path = tmp.join("optimizer.safetensors");
        candle_core::safetensors::save(&tensors, &path)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
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

/// Read a checkpoint back: the adapter, the optimizer moments (restored into `optim`, which
/// must be built over the adapter's vars) and the trainer state.
pub fn load(
    dir: &Path,
    llama: &Llama,
) -> Result<(Adapter, HashMap<String, Tensor>, usize, TrainerState)> {
    let adapter = peft::load(dir, llama)?;
    let path = dir.join("optimizer.safetensors");
    let moments = candle_core::safetensors::load(&path, &llama.device)
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
    Ok((adapter, moments, steps, state))
}

/// Put saved moments into `optim` (built over `adapter`'s vars, in `named_vars` order).
pub fn restore_moments(
    optim: &mut AdamW,
    adapter: &Adapter,
    moments: &HashMap<String, Tensor>,
    steps: usize,
    dir: &Path,
) -> Result<()> {
    for (i, (name, _)) in adapter.named_vars().iter().enumerate() {
        let get = |key: String| {
            moments.get(&key).cloned().ok_or_else(|| {
                Error::data(
                    dir.join("optimizer.safetensors"),
                    format!("tensor \"{key}\""),
                    "missing; the checkpoint is incomplete, resume from an earlier one",
                )
            })
        };
        optim.m[i] = get(format!("exp_avg.{name}"))?;
        optim.v[i] = get(format!("exp_avg_sq.{name}"))?;
    }
    optim.t = steps;
    Ok(())
}
