//! Models of a real architecture's exact shape with seeded random weights: `shape:llama-3-8b`, or
//! `shape:PATH/config.json` for any Llama-family config. Speed and memory depend on the shape, not
//! on the values, so a benchmark at the chapter's scale (Llama 3 8B) needs no weights to download.
//!
//! A slice keeps the width and cuts the depth or the vocabulary (`layers`, `vocab_size` in
//! [`ShapeOptions`]), for checks on a CPU. Weights are drawn on the host in parallel chunks, each
//! from its own generator seeded by (seed, tensor, chunk), so the same seed gives the same weights
//! on any device and any number of threads (a GPU model can be checked against a CPU slice), then
//! converted to the compute dtype and moved to the device one tensor at a time. The tokenizer is
//! the tiny preset's (token ids are what a benchmark needs); generated text means nothing.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::config::LlamaConfig;
use super::linear::Linear;
use super::llama::{Block, Llama};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// How much of the shape to build.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShapeOptions {
    /// Blocks to build (default: all of the shape's).
    pub layers: Option<usize>,
    /// Vocabulary rows of the embedding and output layer (default: the shape's).
    pub vocab_size: Option<usize>,
}

/// Meta's Llama-3-8B (`config.json` of meta-llama/Meta-Llama-3-8B-Instruct).
pub fn llama_3_8b() -> LlamaConfig {
    LlamaConfig {
        architecture: "llama".into(),
        vocab_size: 128_256,
        hidden_size: 4096,
        intermediate_size: 14_336,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: Some(128_000),
        eos_token_ids: vec![128_001, 128_009],
    }
}

/// The shape `name` names: `llama-3-8b`, or a path to a Hugging Face `config.json`.
pub fn shape(name: &str) -> Result<LlamaConfig> {
    match name {
        "llama-3-8b" | "llama3-8b" => Ok(llama_3_8b()),
        path if path.ends_with(".json") => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            super::config::from_hf_json(&text, path)
        }
        other => Err(Error::msg(format!(
            "\"shape:{other}\" is not a shape: use shape:llama-3-8b or shape:PATH/config.json"
        ))),
    }
}

/// Values per independently seeded chunk.
const CHUNK: usize = 1 << 20;

/// A `rows × cols` matrix of Normal(0, std) values: tensor number `id` of the model.
fn normal_matrix(
    seed: u64,
    id: u64,
    (rows, cols): (usize, usize),
    std: f32,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut values = vec![0f32; rows * cols];
    values
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let mut rng = Rng::new(
                seed ^ (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (chunk as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
            );
            let mut i = 0;
            while i < out.len() {
                let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
                let u2 = rng.next_f64();
                let r = (-2.0 * u1.ln()).sqrt();
                let theta = 2.0 * std::f64::consts::PI * u2;
                out[i] = (r * theta.cos()) as f32 * std;
                if i + 1 < out.len() {
                    out[i + 1] = (r * theta.sin()) as f32 * std;
                }
                i += 2;
            }
        });
    Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}

/// Build `cfg` (sliced by `opts`) with weights drawn from `seed`.
pub fn build(
    mut cfg: LlamaConfig,
    opts: &ShapeOptions,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<(Llama, Tokenizer)> {
    if let Some(layers) = opts.layers {
        cfg.num_hidden_layers = layers.max(1);
    }
    let tok = super::tiny::tokenizer()?;
    if let Some(vocab) = opts.vocab_size {
        cfg.vocab_size = vocab.max(tok.vocab_size());
    }
    cfg.bos_token_id = None;
    cfg.eos_token_ids = tok.token_id("<|im_end|>").into_iter().collect();
    cfg.validate("shape")?;
    let mut next_id = 0u64;
    // Projections: std 1/√fan_in keeps activations at unit scale; embeddings 0.02 (HF's init).
    let mut matrix = |rows: usize, cols: usize, std: f32| -> Result<Tensor> {
        next_id += 1;
        normal_matrix(seed, next_id, (rows, cols), std, dtype, device)
    };
    let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let fan = |n: usize| 1.0 / (n as f32).sqrt();
    let embed = matrix(cfg.vocab_size, c, 0.02)?;
    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for _ in 0..cfg.num_hidden_layers {
        blocks.push(Block {
            attn_norm: Tensor::ones(c, dtype, device)?,
            q: Linear::dense(matrix(q, c, fan(c))?, None),
            k: Linear::dense(matrix(kv, c, fan(c))?, None),
            v: Linear::dense(matrix(kv, c, fan(c))?, None),
            o: Linear::dense(matrix(c, q, fan(q))?, None),
            mlp_norm: Tensor::ones(c, dtype, device)?,
            gate: Linear::dense(matrix(f, c, fan(c))?, None),
            up: Linear::dense(matrix(f, c, fan(c))?, None),
            down: Linear::dense(matrix(c, f, fan(f))?, None),
        });
    }
    let norm = Tensor::ones(c, dtype, device)?;
    let lm_head = if cfg.tie_word_embeddings {
        Linear::dense(embed.clone(), None)
    } else {
        Linear::dense(matrix(cfg.vocab_size, c, fan(c))?, None)
    };
    Ok((Llama::new(cfg, embed, blocks, norm, lm_head, dtype), tok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_3_8b_has_eight_billion_parameters() {
        let n = llama_3_8b().num_params();
        assert!((8_000_000_000..8_100_000_000).contains(&n), "{n}");
    }

    #[test]
    fn a_slice_keeps_the_width_and_its_weights_do_not_depend_on_threads() {
        let opts = ShapeOptions {
            layers: Some(1),
            vocab_size: Some(2048),
        };
        // Narrowed further for a unit test: the full width is the integration test's.
        let mut cfg = llama_3_8b();
        cfg.hidden_size = 256;
        cfg.intermediate_size = 896;
        cfg.num_attention_heads = 4;
        cfg.num_key_value_heads = 1;
        cfg.head_dim = 64;
        let (a, _) = build(cfg.clone(), &opts, 7, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(a.config.num_hidden_layers, 1);
        assert_eq!(a.config.vocab_size, 2048);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (b, _) = pool
            .install(|| build(cfg, &opts, 7, DType::F32, &Device::Cpu))
            .unwrap();
        let (x, y) = (a.hf_tensors().unwrap(), b.hf_tensors().unwrap());
        assert_eq!(x.len(), y.len());
        for ((n, t), (_, u)) in x.iter().zip(&y) {
            assert_eq!(crate::model::max_abs_diff(t, u), 0.0, "{n}");
        }
    }
}
