//! From a read config to what tunelab will do: every key checked against the table in
//! [`super::keys`] (unknown → "did you mean", refused → what to use instead, no effect → a
//! note), then the keys a command reads turned into typed settings with LLaMA-Factory's
//! command-line defaults — which are Hugging Face's `TrainingArguments` defaults, not the Web
//! UI's: batch 8, accumulation 1, linear schedule, logging and saving every 500 steps, no plot.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::file::{ConfigFile, Entry};
use super::keys::{self, Command, Role};
use crate::error::{Error, Result};
use crate::export::{ExportFormat, ExportJob};
use crate::generate::GenerateOptions;
use crate::lora::LoraConfig;
use crate::train::config::Optim;
use crate::train::trainable::FinetuningType;
use crate::train::{Schedule, SftConfig};

/// The model part every command shares.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// What training trains (LoRA by default; full and freeze train the weights themselves).
    pub finetuning_type: FinetuningType,
    /// A Hugging Face folder, a GGUF file, or `tiny`.
    pub path: String,
    /// Adapters to apply (PEFT folders or tunelab runs), in order.
    pub adapters: Vec<PathBuf>,
    /// The chat template; None: the adapter's training template, else the model's own.
    pub template: Option<String>,
}

/// `tunelab train CONFIG`.
#[derive(Debug, Clone)]
pub struct TrainPlan {
    pub model: ModelSpec,
    pub datasets: Vec<String>,
    pub eval_datasets: Vec<String>,
    pub dataset_dir: PathBuf,
    /// Per dataset, as LLaMA-Factory applies it.
    pub max_samples: Option<usize>,
    /// The run; `out` is always set (output_dir).
    pub sft: SftConfig,
    pub overwrite_output_dir: bool,
    /// `bf16: true` with LoRA: the base computes in bf16 (on a CPU, as PyTorch's bf16 autocast).
    pub bf16: bool,
}

/// `tunelab chat CONFIG`.
#[derive(Debug, Clone)]
pub struct ChatPlan {
    pub model: ModelSpec,
    pub generate: GenerateOptions,
    pub system: String,
}

/// `tunelab export CONFIG`.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    pub model: ModelSpec,
    pub out: PathBuf,
    pub job: ExportJob,
}

/// Check every key of `file` for `command`: the lines to print (keys with no effect, keys read
/// only by other commands), or the first error.
pub fn check(file: &ConfigFile, command: Command) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut elsewhere = Vec::new();
    for e in &file.entries {
        match keys::role(&e.key) {
            None => {
                let hint = keys::did_you_mean(&e.key)
                    .map(|k| format!("; did you mean \"{k}\"?"))
                    .unwrap_or_else(|| {
                        "; remove it, or see docs/llamafactory-configs.md for the keys tunelab reads"
                            .into()
                    });
                return Err(file.error(e, format!("not a LLaMA-Factory key tunelab knows{hint}")));
            }
            Some(Role::NoEffect(why)) => {
                notes.push(format!("{}: no effect in tunelab: {why}", e.key));
            }
            Some(Role::Refused { instead, harmless }) => {
                if !harmless.contains(&keys::canonical(&e.value).as_str()) {
                    return Err(
                        file.error(e, format!("{} is not supported: {instead}", show(&e.value)))
                    );
                }
            }
            Some(Role::Used(commands)) => {
                if !commands.contains(&command) {
                    elsewhere.push(e.key.clone());
                }
            }
        }
    }
    if !elsewhere.is_empty() {
        notes.push(format!(
            "not used by `tunelab {}`: {}",
            command.name(),
            elsewhere.join(", ")
        ));
    }
    Ok(notes)
}

/// A value as written in a config, for messages.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// Typed reads of a config's keys; a wrong type names the file, line and key.
struct Reader<'a> {
    file: &'a ConfigFile,
}

