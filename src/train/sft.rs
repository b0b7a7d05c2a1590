//! The supervised fine-tuning loop.
//!
//! Steps are fixed before training starts: each epoch orders the items with a seeded shuffle,
//! cuts them into batches, and groups `gradient_accumulation_steps` batches into one optimizer
//! step (the last step of an epoch may have fewer). Step `s` therefore always sees the same
//! batches, and the dropout generator is re-seeded from (seed, s): a run resumed from any
//! checkpoint computes exactly what the uninterrupted run would have.
//!
//! Per step: forward and backward on each batch — a long batch that is mostly padding one item
//! at a time ([`compute_groups`]), the same gradient without computing the pads (the loss is the
//! sum over label tokens divided by the label tokens of the whole step, so neither accumulation
//! nor the split changes the objective), sum the
//! gradients, round them when `grad_quant` asks, clip them to `max_grad_norm`, and take an AdamW
//! step (f32 or 8-bit moments) at the scheduled rate.
//!
//! What trains is the run's [`Trainable`]: LoRA factors, or (`full`, `freeze`) the weights of a
//! trainable copy of the model, which the run ends by writing as a Hugging Face folder.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde_json::{json, Map, Value};

use super::batch::{compute_groups, epoch_order, padded_tokens, stack, Batch, Item};
use super::checkpoint::{self, TrainerState};
use super::config::Optim;
use super::config::SftConfig;
use super::data_parallel::{self as dp, Agreement, Ranks};
use super::grad_quant::GradQuantizer;
use super::gradients;
use super::log::{format_duration, round, TrainerLog};
use super::loss::cross_entropy_sum;
use super::optim::{clip_grad_norm, AdamParams, Optimizer};
use super::prepare::{prepare, Prepared};
use super::progress::Progress;
use super::run::{Run, StopReason};
use super::trainable::{self, FinetuningType, Trainable};
use crate::cancel::CancelToken;
use crate::collective::Collective;
use crate::curves::plot::PlotOptions;
use crate::curves::{Curve, Verdict};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::lora::{Adapter, Dropout};
use crate::model::{Model, Pass};
use crate::output::Output;
use crate::rng::Rng;

/// A log-event listener: receives each event (trainer_log.jsonl fields); `false` stops training.
pub type OnLog<'a> = &'a mut dyn FnMut(&Map<String, Value>) -> Result<bool>;

/// What the loop reports to and listens to.
pub struct Hooks<'a> {
    pub on_log: Option<OnLog<'a>>,
    pub cancel: &'a CancelToken,
    pub output: &'a Output,
    /// Draw a progress bar when stderr is a terminal.
    pub progress_bar: bool,
    /// The group of data-parallel ranks this run is one of ([`crate::collective::current`]);
    /// `None` or a world of 1 is a single process.
    pub collective: Option<&'a dyn Collective>,
}

/// The step plan: how batches map to optimizer steps.
struct Plan {
    batches_per_epoch: usize,
    steps_per_epoch: usize,
    total_steps: usize,
    warmup: usize,
}

impl Plan {
    /// The plan for `items` with `accumulation` batches per optimizer step (over all ranks).
    fn new(items: usize, accumulation: usize, cfg: &SftConfig) -> Plan {
        let batches_per_epoch = items.div_ceil(cfg.batch_size);
        let steps_per_epoch = batches_per_epoch.div_ceil(accumulation);
        let total_steps = cfg
            .max_steps
            .unwrap_or_else(|| (cfg.num_train_epochs * steps_per_epoch as f64).ceil() as usize)
            .max(1);
        let warmup = if cfg.warmup_steps > 0 {
            cfg.warmup_steps
        } else {
            (cfg.warmup_ratio * total_steps as f64).ceil() as usize
        };
        Plan {
            batches_per_epoch,
            steps_per_epoch,
            total_steps,
            warmup,
        }
    }

    /// Epoch and the range of batch numbers within it for step `s`.
    fn batches_of(&self, s: usize, accumulation: usize) -> (usize, std::ops::Range<usize>) {
        let epoch = s / self.steps_per_epoch;
        let j = s % self.steps_per_epoch;
        let start = j * accumulation;
        (
            epoch,
            start..(start + accumulation).min(self.batches_per_epoch),
        )
    }

    /// Fractional epoch after step `s` (0-based) completes.
    fn epoch_after(&self, s: usize, accumulation: usize) -> f64 {
        let (epoch, range) = self.batches_of(s, accumulation);
        epoch as f64 + range.end as f64 / self.batches_per_epoch as f64
    }
}

