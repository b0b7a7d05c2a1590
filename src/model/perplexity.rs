//! Perplexity exactly as `llama-perplexity` defines it, so figures compare with llama.cpp's on the
//! same GGUF and text: the text is tokenized once and cut into non-overlapping windows of `ctx`
//! tokens (a partial last window is dropped); in each window the first token becomes BOS when the
//! model adds one, and only the second half is scored — position j predicts token j+1 for
//! j in ctx/2 .. ctx-1. Perplexity is exp(mean negative log-likelihood) over all scored tokens.

use candle_core::{DType, Tensor};

use super::llama::{log_softmax, Logits};
use super::Model;
use crate::cancel::CancelToken;
use crate::error::{Error, Result};

/// The result of a perplexity run.
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Windows evaluated.
    pub chunks: usize,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
}

/// Perplexity of `model` on `text` with windows of `ctx` tokens.
pub fn perplexity(
    model: &Model,
    text: &str,
    ctx: usize,
    cancel: &CancelToken,
) -> Result<Perplexity> {
    if ctx < 4 {
        return Err(Error::config(
            "perplexity",
            format!("ctx must be at least 4 tokens, got {ctx}"),
        ));
    }
    let mut tokens = model.tokenizer.encode(text)?;
    let bos = model.llama.config.bos_token_id.filter(|_| model.add_bos);
    if let Some(bos) = bos {
        tokens.insert(0, bos);
    }
    let chunks = tokens.len() / ctx;
    if chunks == 0 {
        return Err(Error::msg(format!(
            "perplexity: the text has {} tokens, fewer than one window of ctx = {ctx}; use a longer text or a smaller ctx",
            tokens.len()
        )));
    }
    let first = ctx / 2;
    let mut total_nll = 0.0f64;
    let mut scored = 0usize;
    for c in 0..chunks {
        cancel.check()?;
        let mut window = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(bos) = bos {
            window[0] = bos;
        }
        let ids = Tensor::new(window.as_slice(), &model.llama.device)?.unsqueeze(0)?; // (1, ctx)
        let logits = model.llama.forward(&ids, None, None, Logits::From(first))?; // (1, ctx - first, V)
        let logp = log_softmax(&logits.squeeze(0)?)?; // (ctx - first, V)
        let n = ctx - first - 1; // the last position has no next token inside the window
        let targets: Vec<u32> = (first..ctx - 1).map(|j| tokens[c * ctx + j + 1]).collect();
        let targets = Tensor::new(targets.as_slice(), &model.llama.device)?.unsqueeze(1)?; // (n, 1)
        let picked = logp.narrow(0, 0, n)?.gather(&targets, 1)?; // (n, 1)
        total_nll -= picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        scored += n;
    }
    let nll = total_nll / scored as f64;
    Ok(Perplexity {
        ppl: nll.exp(),
        tokens: scored,
        chunks,
        nll,
    })
}