impl<'a> Reader<'a> {
    fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.file.get(key).filter(|e| !e.value.is_null())
    }

    fn number(&self, key: &str) -> Result<Option<f64>> {
        let Some(e) = self.entry(key) else {
            return Ok(None);
        };
        // PyYAML reads `1e-4` (no dot) as text and transformers converts it; so do we.
        let v = match &e.value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match v {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(self
                .file
                .error(e, format!("expected a number, got {}", show(&e.value)))),
        }
    }

    fn count(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.number(key)? else {
            return Ok(None);
        };
        if v < 0.0 || v.fract() != 0.0 {
            let e = self.entry(key).expect("read above");
            return Err(self.file.error(
                e,
                format!("expected a whole number ≥ 0, got {}", show(&e.value)),
            ));
        }
        Ok(Some(v as usize))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        let Some(e) = self.entry(key) else {
            return Ok(None);
        };
        match &e.value {
            Value::Bool(b) => Ok(Some(*b)),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            other => Err(self
                .file
                .error(e, format!("expected true or false, got {}", show(other)))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        let Some(e) = self.entry(key) else {
            return Ok(None);
        };
        match &e.value {
            Value::String(s) => Ok(Some(s.trim().to_string())),
            Value::Number(n) => Ok(Some(n.to_string())),
            other => Err(self
                .file
                .error(e, format!("expected text, got {}", show(other)))),
        }
    }

    /// A comma-separated string or a YAML list of names.
    fn list(&self, key: &str) -> Result<Vec<String>> {
        let Some(e) = self.entry(key) else {
            return Ok(Vec::new());
        };
        let items: Vec<String> = match &e.value {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self
                        .file
                        .error(e, format!("expected names, got {}", show(other)))),
                })
                .collect::<Result<_>>()?,
            _ => vec![self.string(key)?.unwrap_or_default()],
        };
        Ok(items
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect())
    }

    fn error(&self, key: &str, message: impl Into<String>) -> Error {
        match self.entry(key).or_else(|| self.file.get(key)) {
            Some(e) => self.file.error(e, message),
            None => Error::data(&self.file.path, format!("key \"{key}\""), message),
        }
    }
}

/// `model_name_or_path`, `adapter_name_or_path`, `template`, `finetuning_type`.
fn model_spec(r: &Reader) -> Result<ModelSpec> {
    let Some(path) = r.string("model_name_or_path")? else {
        return Err(r.error(
            "model_name_or_path",
            "missing: set it to a local Hugging Face folder or a .gguf file",
        ));
    };
    if path != "tiny" && !Path::new(&path).exists() {
        let hub_id =
            path.split('/').count() == 2 && !path.starts_with('.') && !path.ends_with(".gguf");
        let message = if hub_id {
            format!(
                "\"{path}\" looks like a Hugging Face Hub id; tunelab does not download models: download it first (`huggingface-cli download {path} --local-dir models/{}`) and set model_name_or_path to that folder",
                path.rsplit('/').next().unwrap_or(&path)
            )
        } else {
            format!(
                "\"{path}\": no such file or folder; give a Hugging Face folder or a .gguf file"
            )
        };
        return Err(r.error("model_name_or_path", message));
    }
    let finetuning_type = match r.string("finetuning_type")?.as_deref() {
        None | Some("lora") => FinetuningType::Lora,
        Some("full") => FinetuningType::Full,
        Some("freeze") => FinetuningType::Freeze,
        Some(other) => {
            return Err(r.error(
                "finetuning_type",
                format!("\"{other}\": expected lora, full or freeze"),
            ))
        }
    };
    Ok(ModelSpec {
        finetuning_type,
        path,
        adapters: r
            .list("adapter_name_or_path")?
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        template: r.string("template")?.filter(|t| !t.is_empty()),
    })
}

