//! The quantization lab's second half on the `tiny` model: activation rounding (8-bit blocks are
//! ggml's own arithmetic; every option changes what it should), and low-rank compensation (each
//! scaling removes error, LoftQ carries its re-quantized base, reports count the factors' bytes).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tunelab::cancel::CancelToken;
use tunelab::ggml::act_round::{Granularity, InputRounding};
use tunelab::model::linear::Linear;
use tunelab::model::{self, Model};
use tunelab::quant::activations::{quantize_activations, ActivationOptions, RangeMode};
use tunelab::quant::lowrank::{lowrank, LowRankOptions, Scale};
use tunelab::quant::plan::{QuantPlan, Target};
use tunelab::quant::quantize_model::quantize_model;
use tunelab::quant::report::{report, ReportOptions};

fn tiny() -> Model {
    model::load("tiny", &Default::default()).unwrap()
}

fn text() -> String {
    let words = [
        "the", "model", "reads", "a", "long", "text", "about", "rounding", "numbers", "well",
    ];
    (0..600)
        .map(|i| words[(i * 7 + i / 3) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = tunelab::rng::Rng::new(seed);
    (0..rows * cols)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}

fn kl(q: &Model, reference: &Model, adapter: Option<tunelab::lora::Adapter>) -> f64 {
    let opts = ReportOptions {
        text: Some(text()),
        ctx: Some(64),
        chunks: Some(4),
        adapter,
        ..Default::default()
    };
    report(q, reference, &opts, &CancelToken::new())
        .unwrap()
        .agreement
        .unwrap()
        .kl_mean
}

#[test]
fn eight_bit_blocks_through_ggml_equal_rounding_then_the_dequantized_product() {
    let (n, k, rows) = (48, 256, 5);
    let w = Tensor::from_vec(random(n, k, 1), (n, k), &Device::Cpu).unwrap();
    let x: Vec<f32> = random(rows, k, 2).iter().map(|v| v * 3.0).collect();
    let xt = Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu).unwrap();
    for (dtype, block) in [
        (GgmlDType::Q8_0, 32),
        (GgmlDType::Q4_1, 32),
        (GgmlDType::Q4K, 256),
    ] {
        let q = QTensor::quantize(&w, dtype).unwrap();
        let dequant = q.dequantize(&Device::Cpu).unwrap();
        let mut lin = Linear::quantized(q, None).unwrap();
        let rounding = InputRounding::dynamic(8, Granularity::Block(block));
        assert!(rounding.uses_ggml_kernel(dtype));
        // The explicit route: round the input, multiply by the dequantized weight.
        let xr = Tensor::from_vec(rounding.round(&x, k), (rows, k), &Device::Cpu).unwrap();
        let want: Vec<f32> = xr
            .matmul(&dequant.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        lin.input_rounding = Some(Arc::new(rounding));
        let got: Vec<f32> = lin
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // …and the llama.cpp mode is the same computation.
        lin.input_rounding = Some(Arc::new(InputRounding::ggml()));
        let ggml: Vec<f32> = lin
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, ggml, "{dtype:?}");
        // Q8_1 (Q4_1's partner) also stores each block's Σq·d in f16, which ggml multiplies by
        // the weight's offset: that f16 rounding is the one difference from rounding alone.
        let tolerance = if dtype == GgmlDType::Q4_1 { 2e-3 } else { 1e-4 };
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= tolerance * scale, "{dtype:?}: {a} vs {b}");
        }
    }
}

#[test]
fn fewer_bits_cost_more_and_outlier_columns_are_reported() {
    let m = tiny();
    let cancel = CancelToken::new();
    let with = |bits: u32, granularity: Granularity, threshold: Option<f32>| {
        let opts = ActivationOptions {
            bits,
            granularity,
            outlier_threshold: threshold,
            ..Default::default()
        };
        quantize_activations(&m, None, &opts, &cancel).unwrap()
    };
    let (k8, k4) = (
        kl(&with(8, Granularity::Token, None), &m, None),
        kl(&with(4, Granularity::Token, None), &m, None),
    );
    assert!(k8 > 0.0 && k4 > 2.0 * k8, "8-bit {k8}, 4-bit {k4}");
    // Per tensor shares one scale among all tokens: worse than per token.
    let kt = kl(&with(8, Granularity::Tensor, None), &m, None);
    assert!(kt > k8, "per tensor {kt} vs per token {k8}");
    // Keeping the largest columns in f32 helps 4-bit, and the share kept is reported.
    let kept = with(4, Granularity::Token, Some(3.0));
    let r = report(
        &kept,
        &m,
        &ReportOptions {
            text: Some(text()),
            ctx: Some(64),
            chunks: Some(4),
            ..Default::default()
        },
        &cancel,
    )
    .unwrap();
    let fraction = r.outlier_fraction.unwrap();
    assert!(fraction > 0.0 && fraction < 1.0, "{fraction}");
    assert!(r.agreement.as_ref().unwrap().kl_mean < k4);
    assert!(r
        .activations
        .clone()
        .unwrap()
        .contains("columns above 3 kept in f32"));
    assert_eq!(r.census.len(), m.llama.blocks.len() * 4 + 1);
    assert!(r.table().contains("activation outliers"));
}

