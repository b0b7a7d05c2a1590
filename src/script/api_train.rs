//! Script API, area "train": `sft`, runs, adapters. Thin bindings over [`crate::train`] and
//! [`crate::lora`].

use rhai::plugin::*;
use rhai::{FnPtr, Map, INT};

use crate::lora::{Adapter, LoraConfig};
use crate::train::config::Optim;
use crate::train::grad_quant::{Fp8Format, GradQuant, QsgdLevels, QsgdNorm, SignMagnitude};
use crate::train::trainable::FinetuningType;
use crate::train::{Schedule, SftConfig};

use super::errors::{runtime, IntoScript, ScriptResult};
use super::options::Options;

/// The area name `:help` groups these functions under.
pub const AREA: &str = "train";

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(train_api)
}

/// Keys of the `sft` configuration map (LLaMA-Factory's names and the short aliases).
const SFT_KEYS: &[&str] = &[
    "template",
    "learning_rate",
    "lr",
    "num_train_epochs",
    "epochs",
    "max_steps",
    "max_samples",
    "per_device_train_batch_size",
    "batch_size",
    "gradient_accumulation_steps",
    "cutoff_len",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "max_grad_norm",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "seed",
    "val_size",
    "eval_dataset",
    "eval_steps",
    "logging_steps",
    "save_steps",
    "out",
    "resume",
    "overwrite_output_dir",
    "train_on_prompt",
    "mask_history",
    "packing",
    "neat_packing",
    "group_by_length",
    "lora",
    "on_log",
    "early_stopping_patience",
    "plot_loss",
    "progress",
    "finetuning_type",
    "freeze_trainable_layers",
    "freeze_trainable_modules",
    "freeze_extra_modules",
    "optim",
    "adamw_8bit_block",
    "grad_quant",
    "gradient_checkpointing",
];

const GRAD_QUANT_KEYS: &[&str] = &[
    "method",
    "bits",
    "bucket",
    "norm",
    "levels",
    "error_feedback",
    "magnitude",
    "format",
    "scaling",
];

