//! `shape:` models: Llama-3-8B's exact width with random weights, as a one-block slice on the
//! CPU (the GPU benchmark builds the whole model the same way): the shape is Meta's, a LoRA step
//! of rank 16 on every linear layer runs through it, and a quantized base (QLoRA) of it too.

#[path = "support/cli.rs"]
mod cli;

use tunelab::cancel::CancelToken;
use tunelab::lora::LoraConfig;
use tunelab::model::{self, LoadOptions};
use tunelab::train::bench::{bench_sft, BenchOptions};

fn slice() -> model::Model {
    let mut opts = LoadOptions {
        seed: 3,
        ..Default::default()
    };
    opts.shape.layers = Some(1);
    opts.shape.vocab_size = Some(2048);
    model::load("shape:llama-3-8b", &opts).unwrap()
}

#[test]
fn a_one_block_slice_of_llama_3_8b_has_its_width_and_trains() {
    let m = slice();
    let c = m.config();
    assert_eq!(
        (
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim
        ),
        (4096, 14336, 32, 8, 128)
    );
    assert_eq!(c.rope_theta, 500_000.0);
    // One block: q 4096², k and v 1024×4096, o 4096², three MLP matrices 14336×4096, two norms.
    let block = 2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096 + 2 * 4096;
    assert_eq!(c.num_params(), block + 2 * 2048 * 4096 + 4096);
    let opts = BenchOptions {
        batch: 1,
        seq: 32,
        steps: 2,
        lora: LoraConfig {
            rank: 16,
            alpha: 32.0,
            ..LoraConfig::default()
        },
        ..Default::default()
    };
    let r = bench_sft(&m, &opts, &CancelToken::new()).unwrap();
    assert!(r.losses.iter().all(|l| l.is_finite()), "{:?}", r.losses);
    // Rank 16 on the seven linear layers of one block: 16 × (in + out) each.
    let lora = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 2 + (14336 + 4096));
    assert_eq!(r.trainable_params, lora);
}

#[test]
fn its_q4_k_m_base_trains_a_lora_through_the_quantized_blocks() {
    use tunelab::quant::plan::{QuantPlan, Target};
    let m = slice();
    let q = tunelab::quant::quantize_model::quantize_model(
        &m,
        &QuantPlan::new(Target::named("Q4_K_M").unwrap()),
    )
    .unwrap();
    assert!(q.quantized, "the base is stored in ggml blocks");
    let opts = BenchOptions {
        batch: 1,
        seq: 32,
        steps: 2,
        ..Default::default()
    };
    let r = bench_sft(&q, &opts, &CancelToken::new()).unwrap();
    assert!(r.losses.iter().all(|l| l.is_finite()), "{:?}", r.losses);
}

/// The prepared 8B GPU benchmark (scripts/gpu/bench_8b.rhai) run on the CPU with a one-block,
/// small-vocabulary slice and gradient checkpointing, so it cannot rot where no GPU runs it: the
/// parity check passes and the result line is JSON with the memory fields (null off a GPU).
#[test]
fn the_8b_gpu_benchmark_script_runs_on_a_cpu_slice() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, stdout, stderr) = cli::tunelab_in(
        root,
        &[
            "run",
            "scripts/gpu/bench_8b.rhai",
            "--",
            "device=cpu",
            "layers=1",
            "slice_layers=1",
            "vocab=2048",
            "seq=16",
            "batch=1",
            "steps=1",
            "checkpointing=true",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("PARITY llama-3-8b slice"), "{stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH8B "))
        .expect("a BENCH8B line");
    let r: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["checkpointing"], true);
    assert!(r["gpu_peak_mb"].is_null(), "{r}");
}