#[test]
fn static_ranges_and_smoothing_run_on_calibration_text() {
    let m = tiny();
    let cancel = CancelToken::new();
    let opts = ActivationOptions {
        granularity: Granularity::Tensor,
        mode: RangeMode::Static,
        calibration: Some(text()),
        ctx: 64,
        smooth_alpha: Some(0.5),
        ..Default::default()
    };
    let plan = QuantPlan::new(Target::named("Q8_0").unwrap());
    let q = quantize_activations(&m, Some(&plan), &opts, &cancel).unwrap();
    assert!(q.quantized);
    let r = q.input_rounding().unwrap();
    assert!(r.static_absmax.is_some() && r.describe().contains("SmoothQuant α 0.5"));
    assert!(kl(&q, &m, None).is_finite());
    // SmoothQuant changes weights before quantizing them: a quantized model is refused.
    let e = quantize_activations(&quantize_model(&m, &plan).unwrap(), None, &opts, &cancel)
        .unwrap_err();
    assert!(e.to_string().contains("unquantized model"), "{e}");
}

#[test]
fn every_scaling_removes_error_and_the_factors_count_in_the_size() {
    let m = tiny();
    let q = quantize_model(&m, &QuantPlan::new(Target::named("Q4_0").unwrap())).unwrap();
    let cancel = CancelToken::new();
    let bare = kl(&q, &m, None);
    for scale in Scale::ALL {
        let opts = LowRankOptions {
            rank: 4,
            scale,
            text: Some(text()),
            ctx: 64,
            ..Default::default()
        };
        let r = lowrank(&q, &m, &opts, &cancel, &mut |_, _| {}).unwrap();
        assert_eq!(r.fits.len(), m.llama.blocks.len() * 7);
        assert!(r.fits.iter().all(|f| f.after < f.before), "{scale:?}");
        let with = kl(&q, &m, Some(r.adapter.clone()));
        assert!(with < bare, "{scale:?}: {with} vs {bare}");
        let rep = report(
            &q,
            &m,
            &ReportOptions {
                adapter: Some(r.adapter.clone()),
                ..Default::default()
            },
            &cancel,
        )
        .unwrap();
        assert_eq!(rep.adapter_bytes, r.adapter.num_params() as u64 * 4);
        assert!(
            rep.bits_per_weight
                > report(&q, &m, &Default::default(), &cancel)
                    .unwrap()
                    .bits_per_weight
        );
    }
    // Without text, the input-weighted scalings say what they need.
    let e = lowrank(
        &q,
        &m,
        &LowRankOptions {
            scale: Scale::Lqer,
            ..Default::default()
        },
        &cancel,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("key \"text\""), "{e}");
}

#[test]
fn loftq_re_quantizes_the_base_and_lowers_the_error_further() {
    let m = tiny();
    let q = quantize_model(&m, &QuantPlan::new(Target::named("Q4_0").unwrap())).unwrap();
    let cancel = CancelToken::new();
    let one = LowRankOptions {
        rank: 4,
        scale: Scale::Identity,
        ..Default::default()
    };
    let first = lowrank(&q, &m, &one, &cancel, &mut |_, _| {}).unwrap();
    assert!(first.base.is_none() && first.adapter.requantized_base.is_none());
    let three = LowRankOptions { iters: 3, ..one };
    let loft = lowrank(&q, &m, &three, &cancel, &mut |_, _| {}).unwrap();
    let base = loft.base.clone().unwrap();
    let total = |fits: &[tunelab::quant::lowrank::TensorFit]| {
        fits.iter().map(|f| f.after * f.after).sum::<f64>()
    };
    assert!(
        total(&loft.fits) < total(&first.fits),
        "{} vs {}",
        total(&loft.fits),
        total(&first.fits)
    );
    // The adapter belongs to the re-quantized base: reporting it on the old one is refused.
    let opts = ReportOptions {
        adapter: Some(loft.adapter.clone()),
        ..Default::default()
    };
    let e = report(&q, &m, &opts, &cancel).unwrap_err();
    assert!(e.to_string().contains("adapter.base"), "{e}");
    assert!(report(&base, &m, &opts, &cancel).is_ok());
}