/// A comma-separated string or an array of strings.
fn names(v: Dynamic) -> Vec<String> {
    let parts: Vec<String> = if v.is_array() {
        v.into_array()
            .unwrap_or_default()
            .into_iter()
            .map(|x| x.to_string())
            .collect()
    } else {
        vec![v.to_string()]
    };
    parts
        .iter()
        .flat_map(|p| p.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The `grad_quant` sub-map: `#{ method: "qsgd", bits, bucket, norm, levels }`, `#{ method: "sign",
/// error_feedback, scaling, magnitude }` or `#{ method: "fp8", format, scaling }`.
fn grad_quant(map: Map) -> ScriptResult<GradQuant> {
    let o = Options::new("sft config: grad_quant", map, GRAD_QUANT_KEYS)?;
    let method = o.string("method")?.ok_or_else(|| {
        runtime("sft config: grad_quant: key \"method\" is required: \"qsgd\", \"sign\" or \"fp8\"")
    })?;
    let only = |allowed: &[&str]| -> ScriptResult<()> {
        for &key in GRAD_QUANT_KEYS.iter().filter(|k| **k != "method") {
            if !allowed.contains(&key) && o.value(key).is_some() {
                return Err(runtime(format!(
                    "sft config: grad_quant: key \"{key}\" does not apply to method \"{method}\" (it takes: {})",
                    allowed.join(", ")
                )));
            }
        }
        Ok(())
    };
    let q = match method.as_str() {
        "qsgd" => {
            only(&["bits", "bucket", "norm", "levels"])?;
            let norm = choice(&o, "norm", &QsgdNorm::ALL, QsgdNorm::name)?;
            let levels = choice(&o, "levels", &QsgdLevels::ALL, QsgdLevels::name)?;
            GradQuant::Qsgd {
                bits: o.int("bits")?.unwrap_or(4).clamp(0, 64) as u32,
                bucket: o.int("bucket")?.unwrap_or(512).max(0) as usize,
                norm,
                levels,
            }
        }
        "sign" => {
            only(&["error_feedback", "scaling", "magnitude"])?;
            let magnitude = choice(&o, "magnitude", &SignMagnitude::ALL, SignMagnitude::name)?;
            GradQuant::Sign {
                error_feedback: o.bool("error_feedback")?.unwrap_or(true),
                block: scaling_block(&o)?,
                magnitude,
            }
        }
        "fp8" => {
            only(&["format", "scaling"])?;
            let format = match o.string("format")?.as_deref().unwrap_or("e5m2") {
                "e5m2" => Fp8Format::E5M2,
                "e4m3" => Fp8Format::E4M3,
                other => {
                    return Err(runtime(format!(
                    "sft config: grad_quant: key \"format\": \"{other}\" is not one of: e5m2, e4m3"
                )))
                }
            };
            GradQuant::Fp8 {
                format,
                block: scaling_block(&o)?,
            }
        }
        other => {
            return Err(runtime(format!(
                "sft config: grad_quant: key \"method\": \"{other}\" is not one of: qsgd, sign, fp8"
            )))
        }
    };
    q.check().script()?;
    Ok(q)
}

/// grad_quant's `key` as one of `all` (by `name`); the first is the default.
fn choice<T: Copy>(
    o: &Options,
    key: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> ScriptResult<T> {
    let Some(given) = o.string(key)? else {
        return Ok(all[0]);
    };
    all.iter()
        .copied()
        .find(|v| name(*v) == given)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            runtime(format!(
                "sft config: grad_quant: key \"{key}\": \"{given}\" is not one of: {}",
                names.join(", ")
            ))
        })
}

/// grad_quant's `scaling`: "tensor" (the default: None) or "blockN" (Some(N)).
fn scaling_block(o: &Options) -> ScriptResult<Option<usize>> {
    let scaling = o.string("scaling")?.unwrap_or_else(|| "tensor".into());
    match scaling.as_str() {
        "tensor" => Ok(None),
        s => match s.strip_prefix("block").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(runtime(format!(
                "sft config: grad_quant: key \"scaling\": \"{s}\" is not \"tensor\" or \"blockN\" (e.g. \"block128\")"
            ))),
        },
    }
}

const LORA_KEYS: &[&str] = &["rank", "alpha", "dropout", "targets", "rslora", "init"];

