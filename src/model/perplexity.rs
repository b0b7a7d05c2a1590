//! Perplexity exactly as `llama-perplexity` defines it, so figures compare with llama.cpp's on the
//! same GGUF and text: the text is tokenized once and cut into non-overlapping windows of `ctx`
//! tokens (a partial last window is dropped); in each window the first token becomes BOS when the
//! model adds one, and only the second half is scored — position j predicts token j+1 for
//! j in ctx/2 .. ctx-1. Perplexity is exp(mean negative log-likelihood) over all scored tokens.

use candle_core::{DType, Device, Tensor};

use super::llama::{log_softmax, Logits, Pass};
use super::Model;
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::lora::Adapter;

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

/// The scoring windows of a text for a model: its tokens cut into `count` windows of `ctx`.
#[derive(Debug, Clone)]
pub struct Windows {
    tokens: Vec<u32>,
    bos: Option<u32>,
    pub ctx: usize,
    pub count: usize,
}

impl Windows {
    /// `text` tokenized for `model`, in windows of `ctx`; at most `max_chunks` of them when given
    /// (llama-perplexity's `--chunks`).
    pub fn new(
        model: &Model,
        text: &str,
        ctx: usize,
        max_chunks: Option<usize>,
    ) -> Result<Windows> {
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
        let mut count = tokens.len() / ctx;
        if count == 0 {
            return Err(Error::msg(format!(
                "perplexity: the text has {} tokens, fewer than one window of ctx = {ctx}; use a longer text or a smaller ctx",
                tokens.len()
            )));
        }
        if let Some(max) = max_chunks {
            count = count.min(max.max(1));
        }
        Ok(Windows {
            tokens,
            bos,
            ctx,
            count,
        })
    }

    /// Positions scored per window: the second half, less the last (its next token is outside).
    pub fn scored_per_window(&self) -> usize {
        self.ctx - self.ctx / 2 - 1
    }

    /// Window `c`'s token ids (1, ctx) and the positions it scores (n), for a pass that computes
    /// the log-probabilities itself (the training forward of the gradient measures).
    pub fn ids_and_scored_rows(&self, c: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let first = self.ctx / 2;
        let rows: Vec<u32> = (first..first + self.scored_per_window())
            .map(|r| r as u32)
            .collect();
        Ok((self.ids(c, device)?, Tensor::new(rows.as_slice(), device)?))
    }

    /// Window `c`'s token ids, BOS first when the model adds one: (1, ctx).
    pub fn ids(&self, c: usize, device: &Device) -> Result<Tensor> {
        let ctx = self.ctx;
        let mut window = self.tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(bos) = self.bos {
            window[0] = bos;
        }
        Ok(Tensor::new(window.as_slice(), device)?.unsqueeze(0)?)
    }

    /// Window `c` through `model`: the log-probabilities at its scored positions (n, V), f32, and
    /// the tokens they should predict (n).
    pub fn log_probs(
        &self,
        model: &Model,
        c: usize,
        adapter: Option<&Adapter>,
    ) -> Result<(Tensor, Tensor)> {
        let (ctx, first) = (self.ctx, self.ctx / 2);
        let ids = self.ids(c, &model.llama.device)?; // (1, ctx)
        let pass = Pass {
            adapter,
            ..Default::default()
        };
        let logits = model
            .llama
            .forward_with(&ids, None, None, Logits::From(first), pass)?; // (1, ctx - first, V)
        let targets: Vec<u32> = (first..ctx - 1)
            .map(|j| self.tokens[c * ctx + j + 1])
            .collect();
        let targets = Tensor::new(targets.as_slice(), &model.llama.device)?; // (n)
        Ok((self.scored(&logits)?, targets))
    }

    /// The input of every block of `model` for window `c` ([`crate::model::llama::Llama::block_inputs`]).
    pub fn block_inputs(&self, model: &Model, c: usize) -> Result<Vec<Tensor>> {
        model.llama.block_inputs(&self.ids(c, &model.llama.device)?)
    }

    /// [`Windows::log_probs`]' log-probabilities (no adapter) from a pass that starts at block
    /// `start` with its input `x` from [`Windows::block_inputs`] — the blocks before it unchanged.
    pub fn log_probs_from_block(&self, model: &Model, start: usize, x: &Tensor) -> Result<Tensor> {
        let first = self.ctx / 2;
        let logits = model
            .llama
            .forward_from_block(start, x, Logits::From(first))?;
        self.scored(&logits)
    }

    /// Log-softmax of the logits (1, ctx − ctx/2, V) at the scored positions: (n, V), f32.
    fn scored(&self, logits: &Tensor) -> Result<Tensor> {
        let logp = log_softmax(&logits.squeeze(0)?.to_dtype(DType::F32)?)?;
        Ok(logp.narrow(0, 0, self.scored_per_window())?)
    }
}

/// Perplexity of `model` (with `adapter` applied, when given) on `text` with windows of `ctx`
/// tokens (at most `max_chunks` windows).
pub fn perplexity(
    model: &Model,
    text: &str,
    ctx: usize,
    max_chunks: Option<usize>,
    adapter: Option<&Adapter>,
    cancel: &CancelToken,
) -> Result<Perplexity> {
    let windows = Windows::new(model, text, ctx, max_chunks)?;
    let mut total_nll = 0.0f64;
    let mut scored = 0usize;
    for c in 0..windows.count {
        cancel.check()?;
        let (logp, targets) = windows.log_probs(model, c, adapter)?;
        let picked = logp.gather(&targets.unsqueeze(1)?, 1)?; // (n, 1)
        total_nll -= picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        scored += targets.dim(0)?;
    }
    let nll = total_nll / scored as f64;
    Ok(Perplexity {
        ppl: nll.exp(),
        tokens: scored,
        chunks: windows.count,
        nll,
    })
}
