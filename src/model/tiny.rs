//! The built-in `tiny` preset: a small Llama (≈0.9 M parameters) with seeded random weights and a
//! real byte-level BPE tokenizer (1024 tokens learned from the shipped data, ChatML specials),
//! for the quickstart, tutorials and tests: it loads in milliseconds and trains in seconds.

use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::linear::Linear;
use super::llama::{Block, Llama};
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// The tokenizer, compiled in (made by scripts/dev/make_tiny_tokenizer.py).
const TOKENIZER_JSON: &str = include_str!("tiny_tokenizer.json");

/// Standard deviation of the random token embeddings (tied to the output layer). Larger than
/// Hugging Face's `initializer_range` (0.02) so the logits can become confident: with LoRA only
/// the blocks train, and 0.02-scale output rows would cap every logit near ±2.6, leaving the
/// tiny model's loss stuck near ln(vocab) whatever the adapter learns.
const EMBED_STD: f32 = 0.1;

/// The preset's shape.
pub fn config(vocab_size: usize, eos: Vec<u32>) -> LlamaConfig {
    LlamaConfig {
        architecture: "llama".into(),
        vocab_size,
        hidden_size: 128,
        intermediate_size: 384,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 2048,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: None,
        eos_token_ids: eos,
    }
}

/// The preset's tokenizer.
pub fn tokenizer() -> Result<Tokenizer> {
    let inner = tokenizers::Tokenizer::from_bytes(TOKENIZER_JSON.as_bytes())
        .map_err(|e| Error::msg(format!("the built-in tiny tokenizer is broken: {e}")))?;
    Ok(Tokenizer::new(
        inner,
        "built-in byte-level BPE (1024 tokens)",
    ))
}

/// Normal(0, std) values from `rng` (Box–Muller), so weights depend only on the seed.
fn normal(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        out.push((r * theta.cos()) as f32 * std);
        if out.len() < n {
            out.push((r * theta.sin()) as f32 * std);
        }
    }
    out
}

/// Build the preset with weights drawn from `seed`.
pub fn build(seed: u64, dtype: DType, device: &Device) -> Result<(Llama, Tokenizer)> {
    let tok = tokenizer()?;
    let eos: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| tok.token_id(t))
        .collect();
    let cfg = config(tok.vocab_size(), eos);
    let mut rng = Rng::new(seed);
    // Projections: std 1/√fan_in keeps activations at unit scale through the blocks.
    let mut matrix = |rows: usize, cols: usize| -> Result<Tensor> {
        let std = if rows == cfg.vocab_size {
            EMBED_STD
        } else {
            1.0 / (cols as f32).sqrt()
        };
        Ok(
            Tensor::from_vec(normal(&mut rng, rows * cols, std), (rows, cols), device)?
                .to_dtype(dtype)?,
        )
    };
    let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let embed = matrix(cfg.vocab_size, c)?;
    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for _ in 0..cfg.num_hidden_layers {
        blocks.push(Block {
            attn_norm: Tensor::ones(c, dtype, device)?,
            q: Linear::dense(matrix(q, c)?, None),
            k: Linear::dense(matrix(kv, c)?, None),
            v: Linear::dense(matrix(kv, c)?, None),
            o: Linear::dense(matrix(c, q)?, None),
            mlp_norm: Tensor::ones(c, dtype, device)?,
            gate: Linear::dense(matrix(f, c)?, None),
            up: Linear::dense(matrix(f, c)?, None),
            down: Linear::dense(matrix(c, f)?, None),
        });
    }
    let norm = Tensor::ones(c, dtype, device)?;
    let lm_head = Linear::dense(embed.clone(), None);
    Ok((Llama::new(cfg, embed, blocks, norm, lm_head, dtype), tok))
}