/// A fresh adapter with `init`'s factors (copied: training never changes `init`), B divided by
/// `config`'s scale so that the run's `scale·B·A` equals `init`'s product.
fn started_from(
    init: &Adapter,
    model: &Model,
    config: &crate::lora::LoraConfig,
) -> Result<Adapter> {
    if let Some(base) = &init.requantized_base {
        if !base.is_same(model) {
            return Err(Error::config(
                "lora.init",
                "this adapter was fitted by LoftQ to a re-quantized base: train on adapter.base, not the model it started from",
            ));
        }
    }
    init.check_fits(&model.llama, Path::new("lora.init"))?;
    if init.config.rank != config.rank || init.config.targets != config.targets {
        return Err(Error::config(
            "lora.init",
            format!(
                "the initial adapter has rank {} on {} but the run asks rank {} on {}; give the same (or leave rank and targets out)",
                init.config.rank,
                init.config.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
                config.rank,
                config.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
            ),
        ));
    }
    let ratio = init.config.scale() / config.scale();
    let mut layers = Vec::with_capacity(init.layers.len());
    for pairs in &init.layers {
        let mut copied: [Option<crate::lora::LoraPair>; 7] = Default::default();
        for (slot, pair) in copied.iter_mut().zip(pairs) {
            if let Some(p) = pair {
                *slot = Some(crate::lora::LoraPair {
                    a: candle_core::Var::from_tensor(
                        &p.a.as_tensor().to_dtype(candle_core::DType::F32)?.copy()?,
                    )?,
                    b: candle_core::Var::from_tensor(
                        &(p.b.as_tensor().to_dtype(candle_core::DType::F32)? * ratio)?,
                    )?,
                });
            }
        }
        layers.push(copied);
    }
    Ok(Adapter {
        config: config.clone(),
        layers,
        base_model: model.source.clone(),
        template: None,
        requantized_base: None,
    })
}

/// The optimizer a run asks for, over `vars`.
fn optimizer(vars: Vec<candle_core::Var>, cfg: &SftConfig) -> Result<Optimizer> {
    Optimizer::for_setting(cfg.optim, vars, adam_params(cfg))
}

/// The weights a full or freeze run trains (Hugging Face names).
fn selector(cfg: &SftConfig, model: &Model) -> impl Fn(&str) -> bool {
    let freeze = (cfg.finetuning_type == FinetuningType::Freeze).then(|| cfg.freeze.clone());
    trainable::selector(freeze, model.config().num_hidden_layers)
}

/// The gradient rounding a run asks for, over `trainable`'s parameters.
fn quantizer(cfg: &SftConfig, trainable: &Trainable) -> Option<GradQuantizer> {
    cfg.grad_quant.map(|q| {
        let sizes: Vec<usize> = trainable
            .named_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .collect();
        GradQuantizer::new(q, cfg.seed, &sizes)
    })
}

/// The prefix of error feedback's residuals in `optimizer.safetensors`.
const RESIDUAL: &str = "grad_residual.";