impl TrainPlan {
    /// The plan of `tunelab train` for a checked config.
    pub fn new(file: &ConfigFile) -> Result<TrainPlan> {
        let r = Reader { file };
        match r.string("stage")?.as_deref() {
            None | Some("sft") => {}
            Some(other) => {
                return Err(r.error(
                    "stage",
                    format!("stage \"{other}\" is not built; tunelab trains stage: sft"),
                ))
            }
        }
        if r.bool("do_train")? == Some(false) {
            return Err(r.error("do_train", "false leaves nothing to do; set do_train: true"));
        }
        let model = model_spec(&r)?;
        if !model.adapters.is_empty() && r.bool("create_new_adapter")? != Some(true) {
            return Err(r.error(
                "adapter_name_or_path",
                "continuing to train an existing adapter is not built; set create_new_adapter: true to merge it into the model and train a new one",
            ));
        }
        let datasets = r.list("dataset")?;
        if datasets.is_empty() {
            return Err(r.error(
                "dataset",
                "missing: name the datasets to train on (e.g. identity,alpaca_en_demo)",
            ));
        }
        let mut lora = LoraConfig {
            targets: LoraConfig::parse_targets(&[r.string("lora_target")?.unwrap_or("all".into())])
                .map_err(|e| r.error("lora_target", e.to_string()))?,
            ..LoraConfig::default()
        };
        if let Some(rank) = r.count("lora_rank")? {
            lora.rank = rank;
        }
        lora.alpha = r.number("lora_alpha")?.unwrap_or(2.0 * lora.rank as f64);
        lora.dropout = r.number("lora_dropout")?.unwrap_or(0.0);
        lora.rslora = r.bool("use_rslora")?.unwrap_or(false);
        let d = SftConfig::default();
        let mut sft = SftConfig {
            template: model.template.clone().unwrap_or_default(),
            learning_rate: r.number("learning_rate")?.unwrap_or(5e-5),
            num_train_epochs: r.number("num_train_epochs")?.unwrap_or(3.0),
            // transformers: max_steps ≤ 0 means "use the epochs".
            max_steps: r
                .number("max_steps")?
                .filter(|&n| n > 0.0)
                .map(|n| n as usize),
            max_samples: None,
            batch_size: r.count("per_device_train_batch_size")?.unwrap_or(8),
            gradient_accumulation_steps: r.count("gradient_accumulation_steps")?.unwrap_or(1),
            cutoff_len: r.count("cutoff_len")?.unwrap_or(2048),
            lr_scheduler_type: match r.string("lr_scheduler_type")? {
                Some(s) => {
                    Schedule::parse(&s).map_err(|e| r.error("lr_scheduler_type", e.to_string()))?
                }
                None => Schedule::Linear,
            },
            warmup_steps: r.count("warmup_steps")?.unwrap_or(0),
            warmup_ratio: r.number("warmup_ratio")?.unwrap_or(0.0),
            max_grad_norm: r.number("max_grad_norm")?.unwrap_or(d.max_grad_norm),
            weight_decay: r.number("weight_decay")?.unwrap_or(0.0),
            adam_beta1: r.number("adam_beta1")?.unwrap_or(d.adam_beta1),
            adam_beta2: r.number("adam_beta2")?.unwrap_or(d.adam_beta2),
            adam_epsilon: r.number("adam_epsilon")?.unwrap_or(d.adam_epsilon),
            seed: r.count("seed")?.map_or(42, |s| s as u64),
            val_size: r.number("val_size")?.unwrap_or(0.0),
            eval_dataset: None,
            eval_steps: r.count("eval_steps")?,
            logging_steps: r.count("logging_steps")?.unwrap_or(500),
            save_steps: r.count("save_steps")?.unwrap_or(500),
            out: Some(PathBuf::from(
                r.string("output_dir")?
                    .unwrap_or_else(|| "trainer_output".into()),
            )),
            resume: false,
            train_on_prompt: r.bool("train_on_prompt")?.unwrap_or(false),
            mask_history: r.bool("mask_history")?.unwrap_or(false),
            packing: r.bool("packing")?.unwrap_or(false),
            neat_packing: r.bool("neat_packing")?.unwrap_or(false),
            group_by_length: r.bool("group_by_length")?.unwrap_or(false),
            lora,
            lora_init: None,
            early_stopping_patience: r.count("early_stopping_steps")?,
            plot_loss: r.bool("plot_loss")?.unwrap_or(false),
            gradient_checkpointing: r.bool("gradient_checkpointing")?.unwrap_or(false),
            finetuning_type: model.finetuning_type,
            optim: match r.string("optim")?.as_deref() {
                None | Some("adamw_torch" | "adamw_torch_fused" | "adamw_hf" | "") => Optim::AdamW,
                Some("adamw_bnb_8bit" | "adamw_8bit") => Optim::AdamW8bit {
                    block: Optim::DEFAULT_BLOCK,
                },
                Some("sgd") => Optim::Sgd,
                Some(other) => {
                    return Err(r.error(
                        "optim",
                        format!("\"{other}\": tunelab's optimizers are AdamW (adamw_torch), 8-bit AdamW (adamw_bnb_8bit) and SGD (sgd)"),
                    ))
                }
            },
            ..SftConfig::default()
        };
        if let Some(n) = r.number("freeze_trainable_layers")? {
            sft.freeze.trainable_layers = n as i64;
        }
        for (key, list) in [
            (
                "freeze_trainable_modules",
                &mut sft.freeze.trainable_modules,
            ),
            ("freeze_extra_modules", &mut sft.freeze.extra_modules),
        ] {
            let names = r.list(key)?;
            if !names.is_empty() {
                *list = names;
            }
        }
        if sft.finetuning_type == FinetuningType::Freeze {
            sft.freeze
                .validate()
                .map_err(|e| r.error("freeze_trainable_modules", e.to_string()))?;
        }
        if sft.neat_packing {
            sft.packing = true; // LLaMA-Factory: neat_packing implies packing
        }
        let mut eval_datasets = r.list("eval_dataset")?;
        // YAML 1.1 readers (PyYAML) take a bare `no` for false; both mean "no evaluation".
        let strategy = match r.entry("eval_strategy").map(|e| &e.value) {
            Some(Value::Bool(false)) => Some("no".to_string()),
            _ => r.string("eval_strategy")?,
        };
        match strategy.as_deref() {
            None | Some("steps") => {}
            Some("no") => {
                sft.val_size = 0.0;
                eval_datasets.clear();
            }
            Some(other) => {
                return Err(r.error(
                    "eval_strategy",
                    format!("\"{other}\" is not built; use steps (every eval_steps) or no"),
                ))
            }
        }
        sft.resume = match r.entry("resume_from_checkpoint").map(|e| &e.value) {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(Value::String(p)) => {
                let out = sft.out.clone().expect("set above");
                if !Path::new(p).starts_with(&out) {
                    return Err(r.error(
                        "resume_from_checkpoint",
                        format!(
                            "tunelab resumes the newest checkpoint inside output_dir ({}); set output_dir to the folder holding {p}, or resume_from_checkpoint: true",
                            out.display()
                        ),
                    ));
                }
                true
            }
            Some(other) => {
                return Err(r.error(
                    "resume_from_checkpoint",
                    format!("expected true or a checkpoint folder, got {}", show(other)),
                ))
            }
        };
        sft.validate()
            .map_err(|e| Error::data(&file.path, "settings", e.to_string()))?;
        // Full and freeze train f32 copies of the weights; bf16 is for LoRA's frozen base.
        let bf16 = TrainPlan::half_precision(file) == Some("bf16")
            && sft.finetuning_type == crate::train::trainable::FinetuningType::Lora;
        Ok(TrainPlan {
            model,
            datasets,
            eval_datasets,
            dataset_dir: PathBuf::from(r.string("dataset_dir")?.unwrap_or_else(|| "data".into())),
            max_samples: r.count("max_samples")?,
            sft,
            overwrite_output_dir: r.bool("overwrite_output_dir")?.unwrap_or(false),
            bf16,
        })
    }

