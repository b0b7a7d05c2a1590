//! Training speed as `scripts/bench/sft.sh` measures it, matching its PyTorch + PEFT peer
//! (`scripts/bench/sft_peft.py`): one batch of `batch × seq` random token ids whose first 40% of
//! each row is prompt (label -100), LoRA rank r on the chosen targets, AdamW; one warm-up step,
//! then `steps` timed steps (forward, backward, optimizer), with the split between the three.
//! On a GPU, work is queued asynchronously: each phase waits for the device before its clock
//! stops, so the split is what the GPU spent.
//!
//! The same measure covers the low-precision modes: full or freeze fine-tuning instead of LoRA,
//! 8-bit AdamW, quantized gradients, gradient checkpointing; it reports the optimizer's state
//! bytes, the process's peak resident memory during the measured steps (the peak is reset first
//! where Linux allows) and, on a GPU, the memory pool's peak ([`crate::gpu_memory`]).

use std::cell::RefCell;
use std::time::Instant;

use candle_core::Tensor;

use super::batch::{stack, Item};
use super::config::Optim;
use super::grad_quant::{GradQuant, GradQuantizer};
use super::gradients;
use super::optim::{AdamParams, Optimizer};
use super::trainable::{self, FinetuningType, FreezeOptions, Trainable};
use crate::cancel::CancelToken;
use crate::data::encode::IGNORE;
use crate::error::Result;
use crate::lora::{Adapter, Dropout, LoraConfig};
use crate::model::{Model, Pass};
use crate::rng::Rng;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub batch: usize,
    pub seq: usize,
    pub lora: LoraConfig,
    pub steps: usize,
    pub seed: u64,
    pub finetuning_type: FinetuningType,
    pub freeze: FreezeOptions,
    pub optim: Optim,
    pub grad_quant: Option<GradQuant>,
    /// Recompute each block in the backward pass instead of keeping its activations.
    pub gradient_checkpointing: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            batch: 4,
            seq: 256,
            lora: LoraConfig::default(),
            steps: 3,
            seed: 0,
            finetuning_type: FinetuningType::Lora,
            freeze: FreezeOptions::default(),
            optim: Optim::AdamW,
            grad_quant: None,
            gradient_checkpointing: false,
        }
    }
}

/// What was measured (seconds per step; medians over the timed steps).
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub step_seconds: Vec<f64>,
    pub median_step_seconds: f64,
    pub forward_seconds: f64,
    pub backward_seconds: f64,
    pub optimizer_seconds: f64,
    pub cpu_seconds_per_step: Option<f64>,
    pub tokens_per_sec: f64,
    pub losses: Vec<f64>,
    pub trainable_params: usize,
    /// Bytes of AdamW's moments.
    pub optimizer_state_bytes: usize,
    /// The process's peak resident memory over the benchmark, and what it held when the
    /// benchmark started (model and data already loaded; None off Linux).
    pub peak_rss_bytes: Option<u64>,
    pub start_rss_bytes: Option<u64>,
    /// Bits per gradient element sent, when gradients are quantized.
    pub grad_bits: Option<f64>,
    /// On a GPU: the memory pool's peaks over the benchmark (everything the benchmark allocated
    /// on top of the model, and the model itself).
    pub gpu_peak: Option<crate::gpu_memory::PeakMemory>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Run the benchmark.
pub fn bench_sft(model: &Model, opts: &BenchOptions, cancel: &CancelToken) -> Result<BenchResult> {
    let mut rng = Rng::new(opts.seed);
    let vocab = model.config().vocab_size;
    let prompt = opts.seq * 2 / 5;
    let items: Vec<Item> = (0..opts.batch)
        .map(|_| {
            let ids: Vec<u32> = (0..opts.seq).map(|_| rng.below(vocab) as u32).collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < prompt { IGNORE } else { t as i32 })
                .collect();
            Item::from(crate::data::encode::Encoded {
                input_ids: ids,
                labels,
            })
        })
        .collect();
    let refs: Vec<&Item> = items.iter().collect();
    let batch = stack(&refs, 0, &model.llama.device)?;
    crate::procstat::reset_peak_rss();
    crate::gpu_memory::reset_peak(&model.llama.device);
    let start_rss_bytes = crate::procstat::rss_bytes();
    let layers = model.config().num_hidden_layers;
    let trainable = match opts.finetuning_type {
        FinetuningType::Lora => Trainable::Lora(Adapter::new(
            &model.llama,
            opts.lora.clone(),
            opts.seed,
            &model.source,
        )?),
        ftype => {
            let freeze = (ftype == FinetuningType::Freeze).then(|| opts.freeze.clone());
            let selected = trainable::selector(freeze, layers);
            Trainable::Weights(trainable::weights(model, &selected, None)?)
        }
    };
    let fmodel = trainable.model(model);
    let vars: Vec<_> = trainable.named_vars().into_iter().map(|(_, v)| v).collect();
    let mut optim = Optimizer::for_setting(opts.optim, vars.clone(), AdamParams::default())?;
    let sizes: Vec<usize> = vars.iter().map(|v| v.as_tensor().elem_count()).collect();
    let mut rounding = opts
        .grad_quant
        .map(|q| GradQuantizer::new(q, opts.seed, &sizes));
    let mut grad_bits = None;
    let dropout_rng = RefCell::new(Rng::new(opts.seed));
    let dropout = Dropout {
        p: opts.lora.dropout,
        rng: &dropout_rng,
    };
    let pass = Pass {
        adapter: trainable.adapter(),
        train: true,
        dropout: Some(&dropout),
        ..Default::default()
    };
    let (mut steps, mut fwd, mut bwd, mut opt, mut losses) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut cpu_start = None;
    for i in 0..=opts.steps {
        cancel.check()?;
        if i == 1 {
            cpu_start = crate::procstat::process_stats().cpu_seconds;
        }
        let t0 = Instant::now();
        let forward = gradients::forward(
            fmodel,
            &batch,
            pass,
            batch.num_targets as f64,
            opts.gradient_checkpointing,
        )?;
        let value = forward.loss()?;
        let t1 = Instant::now();
        let mut grads: Vec<Tensor> = forward
            .backward(&vars)?
            .into_iter()
            .zip(&vars)
            .map(|(g, v)| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        model.llama.device.synchronize()?;
        let t2 = Instant::now();
        if let Some(q) = rounding.as_mut() {
            grad_bits = Some(q.apply(i, &mut grads)?);
        }
        optim.step(&grads, 1e-4)?;
        model.llama.device.synchronize()?;
        let t3 = Instant::now();
        if i > 0 {
            steps.push((t3 - t0).as_secs_f64());
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            opt.push((t3 - t2).as_secs_f64());
        }
        losses.push(value);
    }
    let cpu_end = crate::procstat::process_stats().cpu_seconds;
    let med = median(&steps);
    Ok(BenchResult {
        median_step_seconds: med,
        forward_seconds: median(&fwd),
        backward_seconds: median(&bwd),
        optimizer_seconds: median(&opt),
        cpu_seconds_per_step: cpu_start
            .zip(cpu_end)
            .map(|(a, b)| (b - a) / opts.steps as f64),
        tokens_per_sec: (opts.batch * opts.seq) as f64 / med,
        step_seconds: steps,
        losses,
        trainable_params: trainable.num_params(),
        optimizer_state_bytes: optim.state_bytes(),
        peak_rss_bytes: crate::procstat::process_stats().peak_rss_bytes,
        start_rss_bytes,
        grad_bits,
        gpu_peak: crate::gpu_memory::peak(&model.llama.device),
    })
}