/// Read a key that has a long (LLaMA-Factory) name and a short alias.
fn either<T>(
    o: &Options,
    long: &str,
    short: &str,
    get: impl Fn(&Options, &str) -> ScriptResult<Option<T>>,
) -> ScriptResult<Option<T>> {
    match (get(o, long)?, get(o, short)?) {
        (Some(_), Some(_)) => Err(runtime(format!(
            "sft config: \"{long}\" and \"{short}\" are the same setting; give one"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

fn count(o: &Options, key: &str) -> ScriptResult<Option<usize>> {
    match o.int(key)? {
        Some(n) if n < 0 => Err(runtime(format!("sft config: key \"{key}\": must be ≥ 0"))),
        v => Ok(v.map(|n| n as usize)),
    }
}

/// The LoRA sub-map: `#{ rank, alpha, dropout, targets, rslora, init }`; `init` (an adapter,
/// e.g. from `lowrank`) sets the rank and targets unless they are given.
fn lora_config(map: Map) -> ScriptResult<(LoraConfig, Option<Adapter>)> {
    let o = Options::new("sft config: lora", map, LORA_KEYS)?;
    let init = match o.value("init") {
        None => None,
        Some(v) if v.is_string() && v.to_string() == "zero" => None,
        Some(v) => Some(v.try_cast::<Adapter>().ok_or_else(|| {
            runtime("sft config: lora: key \"init\": an adapter to start from (LoftQ: lowrank(quantized, reference, #{ iters }) and train on adapter.base), or \"zero\" (PEFT's start, the default)")
        })?),
    };
    let mut c = LoraConfig::default();
    if let Some(a) = &init {
        c.rank = a.config.rank;
        c.alpha = 2.0 * c.rank as f64;
        c.targets = a.config.targets.clone();
    }
    if let Some(r) = o.int("rank")? {
        c.rank = r.max(0) as usize;
        // LLaMA-Factory's CLI: alpha defaults to twice the rank.
        c.alpha = 2.0 * c.rank as f64;
    }
    c.alpha = o.float("alpha")?.unwrap_or(c.alpha);
    c.dropout = o.float("dropout")?.unwrap_or(c.dropout);
    c.rslora = o.bool("rslora")?.unwrap_or(false);
    if let Some(v) = o.value("targets") {
        c.targets = LoraConfig::parse_targets(&names(v)).script()?;
    }
    Ok((c, init))
}

/// The `sft` configuration map → [`SftConfig`] and the optional `on_log` callback.
fn sft_config(map: Map) -> ScriptResult<(SftConfig, Option<FnPtr>, bool)> {
    let o = Options::new("sft config", map, SFT_KEYS)?;
    let d = SftConfig::default();
    let mut c = SftConfig {
        template: o.string("template")?.unwrap_or_default(),
        learning_rate: either(&o, "learning_rate", "lr", Options::float)?
            .unwrap_or(d.learning_rate),
        num_train_epochs: either(&o, "num_train_epochs", "epochs", Options::float)?
            .unwrap_or(d.num_train_epochs),
        max_steps: count(&o, "max_steps")?.filter(|&n| n > 0),
        max_samples: count(&o, "max_samples")?,
        batch_size: either(&o, "per_device_train_batch_size", "batch_size", count)?
            .unwrap_or(d.batch_size),
        gradient_accumulation_steps: count(&o, "gradient_accumulation_steps")?
            .unwrap_or(d.gradient_accumulation_steps),
        cutoff_len: count(&o, "cutoff_len")?.unwrap_or(d.cutoff_len),
        lr_scheduler_type: match o.string("lr_scheduler_type")? {
            Some(s) => Schedule::parse(&s).script()?,
            None => d.lr_scheduler_type,
        },
        warmup_steps: count(&o, "warmup_steps")?.unwrap_or(0),
        warmup_ratio: o.float("warmup_ratio")?.unwrap_or(0.0),
        max_grad_norm: o.float("max_grad_norm")?.unwrap_or(d.max_grad_norm),
        weight_decay: o.float("weight_decay")?.unwrap_or(d.weight_decay),
        adam_beta1: o.float("adam_beta1")?.unwrap_or(d.adam_beta1),
        adam_beta2: o.float("adam_beta2")?.unwrap_or(d.adam_beta2),
        adam_epsilon: o.float("adam_epsilon")?.unwrap_or(d.adam_epsilon),
        seed: o.int("seed")?.map_or(d.seed, |s| s as u64),
        val_size: o.float("val_size")?.unwrap_or(0.0),
        eval_dataset: None,
        eval_steps: count(&o, "eval_steps")?,
        logging_steps: count(&o, "logging_steps")?.unwrap_or(d.logging_steps),
        save_steps: count(&o, "save_steps")?.unwrap_or(d.save_steps),
        out: o.string("out")?.map(Into::into),
        resume: o.bool("resume")?.unwrap_or(false),
        overwrite_output_dir: o.bool("overwrite_output_dir")?.unwrap_or(false),
        train_on_prompt: o.bool("train_on_prompt")?.unwrap_or(false),
        mask_history: o.bool("mask_history")?.unwrap_or(false),
        packing: o.bool("packing")?.unwrap_or(false),
        neat_packing: o.bool("neat_packing")?.unwrap_or(false),
        group_by_length: o.bool("group_by_length")?.unwrap_or(false),
        lora: LoraConfig::default(),
        lora_init: None,
        early_stopping_patience: count(&o, "early_stopping_patience")?,
        plot_loss: o.bool("plot_loss")?.unwrap_or(true),
        finetuning_type: match o.string("finetuning_type")? {
            Some(s) => FinetuningType::parse(&s).script()?,
            None => FinetuningType::Lora,
        },
        freeze: Default::default(),
        optim: Optim::AdamW,
        grad_quant: None,
        gradient_checkpointing: o.bool("gradient_checkpointing")?.unwrap_or(false),
    };
    if let Some(n) = o.int("freeze_trainable_layers")? {
        c.freeze.trainable_layers = n;
    }
    if let Some(v) = o.value("freeze_trainable_modules") {
        c.freeze.trainable_modules = names(v);
    }
    if let Some(v) = o.value("freeze_extra_modules") {
        c.freeze.extra_modules = names(v);
    }
    let block = count(&o, "adamw_8bit_block")?;
    c.optim = match o.string("optim")?.as_deref() {
        None | Some("adamw") | Some("adamw_torch") => Optim::AdamW,
        Some("adamw_8bit") | Some("adamw_bnb_8bit") => Optim::AdamW8bit {
            block: block.unwrap_or(Optim::DEFAULT_BLOCK),
        },
        Some("sgd") => Optim::Sgd,
        Some(other) => {
            return Err(runtime(format!(
                "sft config: key \"optim\": \"{other}\" is not one of: adamw, adamw_8bit, sgd"
            )))
        }
    };
    if block.is_some() && !matches!(c.optim, Optim::AdamW8bit { .. }) {
        return Err(runtime(
            "sft config: key \"adamw_8bit_block\" applies to optim: \"adamw_8bit\" only",
        ));
    }
    if let Some(m) = o.map("grad_quant")? {
        c.grad_quant = Some(grad_quant(m)?);
    }
    if let Some(m) = o.map("lora")? {
        (c.lora, c.lora_init) = lora_config(m)?;
    }
    if let Some(v) = o.value("eval_dataset") {
        c.eval_dataset = Some(v.try_cast::<crate::data::Dataset>().ok_or_else(|| {
            runtime("sft config: key \"eval_dataset\": expected a Dataset (from dataset(...))")
        })?);
    }
    let on_log = match o.value("on_log") {
        Some(v) => Some(v.try_cast::<FnPtr>().ok_or_else(|| {
            runtime("sft config: key \"on_log\": expected a function, e.g. |ev| { print(ev.loss); true }")
        })?),
        None => None,
    };
    let progress = o.bool("progress")?.unwrap_or(true);
    Ok((c, on_log, progress))
}

#[export_module]
pub mod train_api {
    use std::path::Path;

    use crate::curves::Curve;
    use crate::script::engine::host;
    use crate::train::{Hooks, Run as CoreRun, StopReason};

    /// A finished training run: `loss`, `eval_loss`, `adapter`, `out`, `steps`, `tokens_per_sec`.
    pub type Run = CoreRun;
    /// A LoRA adapter: `save(dir)`; use it with `chat(model, #{ adapter })`.
    pub type Adapter = super::Adapter;

    /// LoRA supervised fine-tuning with LLaMA-Factory's settings (every key: docs/fine-tuning.md):
    /// `lr`, `epochs`, `batch_size`, `gradient_accumulation_steps`, `cutoff_len`, `template`,
    /// `val_size` / `eval_dataset`, `lora: #{ rank, alpha, dropout, targets, rslora }`, `out`,
    /// `resume`, `on_log: |ev| ...` (return false to stop), `progress` (bar on/off), ...
    #[rhai_fn(return_raw)]
    pub fn sft(
        ctx: NativeCallContext,
        model: crate::model::Model,
        dataset: crate::data::Dataset,
        cfg: Map,
    ) -> ScriptResult<Run> {
        let (cfg, on_log, progress) = super::sft_config(cfg)?;
        let h = host(&ctx);
        let mut callback_error: Option<Box<EvalAltResult>> = None;
        let mut call = |ev: &serde_json::Map<String, serde_json::Value>| -> crate::Result<bool> {
            let Some(f) = &on_log else { return Ok(true) };
            let map: Dynamic = rhai::serde::to_dynamic(ev).unwrap_or(Dynamic::UNIT);
            match f.call_within_context::<Dynamic>(&ctx, (map,)) {
                Ok(v) => Ok(v.as_bool().unwrap_or(true)),
                Err(e) => {
                    let text = e.to_string();
                    callback_error = Some(e);
                    Err(crate::Error::msg(format!("on_log: {text}")))
                }
            }
        };
        let hooks = Hooks {
            on_log: Some(&mut call),
            cancel: &h.cancel,
            output: &h.output,
            progress_bar: progress && h.output.is_terminal_stream(),
            collective: crate::collective::current(),
        };
        let result = crate::train::sft(&model, &dataset, &cfg, hooks);
        if let Some(e) = callback_error {
            return Err(e);
        }
        result.script()
    }

    /// Training speed on random tokens (the PyTorch + PEFT peer does the same): options `batch`
    /// (4), `seq` (256), `rank` (8), `targets` ("q_proj,v_proj"), `steps` (3), and sft's
    /// `finetuning_type`, `freeze_trainable_layers`, `freeze_trainable_modules`, `optim`,
    /// `adamw_8bit_block`, `grad_quant`, `gradient_checkpointing`. Returns `#{ tokens_per_s,
    /// step_s, forward_s, backward_s, optimizer_s, cpu_s_per_step, loss_first, loss_last,
    /// trainable_params, optimizer_state_bytes, peak_rss_mb, start_rss_mb, grad_bits,
    /// gpu_peak_mb, gpu_reserved_mb }` (seconds are medians over the timed steps; the peak is the
    /// process's resident memory during the benchmark, the start what it held before it, model
    /// included; the GPU figures are the memory pool's peaks, model included, () off a GPU).
    #[rhai_fn(return_raw)]
    pub fn bench_sft(
        ctx: NativeCallContext,
        model: crate::model::Model,
        opts: Map,
    ) -> ScriptResult<Map> {
        let o = crate::script::options::Options::new(
            "bench_sft options",
            opts,
            &[
                "batch",
                "seq",
                "rank",
                "targets",
                "steps",
                "finetuning_type",
                "freeze_trainable_layers",
                "freeze_trainable_modules",
                "optim",
                "adamw_8bit_block",
                "grad_quant",
                "gradient_checkpointing",
            ],
        )?;
        // The low-precision keys read as sft reads them.
        let mut low = Map::new();
        for key in [
            "finetuning_type",
            "freeze_trainable_layers",
            "freeze_trainable_modules",
            "optim",
            "adamw_8bit_block",
            "grad_quant",
        ] {
            if let Some(v) = o.value(key) {
                low.insert(key.into(), v);
            }
        }
        let (low, _, _) = super::sft_config(low)?;
        low.validate().script()?;
        let rank = o.int("rank")?.unwrap_or(8).max(1) as usize;
        let targets = o
            .string("targets")?
            .unwrap_or_else(|| "q_proj,v_proj".into());
        let lora = super::LoraConfig {
            rank,
            alpha: 2.0 * rank as f64,
            targets: super::LoraConfig::parse_targets(&[targets]).script()?,
            ..Default::default()
        };
        let b = crate::train::bench::BenchOptions {
            batch: o.int("batch")?.unwrap_or(4).max(1) as usize,
            seq: o.int("seq")?.unwrap_or(256).max(2) as usize,
            lora,
            steps: o.int("steps")?.unwrap_or(3).max(1) as usize,
            seed: 0,
            finetuning_type: low.finetuning_type,
            freeze: low.freeze,
            optim: low.optim,
            grad_quant: low.grad_quant,
            gradient_checkpointing: o.bool("gradient_checkpointing")?.unwrap_or(false),
        };
        let r = crate::train::bench::bench_sft(&model, &b, &host(&ctx).cancel).script()?;
        let mut m = Map::new();
        m.insert("tokens_per_s".into(), Dynamic::from(r.tokens_per_sec));
        m.insert("step_s".into(), Dynamic::from(r.median_step_seconds));
        m.insert(
            "step_s_all".into(),
            Dynamic::from(
                r.step_seconds
                    .iter()
                    .map(|&s| Dynamic::from(s))
                    .collect::<rhai::Array>(),
            ),
        );
        m.insert("forward_s".into(), Dynamic::from(r.forward_seconds));
        m.insert("backward_s".into(), Dynamic::from(r.backward_seconds));
        m.insert("optimizer_s".into(), Dynamic::from(r.optimizer_seconds));
        m.insert(
            "cpu_s_per_step".into(),
            r.cpu_seconds_per_step.map_or(Dynamic::UNIT, Dynamic::from),
        );
        m.insert("loss_first".into(), Dynamic::from(r.losses[0]));
        m.insert(
            "loss_last".into(),
            Dynamic::from(*r.losses.last().unwrap_or(&0.0)),
        );
        m.insert(
            "trainable_params".into(),
            Dynamic::from(r.trainable_params as INT),
        );
        m.insert(
            "optimizer_state_bytes".into(),
            Dynamic::from(r.optimizer_state_bytes as INT),
        );
        m.insert(
            "peak_rss_mb".into(),
            r.peak_rss_bytes
                .map_or(Dynamic::UNIT, |b| Dynamic::from(b as f64 / 1e6)),
        );
        m.insert(
            "start_rss_mb".into(),
            r.start_rss_bytes
                .map_or(Dynamic::UNIT, |b| Dynamic::from(b as f64 / 1e6)),
        );
        m.insert(
            "grad_bits".into(),
            r.grad_bits.map_or(Dynamic::UNIT, Dynamic::from),
        );
        m.insert(
            "gpu_peak_mb".into(),
            r.gpu_peak
                .map_or(Dynamic::UNIT, |p| Dynamic::from(p.used_bytes as f64 / 1e6)),
        );
        m.insert(
            "gpu_reserved_mb".into(),
            r.gpu_peak.map_or(Dynamic::UNIT, |p| {
                Dynamic::from(p.reserved_bytes as f64 / 1e6)
            }),
        );
        Ok(m)
    }

    /// The training loss curve (one point per logging step).
    #[rhai_fn(global, get = "loss", pure)]
    pub fn run_loss(run: &mut Run) -> Curve {
        Curve::new("loss", &run.loss)
    }

    /// The evaluation loss curve (empty without evaluation data).
    #[rhai_fn(global, get = "eval_loss", pure)]
    pub fn run_eval_loss(run: &mut Run) -> Curve {
        Curve::new("eval_loss", &run.eval_loss)
    }

    /// The token accuracy on the evaluation data, per evaluation.
    #[rhai_fn(global, get = "eval_accuracy", pure)]
    pub fn run_eval_accuracy(run: &mut Run) -> Curve {
        Curve::new("eval_accuracy", &run.eval_accuracy)
    }

    /// The trained adapter (the best checkpoint's after early stopping); an error for a full or
    /// freeze run, which trained the model itself (`run.model`).
    #[rhai_fn(global, get = "adapter", pure, return_raw)]
    pub fn run_adapter(run: &mut Run) -> ScriptResult<Adapter> {
        run.adapter.clone().ok_or_else(|| {
            runtime(format!(
                "run.adapter: this run trained the model's own weights (finetuning_type \"{}\"); use run.model, or load_model(run.out)",
                run.finetuning_type.name()
            ))
        })
    }

    /// The trained model of a full or freeze run (also saved in `run.out`); an error for a LoRA
    /// run, whose result is `run.adapter` (`merge(model, run.adapter)` gives a model).
    #[rhai_fn(global, get = "model", pure, return_raw)]
    pub fn run_model(run: &mut Run) -> ScriptResult<crate::model::Model> {
        run.model.clone().ok_or_else(|| {
            runtime("run.model: this run trained a LoRA adapter; use run.adapter, or merge(model, run.adapter)")
        })
    }

    /// Bytes of optimizer state at the end of the run: both AdamW moments, f32 or 8-bit codes
    /// with their block scales (0 under SGD).
    #[rhai_fn(global, get = "optimizer_state_bytes", pure)]
    pub fn run_optimizer_state_bytes(run: &mut Run) -> INT {
        run.optimizer_state_bytes as INT
    }

    /// Bits per gradient element the run's last step sent with `grad_quant`, scales included
    /// (() with f32 gradients).
    #[rhai_fn(global, get = "grad_bits", pure)]
    pub fn run_grad_bits(run: &mut Run) -> Dynamic {
        run.grad_bits.map_or(Dynamic::UNIT, Dynamic::from)
    }

    /// The run folder.
    #[rhai_fn(global, get = "out", pure)]
    pub fn run_out(run: &mut Run) -> String {
        run.out.display().to_string()
    }

    /// Optimizer steps done.
    #[rhai_fn(global, get = "steps", pure)]
    pub fn run_steps(run: &mut Run) -> INT {
        run.steps as INT
    }

    /// Training throughput: input tokens per second.
    #[rhai_fn(global, get = "tokens_per_sec", pure)]
    pub fn run_tokens_per_sec(run: &mut Run) -> f64 {
        run.tokens_per_sec
    }

    /// Input tokens trained on, padding included (over all ranks of a data-parallel run).
    #[rhai_fn(global, get = "total_tokens", pure)]
    pub fn run_total_tokens(run: &mut Run) -> INT {
        run.total_tokens as INT
    }

    /// Seconds of training (across resumes; loading and preparing the data excluded).
    #[rhai_fn(global, get = "elapsed", pure)]
    pub fn run_elapsed(run: &mut Run) -> f64 {
        run.elapsed
    }

    /// Seconds of a data-parallel run's all-reduce itself (each step as the last rank to arrive
    /// timed it); 0 for a single process.
    #[rhai_fn(global, get = "allreduce_seconds", pure)]
    pub fn run_allreduce_seconds(run: &mut Run) -> f64 {
        run.allreduce_seconds
    }

    /// Seconds this rank waited in the all-reduce for slower ranks (their batches were longer).
    #[rhai_fn(global, get = "allreduce_wait_seconds", pure)]
    pub fn run_allreduce_wait_seconds(run: &mut Run) -> f64 {
        run.allreduce_wait_seconds
    }

    /// The verdict on the run's loss curves at its end, as `diagnose(run.loss, run.eval_loss)`:
    /// `#{ verdict, confidence, evidence, advice, best_step, headline }`.
    #[rhai_fn(global, get = "diagnosis", pure)]
    pub fn run_diagnosis(run: &mut Run) -> Map {
        crate::script::api_curves::diagnosis_map(run.diagnosis.clone())
    }

    /// The step of the lowest eval loss (() without validation).
    #[rhai_fn(global, get = "best_step", pure)]
    pub fn run_best_step(run: &mut Run) -> Dynamic {
        run.best_step
            .map_or(Dynamic::UNIT, |s| Dynamic::from(s as rhai::INT))
    }

    /// How the run ended: "finished", "stopped" (on_log returned false) or "early_stopped".
    #[rhai_fn(global, get = "stopped", pure)]
    pub fn run_stopped(run: &mut Run) -> String {
        match run.stopped {
            StopReason::Finished => "finished",
            StopReason::StoppedByCallback => "stopped",
            StopReason::EarlyStopped => "early_stopped",
        }
        .into()
    }

    /// A one-line summary of the run.
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn run_to_string(run: &mut Run) -> String {
        run.to_string()
    }

    /// Read a LoRA adapter folder (PEFT format: a run's `out`, one of its checkpoints, or a PEFT
    /// adapter saved elsewhere).
    #[rhai_fn(return_raw)]
    pub fn load_adapter(dir: &str) -> ScriptResult<Adapter> {
        crate::lora::peft::read_trained(Path::new(dir), &candle_core::Device::Cpu).script()
    }

    /// A new model with the adapter folded into its weights (W + alpha/r·B·A); the base is
    /// unchanged. Quantized projections that the adapter touches become dense f32.
    #[rhai_fn(return_raw)]
    pub fn merge(
        model: crate::model::Model,
        adapter: Adapter,
    ) -> ScriptResult<crate::model::Model> {
        crate::lora::merge::merge(&model, &adapter).script()
    }

    /// Rank, alpha, targets and size of the adapter.
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn adapter_to_string(adapter: &mut Adapter) -> String {
        adapter.to_string()
    }
}