/// Fine-tune `model` on `train`: LoRA, or its own weights (`finetuning_type` full or freeze).
pub fn sft(model: &Model, train: &Dataset, cfg: &SftConfig, mut hooks: Hooks) -> Result<Run> {
    cfg.validate()?;
    let ranks = Ranks::of(hooks.collective);
    let world = ranks.map_or(1, |r| r.world);
    // Only rank 0 (or a single process) writes the run's files.
    let main = ranks.is_none_or(|r| r.rank == 0);
    // Batches per optimizer step over all ranks: W ranks of k computes what one process of W·k
    // computes, and a checkpoint resumes at any W with the same W·k.
    let accumulation = cfg.gradient_accumulation_steps * world;
    let data = prepare(model, train, cfg)?;
    let plan = Plan::new(data.train.len(), accumulation, cfg);
    let out = match &cfg.out {
        Some(out) => out.clone(),
        None if world > 1 => {
            return Err(Error::config(
                "out",
                "a run of several ranks needs out: every rank must name the same folder (on a filesystem they share)",
            ))
        }
        None => claim_run_folder(Path::new("runs"))?,
    };
    let mut fingerprint = cfg.resume_fingerprint();
    fingerprint["gradient_accumulation_steps"] = json!(accumulation);
    let mut state = TrainerState {
        fingerprint,
        ..Default::default()
    };

    // A fresh adapter, or the newest checkpoint's.
    let resume_from = if cfg.resume {
        checkpoint::latest(&out)
    } else {
        None
    };
    let selected = selector(cfg, model);
    let fresh = |state: TrainerState| -> Result<(Trainable, Optimizer, TrainerState)> {
        let trainable = match (cfg.finetuning_type, &cfg.lora_init) {
            (FinetuningType::Lora, Some(init)) => {
                Trainable::Lora(started_from(init, model, &cfg.lora)?)
            }
            (FinetuningType::Lora, None) => Trainable::Lora(Adapter::new(
                &model.llama,
                cfg.lora.clone(),
                cfg.seed,
                &model.source,
            )?),
            _ => Trainable::Weights(trainable::weights(model, &selected, None)?),
        };
        let optim = optimizer(
            trainable.named_vars().into_iter().map(|(_, v)| v).collect(),
            cfg,
        )?;
        Ok((trainable, optim, state))
    };
    let (trainable, mut optim, mut state, mut rounding, resumed) = match resume_from {
        Some((_, dir)) => {
            let (trainable, tensors, steps, saved) =
                checkpoint::load(&dir, model, cfg.finetuning_type, &selected)?;
            if saved.fingerprint != state.fingerprint {
                return Err(Error::config(
                    "resume",
                    format!(
                        "{} was made with other settings; resume with the same settings, or train into a new out folder",
                        dir.display()
                    ),
                ));
            }
            let mut optim = optimizer(
                trainable.named_vars().into_iter().map(|(_, v)| v).collect(),
                cfg,
            )?;
            let names = trainable.names();
            let source = dir.join("optimizer.safetensors");
            optim.restore(&names, &tensors, steps, &source)?;
            let mut rounding = quantizer(cfg, &trainable);
            if let Some(q) = rounding.as_mut() {
                q.restore(&names, &tensors, RESIDUAL, &source)?;
            }
            hooks.output.line(&format!(
                "resuming from {} (step {}/{})",
                dir.display(),
                saved.global_step,
                plan.total_steps
            ));
            (trainable, optim, saved, rounding, true)
        }
        None => {
            let (trainable, optim, state) = fresh(std::mem::take(&mut state))?;
            let rounding = quantizer(cfg, &trainable);
            (trainable, optim, state, rounding, false)
        }
    };
    let vars: Vec<_> = trainable.named_vars().into_iter().map(|(_, v)| v).collect();
    // Several ranks agree on what they train before rank 0 changes anything on disk.
    if let Some(ranks) = ranks {
        agree(
            ranks,
            model,
            &trainable,
            &data,
            &state,
            &vars,
            hooks.on_log.is_some(),
        )?;
    }
    let log = match (main, resumed) {
        (false, _) => None,
        (true, true) => Some(TrainerLog::resume(&out, state.global_step)?),
        (true, false) => {
            if cfg.overwrite_output_dir {
                checkpoint::remove_run(&out)?;
            }
            refuse_to_overwrite(&out)?;
            std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
            Some(TrainerLog::create(&out)?)
        }
    };
    let names = trainable.names();
    let residuals = |r: &Option<GradQuantizer>| -> Result<Vec<(String, Tensor)>> {
        match r {
            Some(q) => q.residual_tensors(&names),
            None => Ok(Vec::new()),
        }
    };
    let fmodel = trainable.model(model);
    let adapter = trainable.adapter();
    let args_path = out.join("training_args.json");
    let mut args = cfg.to_json();
    args["template"] = data.template.name.into();
    args["output_dir"] = out.display().to_string().into();
    args["model_name_or_path"] = model.source.clone().into();
    args["dataset"] = train.name().into();
    if world > 1 {
        args["world_size"] = world.into();
    }
    if main {
        crate::fsutil::write_atomic(
            &args_path,
            serde_json::to_string_pretty(&args)
                .expect("json")
                .as_bytes(),
        )?;
    }

    let progress = Progress::new(
        plan.total_steps,
        state.global_step,
        hooks.output,
        hooks.progress_bar && main,
    );
    progress.line(&format!(
        "sft: {} items ({} examples{}), template {}, {} steps ({} per epoch), batch {} × {} accumulation{}, {}: {}{}{}",
        data.train.len(),
        data.num_examples,
        if data.dropped > 0 {
            format!(", {} dropped with no label left", data.dropped)
        } else {
            String::new()
        },
        data.template.name,
        plan.total_steps,
        plan.steps_per_epoch,
        cfg.batch_size,
        cfg.gradient_accumulation_steps,
        ranks.map_or(String::new(), |r| format!(
            " × {} ranks ({})",
            r.world,
            r.group.engine()
        )),
        cfg.finetuning_type.name(),
        trainable,
        match cfg.optim {
            Optim::AdamW => String::new(),
            Optim::AdamW8bit { block } => format!(", 8-bit AdamW (block {block})"),
            Optim::Sgd => ", SGD".to_string(),
        },
        cfg.grad_quant
            .map_or(String::new(), |q| format!(", gradients rounded: {}", q.describe()))
    ));

    let lengths: Vec<usize> = data.train.iter().map(Item::len).collect();
    let mut order_cache: Option<(usize, Vec<usize>)> = None;
    let eval_every = cfg.eval_steps.unwrap_or(cfg.logging_steps);
    let started = Instant::now();
    let elapsed_before = state.elapsed;
    // Ctrl-C: rank 0 keeps a checkpoint of the last finished step; every rank reports it.
    let interrupt = |optim: &Optimizer,
                     rounding: &Option<GradQuantizer>,
                     state: &mut TrainerState,
                     last_saved: usize|
     -> Result<Error> {
        Ok(interrupted(
            main.then_some(out.as_path()),
            ranks,
            &trainable,
            optim,
            &residuals(rounding)?,
            state,
            last_saved,
            &progress,
            elapsed_before,
            &started,
        ))
    };
    let mut last_saved = state.global_step;
    let mut stopped = StopReason::Finished;
    // The last problem the live diagnosis warned about (each is said once).
    let mut warned: Option<Verdict> = None;
    let mut last_grad_bits: Option<f64> = None;
    // Each step's exchange, as this rank timed it (waiting for the others included).
    let mut exchange_seconds: Vec<f64> = Vec::new();
    let device = model.llama.device.clone();
    // LoRA's gradients are summed in f64 when a step adds several: a sum of a few f32 values is
    // then exact, so its order (one process adding a step's batches, or several ranks each adding
    // a share) cannot change the result. A lone process with one batch per step adds nothing and
    // keeps f32 (no extra casts on a GPU). Full and freeze weights are too large to double.
    let sum_dtype = (matches!(trainable, Trainable::Lora(_))
        && (ranks.is_some() || cfg.gradient_accumulation_steps > 1))
        .then_some(candle_core::DType::F64);

    while state.global_step < plan.total_steps {
        let s = state.global_step;
        let (epoch, range) = plan.batches_of(s, accumulation);
        if order_cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let order = epoch_order(
                &lengths,
                cfg.batch_size,
                cfg.seed,
                epoch,
                cfg.group_by_length,
            );
            order_cache = Some((epoch, order));
        }
        let order = &order_cache.as_ref().expect("just set").1;
        let batches: Vec<Vec<&Item>> = range
            .map(|b| {
                order[b * cfg.batch_size..((b + 1) * cfg.batch_size).min(order.len())]
                    .iter()
                    .map(|&i| &data.train[i])
                    .collect()
            })
            .collect();
        // The loss divides by the label tokens of the whole step, over all ranks.
        let step_targets: usize = batches.iter().flatten().map(|i| i.num_targets()).sum();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut step_loss = 0f64;
        let mut step_tokens = 0usize;
        let mut stop = false;
        for (j, items) in batches.iter().enumerate() {
            if !dp::is_mine(j, ranks) {
                continue;
            }
            if hooks.cancel.is_cancelled() {
                stop = true;
                break;
            }
            // Dropout is seeded by the step and the batch's place in it, not by the rank, so
            // any split of a step's batches over ranks draws the same masks.
            let dropout_rng = RefCell::new(Rng::new(
                cfg.seed
                    ^ (s as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)
                    ^ (j as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25),
            ));
            let dropout = Dropout {
                p: cfg.lora.dropout,
                rng: &dropout_rng,
            };
            let pass = Pass {
                adapter,
                train: true,
                dropout: Some(&dropout),
                ..Default::default()
            };
            step_tokens += padded_tokens(items);
            for group in compute_groups(items) {
                let batch = stack(&group, data.pad_id, &device)?;
                if batch.num_targets == 0 {
                    continue;
                }
                let forward = gradients::forward(
                    fmodel,
                    &batch,
                    pass,
                    step_targets as f64,
                    cfg.gradient_checkpointing,
                )?;
                step_loss += forward.loss()?;
                for (slot, g) in grads.iter_mut().zip(forward.backward(&vars)?) {
                    if let Some(g) = g {
                        let g = match sum_dtype {
                            Some(dtype) => g.to_dtype(dtype)?,
                            None => g,
                        };
                        *slot = Some(match slot.take() {
                            Some(acc) => (acc + g)?,
                            None => g,
                        });
                    }
                }
            }
        }
        let mut grads: Vec<Tensor> = grads
            .into_iter()
            .zip(&vars)
            .map(|(g, v)| {
                g.map_or_else(
                    || {
                        v.as_tensor()
                            .zeros_like()?
                            .to_dtype(sum_dtype.unwrap_or(v.dtype()))
                    },
                    Ok,
                )
            })
            .collect::<candle_core::Result<_>>()?;
        if let Some(ranks) = ranks {
            // A rank with no batch this step (an epoch's short last step) sends zeros, but sends.
            let exchange_started = Instant::now();
            let summed = dp::exchange(ranks, grads, step_loss, step_tokens, stop)?;
            exchange_seconds.push(exchange_started.elapsed().as_secs_f64());
            (grads, step_loss, step_tokens, stop) =
                (summed.grads, summed.loss, summed.tokens, summed.stop);
        }
        if sum_dtype.is_some() {
            grads = grads
                .iter()
                .zip(&vars)
                .map(|(g, v)| g.to_dtype(v.dtype()))
                .collect::<candle_core::Result<_>>()?;
        }
        if stop {
            // Ctrl-C on any rank: every rank stops before this step's update.
            return Err(interrupt(&optim, &rounding, &mut state, last_saved)?);
        }
        if !step_loss.is_finite() {
            progress.line(&format!(
                "step {}: the loss is {step_loss}; training diverged (lower the learning rate)",
                s + 1
            ));
        }
        // What a data-parallel worker would send: rounded before clipping and the optimizer.
        let grad_bits = match rounding.as_mut() {
            Some(q) => Some(q.apply(s, &mut grads)?),
            None => None,
        };
        last_grad_bits = grad_bits;
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        let lr = cfg.learning_rate
            * cfg
                .lr_scheduler_type
                .factor(s, plan.warmup, plan.total_steps);
        optim.step(&grads, lr)?;

        state.global_step = s + 1;
        state.window_loss += step_loss;
        state.window_steps += 1;
        state.total_tokens += step_tokens;
        state.elapsed = elapsed_before + started.elapsed().as_secs_f64();
        let step = state.global_step;
        let last = step == plan.total_steps;
        let tokens_per_sec = state.total_tokens as f64 / state.elapsed.max(1e-9);
        let next_lr = cfg.learning_rate
            * cfg
                .lr_scheduler_type
                .factor(step, plan.warmup, plan.total_steps);
        progress.update(step, step_loss, lr, tokens_per_sec);

        // What on_log said this step: go on, stop, or an error (the first one is kept).
        let mut callback: Result<bool> = Ok(true);
        if step % cfg.logging_steps == 0 || last {
            let loss = round(state.window_loss / state.window_steps as f64, 4);
            state.window_loss = 0.0;
            state.window_steps = 0;
            state.loss_history.push((step, loss));
            let mut event = base_event(&state, &plan, accumulation, s);
            event.insert("loss".into(), json!(loss));
            event.insert("grad_norm".into(), json!(round(grad_norm, 4)));
            event.insert("lr".into(), json!(next_lr));
            event.insert("throughput".into(), json!(round(tokens_per_sec, 2)));
            event.insert("total_tokens".into(), json!(state.total_tokens));
            if let Some(bits) = grad_bits {
                event.insert("grad_bits".into(), json!(round(bits, 4)));
            }
            progress.line(&format!(
                "step {step}/{}  loss {loss:.4}  lr {next_lr:.3e}  grad_norm {grad_norm:.3}{}  {tokens_per_sec:.0} tok/s  {} < {}",
                plan.total_steps,
                grad_bits.map_or(String::new(), |b| format!("  grad {b:.2} bits/elem")),
                event["elapsed_time"].as_str().unwrap_or(""),
                event["remaining_time"].as_str().unwrap_or("")
            ));
            heed(&mut callback, emit(log.as_ref(), &mut hooks, &event));
        }
        let mut save_now = step % cfg.save_steps == 0;
        if !data.eval.is_empty() && (step % eval_every == 0 || last) {
            let (eval_loss, accuracy) =
                evaluate(fmodel, adapter, &data, cfg.batch_size, hooks.cancel, ranks)?;
            let eval_loss = round(eval_loss, 4);
            state.eval_history.push((step, eval_loss, accuracy));
            let mut event = base_event(&state, &plan, accumulation, s);
            event.insert("eval_loss".into(), json!(eval_loss));
            event.insert("eval_accuracy".into(), json!(round(accuracy, 4)));
            progress.line(&format!(
                "step {step}/{}  eval_loss {eval_loss:.4}  eval_accuracy {accuracy:.4}",
                plan.total_steps
            ));
            if state.best_eval_loss.is_none_or(|b| eval_loss < b) {
                state.best_eval_loss = Some(eval_loss);
                state.best_step = Some(step);
                state.evals_without_improvement = 0;
                save_now |= cfg.early_stopping_patience.is_some();
            } else {
                state.evals_without_improvement += 1;
            }
            heed(&mut callback, emit(log.as_ref(), &mut hooks, &event));
            // The curves so far, read as a practitioner would at each evaluation: warn once per
            // new problem (overfitting, instability, divergence).
            if let Some(d) = live_warning(&state) {
                if warned != Some(d.verdict) {
                    progress.line(&format!("warning: {} ({})", d.headline, d.advice));
                    warned = Some(d.verdict);
                }
            }
            if let Some(patience) = cfg.early_stopping_patience {
                if state.evals_without_improvement >= patience && !last {
                    progress.line(&format!(
                        "early stopping: no eval improvement for {patience} evaluations (best {:.4} at step {})",
                        state.best_eval_loss.unwrap_or(f64::NAN),
                        state.best_step.unwrap_or(0)
                    ));
                    stopped = StopReason::EarlyStopped;
                }
            }
        }
        let keep_going = match ranks {
            Some(r) if hooks.on_log.is_some() => match agree_on_callbacks(r, callback)? {
                Together::Go => true,
                Together::Stop => false,
                Together::Cancelled => {
                    return Err(interrupt(&optim, &rounding, &mut state, last_saved)?)
                }
            },
            _ => callback?,
        };
        if !keep_going && stopped == StopReason::Finished && !last {
            stopped = StopReason::StoppedByCallback;
        }
        if save_now || stopped != StopReason::Finished {
            if let Some(ranks) = ranks {
                same_weights(ranks, &vars, step)?;
            }
            if main {
                let dir =
                    checkpoint::save(&out, &trainable, &optim, &residuals(&rounding)?, &state)?;
                progress.line(&format!("checkpoint: {}", dir.display()));
            }
            last_saved = step;
        }
        if stopped != StopReason::Finished {
            break;
        }
    }
    progress.finish();
    let mut allreduce = dp::ExchangeTime::default();
    if let Some(r) = ranks {
        allreduce = dp::exchange_time(r, &exchange_seconds)?;
        let training = state.elapsed - elapsed_before;
        progress.line(&format!(
            "data parallel: {} ranks over {}; of {training:.1} s rank 0 spent {:.2} s ({:.1}%) in the all-reduce itself and {:.2} s ({:.1}%) waiting there for slower ranks",
            r.world,
            r.group.engine(),
            allreduce.transfer,
            100.0 * allreduce.transfer / training.max(1e-9),
            allreduce.waiting,
            100.0 * allreduce.waiting / training.max(1e-9),
        ));
    }
    let (train_curve, eval_curve) = curves_of(&state);
    if !train_curve.is_empty() {
        progress.line(&train_curve.to_string());
    }
    let diagnosis =
        crate::curves::diagnose(&train_curve, Some(&eval_curve).filter(|c| !c.is_empty()));
    progress.line(&format!("diagnosis: {diagnosis}"));
    if cfg.plot_loss && main {
        for warning in plot_run(&out, &state) {
            progress.line(&format!("warning: {warning}"));
        }
    }

    // What the run trained at the top of the folder (LLaMA-Factory's layout: the adapter, or the
    // whole model for full and freeze); after early stopping the best checkpoint's.
    let best = match (&stopped, state.best_step) {
        (StopReason::EarlyStopped, Some(best)) => Some(checkpoint::dir_for(&out, best)),
        _ => None,
    };
    let optimizer_state_bytes = optim.state_bytes();
    let (final_adapter, final_model) = match trainable {
        Trainable::Lora(adapter) => {
            let mut adapter = match &best {
                Some(dir) => crate::lora::peft::load(dir, &model.llama)?,
                None => adapter,
            };
            adapter.template = Some(data.template.name.to_string());
            if main {
                crate::lora::peft::write_files(&adapter, &out)?;
            }
            (Some(adapter), None)
        }
        Trainable::Weights(weights) => {
            let trained = match &best {
                Some(dir) => checkpoint::load(dir, model, cfg.finetuning_type, &selected)?.0,
                None => Trainable::Weights(weights),
            };
            let trained = trainable::frozen(trained.model(model));
            let opts = crate::model::save::SaveHfOptions {
                dtype: Some(candle_core::DType::F32),
                template: Some(data.template.name.to_string()),
                ..Default::default()
            };
            if main {
                crate::model::save::save_hf_into(&trained, &out, &opts)?;
            }
            (None, Some(trained))
        }
    };
    let elapsed = state.elapsed;
    Ok(Run {
        out,
        adapter: final_adapter,
        model: final_model,
        finetuning_type: cfg.finetuning_type,
        optimizer_state_bytes,
        grad_bits: last_grad_bits,
        steps: state.global_step,
        total_steps: plan.total_steps,
        loss: state.loss_history.clone(),
        eval_loss: state.eval_history.iter().map(|&(s, l, _)| (s, l)).collect(),
        eval_accuracy: state.eval_history.iter().map(|&(s, _, a)| (s, a)).collect(),
        tokens_per_sec: state.total_tokens as f64 / elapsed.max(1e-9),
        total_tokens: state.total_tokens,
        elapsed,
        allreduce_seconds: allreduce.transfer,
        allreduce_wait_seconds: allreduce.waiting,
        stopped,
        best_step: state.best_step,
        template: data.template.name.to_string(),
        num_items: data.train.len(),
        dropped: data.dropped,
        diagnosis,
    })
}