    /// The half-precision request, for the note printed on the CPU.
    pub fn half_precision(file: &ConfigFile) -> Option<&'static str> {
        let on = |k: &str| file.get(k).is_some_and(|e| e.value == Value::Bool(true));
        if on("bf16") {
            Some("bf16")
        } else if on("fp16") {
            Some("fp16")
        } else {
            None
        }
    }
}

impl ChatPlan {
    /// The plan of `tunelab chat` with LLaMA-Factory's generation defaults (sampling at
    /// temperature 0.95, top-p 0.7, top-k 50, up to 1024 new tokens).
    pub fn new(file: &ConfigFile) -> Result<ChatPlan> {
        let r = Reader { file };
        let model = model_spec(&r)?;
        let mut generate = GenerateOptions {
            max_new_tokens: r.count("max_new_tokens")?.unwrap_or(1024),
            ..Default::default()
        };
        let s = &mut generate.sampling;
        s.temperature = r.number("temperature")?.unwrap_or(0.95);
        s.top_p = r.number("top_p")?.unwrap_or(0.7);
        s.top_k = r.count("top_k")?.unwrap_or(50);
        s.repetition_penalty = r.number("repetition_penalty")?.unwrap_or(1.0);
        if let Some(seed) = r.count("seed")? {
            s.seed = seed as u64;
        }
        if r.bool("do_sample")? == Some(false) {
            s.temperature = 0.0; // greedy
        }
        Ok(ChatPlan {
            model,
            generate,
            system: r.string("default_system")?.unwrap_or_default(),
        })
    }
}

