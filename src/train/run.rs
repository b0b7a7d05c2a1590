//! The result of a training run: where it lives, the adapter, the curves and how it ended.

use std::path::PathBuf;

use crate::lora::Adapter;

/// Why a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// Every planned step ran.
    Finished,
    /// `on_log` returned false.
    StoppedByCallback,
    /// The eval loss stopped improving (`early_stopping_patience`).
    EarlyStopped,
}

/// A finished (or stopped) run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The run folder: trainer_log.jsonl, training_args.json, checkpoints, final adapter.
    pub out: PathBuf,
    /// The trained adapter (LoRA runs).
    pub adapter: Option<Adapter>,
    /// The trained model (full and freeze runs), also written to `out` as a Hugging Face folder.
    pub model: Option<crate::model::Model>,
    pub finetuning_type: super::trainable::FinetuningType,
    /// Bytes of optimizer state at the end (both moments; 8-bit ones with their scales).
    pub optimizer_state_bytes: usize,
    /// Bits per gradient element the last step sent, scales included (None: f32 gradients).
    pub grad_bits: Option<f64>,
    /// Optimizer steps done and planned.
    pub steps: usize,
    pub total_steps: usize,
    /// (step, value) of every logged training loss, evaluation loss and accuracy.
    pub loss: Vec<(usize, f64)>,
    pub eval_loss: Vec<(usize, f64)>,
    pub eval_accuracy: Vec<(usize, f64)>,
    /// Input tokens per second of training time (padding included, as LLaMA-Factory counts).
    pub tokens_per_sec: f64,
    pub total_tokens: usize,
    pub elapsed: f64,
    /// Seconds of the data-parallel all-reduce itself (0 for a single process): each step's
    /// exchange as the last rank to arrive timed it.
    pub allreduce_seconds: f64,
    /// Seconds this rank waited in the exchange for slower ranks (uneven batches).
    pub allreduce_wait_seconds: f64,
    pub stopped: StopReason,
    pub best_step: Option<usize>,
    pub template: String,
    /// Training items (examples, or packed rows) and examples dropped with nothing to learn.
    pub num_items: usize,
    pub dropped: usize,
    /// The verdict on the loss curves at the end (see [`crate::curves::diagnose`]).
    pub diagnosis: crate::curves::Diagnosis,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = |c: &[(usize, f64)]| c.last().map(|(_, v)| format!("{v:.4}"));
        write!(
            f,
            "Run {}: {}/{} steps ({}), template {}, {} items",
            self.out.display(),
            self.steps,
            self.total_steps,
            match self.stopped {
                StopReason::Finished => "finished",
                StopReason::StoppedByCallback => "stopped by on_log",
                StopReason::EarlyStopped => "early-stopped",
            },
            self.template,
            self.num_items
        )?;
        if let (Some(first), Some(last)) = (self.loss.first(), last(&self.loss)) {
            write!(f, ", loss {:.4} → {last}", first.1)?;
        }
        if let Some(e) = last(&self.eval_loss) {
            write!(f, ", eval loss {e}")?;
        }
        if let Some(b) = self.best_step {
            write!(f, " (best at step {b})")?;
        }
        write!(
            f,
            ", {:.0} tokens/s, {:.1} s; verdict: {} ({:.2}); {}",
            self.tokens_per_sec,
            self.elapsed,
            self.diagnosis.verdict.name(),
            self.diagnosis.confidence,
            match &self.adapter {
                Some(a) => format!("adapter: {a}"),
                None => format!(
                    "{} fine-tuning: the model is in the run folder",
                    self.finetuning_type.name()
                ),
            }
        )
    }
}