/// The training and eval loss curves logged so far.
fn curves_of(state: &TrainerState) -> (Curve, Curve) {
    let eval: Vec<(usize, f64)> = state.eval_history.iter().map(|&(s, l, _)| (s, l)).collect();
    (
        Curve::new("loss", &state.loss_history),
        Curve::new("eval_loss", &eval),
    )
}

/// The diagnosis of the curves so far when it calls for attention (overfitting, unstable,
/// diverged); nothing while they look healthy or are too short to judge.
fn live_warning(state: &TrainerState) -> Option<crate::curves::Diagnosis> {
    let (train, eval) = curves_of(state);
    let d = crate::curves::diagnose(&train, Some(&eval).filter(|c| !c.is_empty()));
    matches!(
        d.verdict,
        Verdict::Overfitting | Verdict::Unstable | Verdict::Diverged
    )
    .then_some(d)
}

/// LLaMA-Factory's `plot_loss`: `training_loss.png`, and with validation
/// `training_eval_loss.png` and `training_eval_accuracy.png`, titled "training {key} of {out}".
/// A plot that cannot be drawn is a warning (returned), never a failed run.
fn plot_run(out: &Path, state: &TrainerState) -> Vec<String> {
    let accuracy: Vec<(usize, f64)> = state.eval_history.iter().map(|&(s, _, a)| (s, a)).collect();
    let (loss, eval_loss) = curves_of(state);
    let eval_accuracy = Curve::new("eval_accuracy", &accuracy);
    let mut warnings = Vec::new();
    for curve in [&loss, &eval_loss, &eval_accuracy] {
        if curve.is_empty() {
            continue;
        }
        let opts = PlotOptions {
            title: Some(format!("training {} of {}", curve.name, out.display())),
            ..PlotOptions::default()
        };
        let path = out.join(format!("training_{}.png", curve.name));
        match crate::curves::plot::plot(&[curve], &path, &opts) {
            Ok(w) => warnings.extend(w),
            Err(e) => warnings.push(format!("could not draw {}: {e}", path.display())),
        }
    }
    warnings
}