impl ExportPlan {
    /// The plan of `tunelab export`: a merged Hugging Face folder in export_dir, shards of
    /// export_size GB (default 5).
    pub fn new(file: &ConfigFile) -> Result<ExportPlan> {
        let r = Reader { file };
        let model = model_spec(&r)?;
        let Some(out) = r.string("export_dir")? else {
            return Err(r.error(
                "export_dir",
                "missing: the folder to write the merged model to",
            ));
        };
        let size = r.number("export_size")?.unwrap_or(5.0);
        if size <= 0.0 {
            return Err(r.error("export_size", "must be a positive number of GB"));
        }
        let job = ExportJob {
            format: ExportFormat::Hf,
            shard_size: (size * 1e9) as u64,
            template: model.template.clone(),
            ..Default::default()
        };
        Ok(ExportPlan {
            model,
            out: PathBuf::from(out),
            job,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ConfigFile {
        ConfigFile::parse(Path::new("cfg.yaml"), text).unwrap()
    }

    const LLAMA3_LORA_SFT: &str = "### model\nmodel_name_or_path: tiny\ntrust_remote_code: true\n\n### method\nstage: sft\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\nlora_target: all\n\n### dataset\ndataset: identity,alpaca_en_demo\ntemplate: llama3\ncutoff_len: 2048\nmax_samples: 1000\noverwrite_cache: true\npreprocessing_num_workers: 16\n\n### output\noutput_dir: saves/llama3-8b/lora/sft\nlogging_steps: 10\nsave_steps: 500\nplot_loss: true\noverwrite_output_dir: true\n\n### train\nper_device_train_batch_size: 1\ngradient_accumulation_steps: 8\nlearning_rate: 1.0e-4\nnum_train_epochs: 3.0\nlr_scheduler_type: cosine\nwarmup_ratio: 0.1\nbf16: true\nddp_timeout: 180000000\n";

    #[test]
    fn the_llama3_example_maps_every_key() {
        let c = config(LLAMA3_LORA_SFT);
        let notes = check(&c, Command::Train).unwrap();
        for key in [
            "trust_remote_code",
            "overwrite_cache",
            "preprocessing_num_workers",
            "ddp_timeout",
        ] {
            assert!(
                notes
                    .iter()
                    .any(|n| n.starts_with(&format!("{key}: no effect"))),
                "{key}: {notes:?}"
            );
        }
        let p = TrainPlan::new(&c).unwrap();
        assert_eq!(p.model.path, "tiny");
        assert_eq!(p.datasets, ["identity", "alpaca_en_demo"]);
        assert_eq!(p.max_samples, Some(1000));
        assert_eq!(p.dataset_dir, PathBuf::from("data"));
        let s = &p.sft;
        assert_eq!(s.template, "llama3");
        assert_eq!(
            (s.lora.rank, s.lora.alpha, s.lora.targets.len()),
            (8, 16.0, 7)
        );
        assert_eq!((s.batch_size, s.gradient_accumulation_steps), (1, 8));
        assert_eq!((s.learning_rate, s.num_train_epochs), (1e-4, 3.0));
        assert_eq!(s.lr_scheduler_type, Schedule::Cosine);
        assert_eq!(
            (s.warmup_ratio, s.logging_steps, s.save_steps),
            (0.1, 10, 500)
        );
        assert!(s.plot_loss && p.overwrite_output_dir && !s.resume);
        assert_eq!(
            s.out.as_deref(),
            Some(Path::new("saves/llama3-8b/lora/sft"))
        );
        assert_eq!(TrainPlan::half_precision(&c), Some("bf16"));
    }

    #[test]
    fn every_other_training_key_reaches_the_run() {
        let c = config(
            "model_name_or_path: tiny\ndataset: identity\neval_dataset: instruct_en,chat_sharegpt\nval_size: 0.1\nlora_alpha: 32\nlora_dropout: 0.05\nlora_target: q_proj,v_proj\nuse_rslora: true\nwarmup_steps: 3\nmax_grad_norm: 0.5\nweight_decay: 0.01\nadam_beta2: 0.95\neval_steps: 7\nseed: 7\nfp16: true\nresume_from_checkpoint: true\nneat_packing: true\ntrain_on_prompt: true\ngroup_by_length: true\nearly_stopping_steps: 2\ndataset_dir: my_data\n",
        );
        let p = TrainPlan::new(&c).unwrap();
        assert_eq!(p.eval_datasets, ["instruct_en", "chat_sharegpt"]);
        assert_eq!(p.dataset_dir, PathBuf::from("my_data"));
        let s = &p.sft;
        assert_eq!(
            (s.val_size, s.lora.alpha, s.lora.dropout),
            (0.1, 32.0, 0.05)
        );
        assert_eq!(
            s.lora.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
            ["q_proj", "v_proj"]
        );
        assert!(
            s.lora.rslora
                && s.resume
                && s.packing
                && s.neat_packing
                && s.train_on_prompt
                && s.group_by_length
        );
        assert_eq!(
            (
                s.warmup_steps,
                s.max_grad_norm,
                s.weight_decay,
                s.adam_beta2
            ),
            (3, 0.5, 0.01, 0.95)
        );
        assert_eq!(
            (s.eval_steps, s.seed, s.early_stopping_patience),
            (Some(7), 7, Some(2))
        );
        assert_eq!(TrainPlan::half_precision(&c), Some("fp16"));
        let p = TrainPlan::new(&config("model_name_or_path: tiny\ndataset: identity\nmask_history: true\npacking: true\neval_strategy: no\nval_size: 0.2\n")).unwrap();
        assert!(p.sft.mask_history && p.sft.packing && p.sft.val_size == 0.0);
        let err = TrainPlan::new(&config("model_name_or_path: tiny\ndataset: identity\noutput_dir: runs/a\nresume_from_checkpoint: runs/b/checkpoint-10\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4: key \"resume_from_checkpoint\": tunelab resumes the newest checkpoint inside output_dir"), "{err}");
        let p = TrainPlan::new(&config("model_name_or_path: tiny\ndataset: identity\noutput_dir: runs/a\nresume_from_checkpoint: runs/a/checkpoint-10\n")).unwrap();
        assert!(p.sft.resume);
    }

    #[test]
    fn defaults_are_the_command_line_ones() {
        let p = TrainPlan::new(&config("model_name_or_path: tiny\ndataset: identity\n")).unwrap();
        let s = &p.sft;
        assert_eq!((s.batch_size, s.gradient_accumulation_steps), (8, 1));
        assert_eq!(s.lr_scheduler_type, Schedule::Linear);
        assert_eq!(
            (s.logging_steps, s.save_steps, s.plot_loss),
            (500, 500, false)
        );
        assert_eq!(
            (s.lora.rank, s.lora.alpha, s.learning_rate),
            (8, 16.0, 5e-5)
        );
        assert_eq!(s.out.as_deref(), Some(Path::new("trainer_output")));
    }

    #[test]
    fn overrides_win_and_strings_of_numbers_are_numbers() {
        let mut c = config(
            "model_name_or_path: tiny\ndataset: identity\nlearning_rate: 1e-4\nlora_rank: 8\n",
        );
        c.apply_override("lora_rank=4").unwrap();
        c.apply_override("max_steps=3").unwrap();
        let p = TrainPlan::new(&c).unwrap();
        assert_eq!(p.sft.learning_rate, 1e-4);
        assert_eq!((p.sft.lora.rank, p.sft.lora.alpha), (4, 8.0));
        assert_eq!(p.sft.max_steps, Some(3));
    }

    #[test]
    fn unknown_keys_suggest_the_nearest() {
        let err = check(
            &config("model_name_or_path: tiny\nlora_rnak: 8\n"),
            Command::Train,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "cfg.yaml: line 2: key \"lora_rnak\": not a LLaMA-Factory key tunelab knows; did you mean \"lora_rank\"?"
        );
    }

    #[test]
    fn refused_keys_say_what_to_use_unless_harmless() {
        let err = check(&config("deepspeed: ds_z3_config.json\n"), Command::Train)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cfg.yaml: line 1: key \"deepspeed\": \"ds_z3_config.json\" is not supported: DeepSpeed"), "{err}");
        let err = check(&config("quantization_bit: 4\n"), Command::Train)
            .unwrap_err()
            .to_string();
        assert!(err.contains("GGUF"), "{err}");
        assert!(check(
            &config("use_dora: false\nnum_beams: 1\noptim: adamw_torch\n"),
            Command::Train
        )
        .is_ok());
    }

    #[test]
    fn other_commands_keys_are_listed_once() {
        let notes = check(
            &config("model_name_or_path: tiny\ntemperature: 0.5\ntop_p: 0.9\n"),
            Command::Train,
        )
        .unwrap();
        assert_eq!(notes, ["not used by `tunelab train`: temperature, top_p"]);
    }

    #[test]
    fn wrong_values_name_line_and_key() {
        let err = TrainPlan::new(&config(
            "model_name_or_path: tiny\ndataset: identity\nlora_rank: eight\n",
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "cfg.yaml: line 3: key \"lora_rank\": expected a number, got \"eight\""
        );
        let err = TrainPlan::new(&config(
            "model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\ndataset: identity\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("Hub id") && err.contains("download it first"),
            "{err}"
        );
        let err = TrainPlan::new(&config(
            "model_name_or_path: tiny\ndataset: identity\nstage: dpo\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 3: key \"stage\": stage \"dpo\" is not built"),
            "{err}"
        );
        let plan = TrainPlan::new(&config(
            "model_name_or_path: tiny\ndataset: identity\nfinetuning_type: freeze\nfreeze_trainable_layers: 1\nfreeze_trainable_modules: mlp,self_attn\noptim: adamw_bnb_8bit\n",
        ))
        .unwrap();
        assert_eq!(plan.sft.finetuning_type, FinetuningType::Freeze);
        assert_eq!(plan.sft.freeze.trainable_layers, 1);
        assert_eq!(plan.sft.freeze.trainable_modules, ["mlp", "self_attn"]);
        assert_eq!(plan.sft.optim, Optim::AdamW8bit { block: 2048 });
        let err = TrainPlan::new(&config(
            "model_name_or_path: tiny\ndataset: identity\nfinetuning_type: partial\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("expected lora, full or freeze"), "{err}");
        let err = TrainPlan::new(&config(
            "model_name_or_path: tiny\ndataset: identity\noptim: adafactor\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("adamw_bnb_8bit"), "{err}");
        let sgd = TrainPlan::new(&config(
            "model_name_or_path: tiny\ndataset: identity\noptim: sgd\n",
        ))
        .unwrap();
        assert_eq!(sgd.sft.optim, Optim::Sgd);
        // Recomputation only when asked, and the printed script asks too.
        let recompute = TrainPlan::new(&config(
            "model_name_or_path: tiny\ndataset: identity\ngradient_checkpointing: true\n",
        ))
        .unwrap();
        assert!(recompute.sft.gradient_checkpointing && !sgd.sft.gradient_checkpointing);
        let script = crate::lfconfig::script::train_script(&recompute, "c.yaml");
        assert!(script.contains("gradient_checkpointing: true"), "{script}");
        let err = TrainPlan::new(&config(
            "model_name_or_path: tiny\ndataset: identity\nadapter_name_or_path: runs/a\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("create_new_adapter: true"), "{err}");
    }

    #[test]
    fn chat_and_export_read_their_keys() {
        let c = config("model_name_or_path: tiny\ntemperature: 0.3\ntop_p: 0.8\ntop_k: 20\nrepetition_penalty: 1.1\nseed: 3\n");
        let chat = ChatPlan::new(&c).unwrap();
        let s = &chat.generate.sampling;
        assert_eq!(
            (
                s.temperature,
                s.top_p,
                s.top_k,
                s.repetition_penalty,
                s.seed
            ),
            (0.3, 0.8, 20, 1.1, 3)
        );
        let d = ChatPlan::new(&config("model_name_or_path: tiny\n")).unwrap();
        let s = &d.generate.sampling;
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, d.generate.max_new_tokens),
            (0.95, 0.7, 50, 1024)
        );
        let c = config("model_name_or_path: tiny\ntemperature: 0.3\ndo_sample: false\nmax_new_tokens: 20\ndefault_system: Be brief.\nexport_dir: out/merged\nexport_size: 2\n");
        let chat = ChatPlan::new(&c).unwrap();
        assert_eq!(chat.generate.max_new_tokens, 20);
        assert_eq!(chat.generate.sampling.temperature, 0.0);
        assert_eq!(chat.system, "Be brief.");
        let export = ExportPlan::new(&c).unwrap();
        assert_eq!(export.out, PathBuf::from("out/merged"));
        assert_eq!(export.job.shard_size, 2_000_000_000);
        let err = check(&config("export_legacy_format: true\n"), Command::Export)
            .unwrap_err()
            .to_string();
        assert!(err.contains("safetensors only"), "{err}");
    }
}
