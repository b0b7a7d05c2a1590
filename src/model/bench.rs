//! Inference speed as `llama-bench` measures it: prompt processing (`pp`: one forward pass over
//! N prompt tokens) and text generation (`tg`: N single-token steps through the KV cache), in
//! tokens per second, each the median of `reps` runs. Token ids are taken from a fixed text so runs
//! repeat; end tokens do not stop the timing loop.

use std::time::Instant;

use candle_core::Tensor;

use super::{KvCache, Logits, Model};
use crate::cancel::CancelToken;
use crate::error::Result;

/// One benchmark result.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceSpeed {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Median tokens/s of prompt processing and of generation.
    pub prompt_tok_s: f64,
    pub generate_tok_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measure `pp` prompt tokens and `tg` generated tokens, `reps` times each.
pub fn bench(
    model: &Model,
    pp: usize,
    tg: usize,
    reps: usize,
    cancel: &CancelToken,
) -> Result<InferenceSpeed> {
    let device = &model.llama.device;
    let seed_text =
        "The quick brown fox jumps over the lazy dog while the model counts every token. ";
    let mut ids = model.tokenizer.encode(&seed_text.repeat(pp / 8 + 2))?;
    ids.truncate(pp.max(1));
    let (mut pp_rates, mut tg_rates) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        cancel.check()?;
        let mut cache = KvCache::default();
        let input = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?;
        let start = Instant::now();
        let logits = model
            .llama
            .forward_in_pool(&input, Some(&mut cache), Logits::Last, None)?;
        let mut next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        pp_rates.push(ids.len() as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for _ in 0..tg {
            cancel.check()?;
            let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
            let logits =
                model
                    .llama
                    .forward_in_pool(&input, Some(&mut cache), Logits::Last, None)?;
            next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        }
        tg_rates.push(tg as f64 / start.elapsed().as_secs_f64());
    }
    Ok(InferenceSpeed {
        prompt_tokens: ids.len(),
        generated_tokens: tg,
        prompt_tok_s: median(pp_rates),
        generate_tok_s: median(tg_rates),
    })
}