fn adam_params(cfg: &SftConfig) -> AdamParams {
    AdamParams {
        beta1: cfg.adam_beta1,
        beta2: cfg.adam_beta2,
        eps: cfg.adam_epsilon,
        weight_decay: cfg.weight_decay,
    }
}

/// A new folder `runs/train_<date-time>` for a run without `out`, created here so that two runs
/// started in the same second (two scripts, two processes) never share one: the second gets
/// `train_<date-time>-2`.
fn claim_run_folder(runs: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(runs).map_err(|e| Error::io(runs, e))?;
    let stamp = crate::clock::stamp();
    let mut n = 1;
    loop {
        let name = if n == 1 {
            format!("train_{stamp}")
        } else {
            format!("train_{stamp}-{n}")
        };
        let dir = runs.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
}

/// A run folder that already holds a run is never overwritten silently.
fn refuse_to_overwrite(out: &Path) -> Result<()> {
    if out.join("trainer_log.jsonl").exists() || checkpoint::latest(out).is_some() {
        return Err(Error::config(
            "out",
            format!(
                "{} already holds a run; pass resume: true to continue it, or choose another out folder",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// The fields every log event carries.
fn base_event(
    state: &TrainerState,
    plan: &Plan,
    accumulation: usize,
    s: usize,
) -> Map<String, Value> {
    let step = state.global_step;
    let elapsed = state.elapsed;
    let remaining = elapsed / step.max(1) as f64 * (plan.total_steps - step) as f64;
    let mut m = Map::new();
    m.insert("current_steps".into(), json!(step));
    m.insert("total_steps".into(), json!(plan.total_steps));
    m.insert(
        "epoch".into(),
        json!(round(plan.epoch_after(s, accumulation), 4)),
    );
    m.insert(
        "percentage".into(),
        json!(round(step as f64 / plan.total_steps as f64 * 100.0, 2)),
    );
    m.insert("elapsed_time".into(), json!(format_duration(elapsed)));
    m.insert("remaining_time".into(), json!(format_duration(remaining)));
    m
}

/// Write an event to the log (rank 0) and hand it to `on_log` (every rank: the events are the
/// same on every rank, so a script's decision to stop is too); false means stop.
fn emit(log: Option<&TrainerLog>, hooks: &mut Hooks, event: &Map<String, Value>) -> Result<bool> {
    if let Some(log) = log {
        log.write(event)?;
    }
    match hooks.on_log.as_mut() {
        Some(f) => f(event),
        None => Ok(true),
    }
}

/// Ctrl-C: keep a checkpoint of the last completed step (in `out`, rank 0 only), then report the
/// interruption.
#[allow(clippy::too_many_arguments)]
fn interrupted(
    out: Option<&Path>,
    ranks: Option<Ranks>,
    trainable: &Trainable,
    optim: &Optimizer,
    residuals: &[(String, Tensor)],
    state: &mut TrainerState,
    last_saved: usize,
    progress: &Progress,
    elapsed_before: f64,
    started: &Instant,
) -> Error {
    progress.finish();
    state.elapsed = elapsed_before + started.elapsed().as_secs_f64();
    let saved = match out {
        Some(out) if state.global_step > 0 && state.global_step != last_saved => {
            checkpoint::save(out, trainable, optim, residuals, state).map(Some)
        }
        _ => Ok(None),
    };
    // The other ranks wait for rank 0's checkpoint before they exit (an exit would end the job).
    if let Some(r) = ranks {
        if let Err(e) = r.group.barrier() {
            return e;
        }
    }
    match saved {
        Ok(Some(dir)) => progress.line(&format!(
            "interrupted: checkpoint {} saved; run sft again with resume: true to continue",
            dir.display()
        )),
        Ok(None) => {}
        Err(e) => return e,
    }
    Error::Cancelled
}

/// Before the first step: every rank must train the same model, trainable weights, data and
/// plan from the same step, or their exchanges would differ in size (a hang) or in meaning.
fn agree(
    ranks: Ranks,
    model: &Model,
    trainable: &Trainable,
    data: &Prepared,
    state: &TrainerState,
    vars: &[candle_core::Var],
    on_log: bool,
) -> Result<()> {
    let shapes: Vec<(String, Vec<usize>)> = trainable
        .named_vars()
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect();
    let items = [
        Agreement {
            what: "model",
            hash: dp::hash_of(&(
                &model.source,
                format!("{:?}", model.config()),
                format!("{:?}", model.llama.weights_dtype()),
            )),
            advice: "load the same model (file and dtype) on every rank",
        },
        Agreement {
            what: "trainable weights",
            hash: dp::hash_of(&(shapes, dp::checksum(vars)?)),
            advice: "give every rank the same LoRA settings, finetuning_type and seed",
        },
        Agreement {
            what: "training data",
            hash: dp::hash_of(&(&data.train, &data.eval)),
            advice:
                "give every rank the same dataset, template, cutoff_len, val_size and max_samples",
        },
        Agreement {
            what: "training settings",
            // With on_log, every rank runs its callback and their verdicts are compared each
            // time: every rank must have one.
            hash: dp::hash_of(&(state.fingerprint.to_string(), on_log)),
            advice: "run the same script with the same arguments on every rank",
        },
        Agreement {
            what: "checkpoint to resume from",
            hash: state.global_step as u64,
            advice: "resume needs out on a filesystem every rank sees",
        },
    ];
    dp::agree(ranks, &items)
}

/// At each save: the ranks still hold the same weights (they took the same steps from the same
/// gradients; a difference means an engine or a rank went wrong, and the run stops).
fn same_weights(ranks: Ranks, vars: &[candle_core::Var], step: usize) -> Result<()> {
    let items = [Agreement {
        what: "trained weights",
        hash: dp::checksum(vars)?,
        advice: "the ranks diverged; report this with the run's trainer_log.jsonl",
    }];
    dp::agree(ranks, &items).map_err(|e| Error::msg(format!("step {step}: {e}")))
}

/// Fold one `on_log` answer into the step's: an error stays, a stop stays.
fn heed(step: &mut Result<bool>, answer: Result<bool>) {
    if let Ok(go) = step {
        match answer {
            Ok(more) => *go &= more,
            Err(e) => *step = Err(e),
        }
    }
}

/// What the ranks' callbacks decided together.
enum Together {
    Go,
    Stop,
    Cancelled,
}

/// The ranks' `on_log` answers this step, compared (their events differ in times and throughput,
/// so they may answer differently): any error fails every rank, any Ctrl-C interrupts every rank,
/// any stop stops every rank.
fn agree_on_callbacks(ranks: Ranks, mine: Result<bool>) -> Result<Together> {
    let figures = match &mine {
        Ok(true) => [0.0, 0.0, 0.0],
        Ok(false) => [1.0, 0.0, 0.0],
        Err(Error::Cancelled) => [0.0, 1.0, 0.0],
        Err(_) => [0.0, 0.0, 1.0],
    };
    let [stops, cancels, errors] = dp::sum_figures(ranks, figures)?;
    if errors > 0.0 {
        mine?;
        return Err(Error::msg(
            "on_log failed on another rank (its error is printed by that rank)",
        ));
    }
    Ok(if cancels > 0.0 {
        Together::Cancelled
    } else if stops > 0.0 {
        Together::Stop
    } else {
        Together::Go
    })
}

/// Summed token loss of a batch (differentiable when `pass.train`) and its correct predictions.
fn batch_loss(model: &Model, batch: &Batch, pass: Pass) -> Result<(Tensor, usize)> {
    let logits = model.llama.forward_train(
        &batch.ids,
        &batch.positions,
        batch.segments.as_deref(),
        &batch.rows,
        pass,
    )?; // (N, V)
    cross_entropy_sum(&logits, &batch.targets)
}

/// Mean token loss and accuracy of the model (with its adapter, if any) on the evaluation items.
pub fn evaluate(
    model: &Model,
    adapter: Option<&Adapter>,
    data: &Prepared,
    batch_size: usize,
    cancel: &CancelToken,
    ranks: Option<Ranks>,
) -> Result<(f64, f64)> {
    let pass = Pass {
        adapter,
        train: false,
        dropout: None,
        ..Default::default()
    };
    let (mut sum, mut correct, mut n) = (0f64, 0usize, 0usize);
    let items: Vec<&Item> = data.eval.iter().collect();
    // Several ranks evaluate batches in turn and sum what they found.
    for (c, chunk) in items.chunks(batch_size).enumerate() {
        if !dp::is_mine(c, ranks) {
            continue;
        }
        for group in compute_groups(chunk) {
            // Several ranks must all reach the sums below; Ctrl-C stops them at the next step.
            if ranks.is_none() {
                cancel.check()?;
            }
            let batch = stack(&group, data.pad_id, &model.llama.device)?;
            if batch.num_targets == 0 {
                continue;
            }
            let (loss, ok) = batch_loss(model, &batch, pass)?;
            sum += loss.to_scalar::<f32>()? as f64;
            correct += ok;
            n += batch.num_targets;
        }
    }
    if let Some(ranks) = ranks {
        let [s, c, t] = dp::sum_figures(ranks, [sum, correct as f64, n as f64])?;
        (sum, correct, n) = (s, c.round() as usize, t.round() as usize);
    }
    Ok((sum / n.max(1) as f64, correct as f64 / n.max(1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_split_one_item_at_a_time_has_the_stacked_loss_and_gradients() {
        use crate::lora::{Adapter, LoraConfig};
        let model = crate::model::load("tiny", &Default::default()).unwrap();
        let adapter = Adapter::new(&model.llama, LoraConfig::default(), 3, "tiny").unwrap();
        for (_, var) in adapter.named_vars() {
            let noise = Tensor::randn(0f32, 0.05, var.shape(), &candle_core::Device::Cpu);
            var.set(&noise.unwrap()).unwrap();
        }
        let item = |n: usize, seed: u32| Item {
            input_ids: (0..n as u32).map(|j| 3 + (j * 31 + seed) % 200).collect(),
            labels: (0..n as i32)
                .map(|j| if j < 20 { -100 } else { 3 + j % 50 })
                .collect(),
            position_ids: None,
            segment_ids: None,
        };
        let (a, b) = (item(300, 1), item(140, 2));
        let items = [&a, &b];
        assert_eq!(
            compute_groups(&items).len(),
            2,
            "long and mostly padding: split"
        );
        let pass = Pass {
            adapter: Some(&adapter),
            train: true,
            ..Default::default()
        };
        let vars: Vec<_> = adapter.named_vars().into_iter().map(|(_, v)| v).collect();
        let loss_and_grads = |groups: Vec<Vec<&Item>>| {
            let mut total = 0f64;
            let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
            for group in groups {
                let batch = stack(&group, 0, &candle_core::Device::Cpu).unwrap();
                let (loss, _) = batch_loss(&model, &batch, pass).unwrap();
                total += loss.to_scalar::<f32>().unwrap() as f64;
                let store = loss.backward().unwrap();
                for (slot, v) in grads.iter_mut().zip(&vars) {
                    let g = store.get(v.as_tensor()).unwrap().detach();
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + g).unwrap(),
                        None => g,
                    });
                }
            }
            (total, grads)
        };
        let (stacked, g1) = loss_and_grads(vec![items.to_vec()]);
        let (split, g2) = loss_and_grads(compute_groups(&items));
        assert!(
            (stacked - split).abs() < 1e-5 * stacked.abs(),
            "{stacked} vs {split}"
        );
        for (x, y) in g1.iter().zip(&g2) {
            let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
            let diff = crate::model::max_abs_diff(x, y);
            let scale = x
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff <= 1e-4 * scale,
                "gradient differs by {diff} (scale {scale})"
            );
        }
    }

    #[test]
    fn runs_started_in_the_same_second_get_their_own_folders() {
        let runs = std::env::temp_dir().join(format!("tunelab-claim-{}", std::process::id()));
        let folders: Vec<PathBuf> = (0..3).map(|_| claim_run_folder(&runs).unwrap()).collect();
        assert!(folders.iter().all(|f| f.is_dir()), "{folders:?}");
        assert_ne!(folders[0], folders[1]);
        assert_ne!(folders[1], folders[2]);
        let _ = std::fs::remove_dir_all(&runs);
    }
}
