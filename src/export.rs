//! One export step for every format a tuned model leaves tunelab in — the `tunelab export`
//! command, tunelab's counterpart of `llamafactory-cli export`:
//!
//! - `hf`: the adapter merged into the base, written as a Hugging Face folder (sharded
//!   safetensors, config, tokenizer, Ollama `Modelfile`) — [`crate::model::save`];
//! - `gguf`: the merged model as a llama.cpp GGUF of a given type — [`crate::gguf::export`];
//! - `peft`: the adapter alone as a PEFT folder — [`crate::lora::peft`];
//! - `lora-gguf`: the adapter alone as llama.cpp's LoRA adapter GGUF — [`crate::gguf::lora_export`].
//!
//! Every output is written under a temporary name and renamed; an existing output is refused
//! unless `overwrite` is set.

use std::path::Path;

use candle_core::DType;

use crate::error::{Error, Result};
use crate::lora::Adapter;
use crate::model::save::SaveHfOptions;
use crate::model::Model;
use crate::quant::plan::{QuantPlan, Target};

/// What an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Hf,
    Gguf,
    Peft,
    LoraGguf,
}

impl ExportFormat {
    pub const NAMES: &'static str = "hf, gguf, peft or lora-gguf";

    pub fn named(name: &str) -> Result<ExportFormat> {
        Ok(match name {
            "hf" => ExportFormat::Hf,
            "gguf" => ExportFormat::Gguf,
            "peft" => ExportFormat::Peft,
            "lora-gguf" => ExportFormat::LoraGguf,
            other => {
                return Err(Error::msg(format!(
                    "export format {other:?}: choose {}",
                    Self::NAMES
                )))
            }
        })
    }

    /// Whether the format writes the adapter alone (so one is required).
    pub fn adapter_only(self) -> bool {
        matches!(self, ExportFormat::Peft | ExportFormat::LoraGguf)
    }
}

/// The choices of one export.
#[derive(Debug, Clone)]
pub struct ExportJob {
    pub format: ExportFormat,
    /// GGUF only: F32, F16, BF16 or a llama-quantize preset such as Q4_K_M.
    pub gguf_type: String,
    /// Hugging Face folder only: the largest shard in bytes.
    pub shard_size: u64,
    /// Hugging Face folder only: the weights' dtype (None: bf16 unless the model is f16).
    pub dtype: Option<DType>,
    /// Hugging Face folder only: the chat template for the Modelfile and tokenizer_config.json
    /// (None: the adapter's training template, else the model's own).
    pub template: Option<String>,
    /// GGUF only: quantize with this importance matrix (llama-imatrix's .gguf or a .dat).
    pub imatrix: Option<std::path::PathBuf>,
    pub overwrite: bool,
}

impl Default for ExportJob {
    fn default() -> Self {
        ExportJob {
            format: ExportFormat::Hf,
            gguf_type: "F16".into(),
            shard_size: SaveHfOptions::default().shard_size,
            dtype: None,
            template: None,
            imatrix: None,
            overwrite: false,
        }
    }
}

/// Export `model` (with `adapter` merged in, or the adapter alone for `peft` and `lora-gguf`) to
/// `out`; returns a one-line summary of what was written.
pub fn export(
    model: &Model,
    adapter: Option<&Adapter>,
    out: &Path,
    job: &ExportJob,
) -> Result<String> {
    let need_adapter = || {
        adapter.ok_or_else(|| {
            Error::msg("export: this format writes the adapter, so give one (--adapter DIR)")
        })
    };
    match job.format {
        ExportFormat::Hf => {
            let model = &crate::lora::merge::merged_or_base(model, adapter)?;
            let opts = SaveHfOptions {
                shard_size: job.shard_size,
                dtype: job.dtype,
                template: job
                    .template
                    .clone()
                    .or_else(|| adapter.and_then(|a| a.template.clone())),
                overwrite: job.overwrite,
            };
            let saved = crate::model::save::save_hf(model, out, &opts)?;
            Ok(format!(
                "{}: Hugging Face folder, {} shard(s), {:.1} MB of {} weights, {} files",
                out.display(),
                saved.shards,
                saved.weight_bytes as f64 / 1e6,
                crate::model::parity::dtype_name(saved.dtype),
                saved.files.len()
            ))
        }
        ExportFormat::Gguf => {
            crate::fsutil::refuse_existing_file(out, job.overwrite)?;
            let mut plan = QuantPlan::new(Target::named(&job.gguf_type)?);
            if let Some(file) = &job.imatrix {
                let importance = crate::quant::plan::Importance::load(file, "--imatrix")?;
                plan.importance = Some(std::sync::Arc::new(importance));
            }
            plan.check_needs_imatrix()?;
            let r =
                crate::gguf::export::export_gguf_planned(model, adapter, out, &plan, &mut |_| {})?;
            Ok(format!(
                "{}: GGUF {}{}, {} tensors, {:.1} MB",
                out.display(),
                job.gguf_type,
                if plan.has_imatrix() {
                    " with an importance matrix"
                } else {
                    ""
                },
                r.tensors,
                r.bytes as f64 / 1e6
            ))
        }
        ExportFormat::Peft => {
            let a = need_adapter()?;
            crate::lora::peft::save(a, out, job.overwrite)?;
            Ok(format!("{}: PEFT adapter, {a}", out.display()))
        }
        ExportFormat::LoraGguf => {
            let a = need_adapter()?;
            crate::fsutil::refuse_existing_file(out, job.overwrite)?;
            let r = crate::gguf::lora_export::export_lora_gguf(a, model, out)?;
            Ok(format!(
                "{}: llama.cpp LoRA adapter GGUF, {} tensors, {:.1} MB",
                out.display(),
                r.tensors,
                r.bytes as f64 / 1e6
            ))
        }
    }
}
