//! Text generation: a prompt in, tokens out one at a time through the KV cache, streamed as text,
//! stopping at an end token, a stop string, the token budget, or Ctrl-C; and chat sessions.

pub mod chat;
pub mod sampling;
pub mod sequence;

use std::time::Instant;

use candle_core::Tensor;

use crate::cancel::CancelToken;
use crate::error::Result;
use crate::model::{KvCache, Logits, Model};
use sampling::SamplingOptions;
use sequence::Sequence;

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Text that ends generation (not included in the result).
    pub stop_strings: Vec<String>,
    /// Token ids that end generation, besides the model's own.
    pub stop_ids: Vec<u32>,
    /// A LoRA adapter applied on top of the model.
    pub adapter: Option<crate::lora::Adapter>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            sampling: SamplingOptions::default(),
            stop_strings: Vec::new(),
            stop_ids: Vec::new(),
            adapter: None,
        }
    }
}

/// What a generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// `stop` (an end token or stop string) or `length`.
    pub finish_reason: &'static str,
    /// Seconds spent on the prompt and on the new tokens.
    pub prompt_seconds: f64,
    pub generate_seconds: f64,
}

/// Continue `prompt_ids`, calling `on_text` with each piece of text as it becomes final.
pub fn generate(
    model: &Model,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    cancel: &CancelToken,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generated> {
    let device = &model.llama.device;
    let max_total = model.config().max_position_embeddings;
    let mut sequence = Sequence::new(prompt_ids, opts, &model.stop_ids, max_total);
    let mut cache = KvCache::default();
    let start = Instant::now();
    let mut prompt_seconds = 0.0;
    let mut input = Tensor::new(prompt_ids, device)?.unsqueeze(0)?; // (1, T)
    while !sequence.done() {
        cancel.check()?;
        let logits = model.llama.forward_in_pool(
            &input,
            Some(&mut cache),
            Logits::Last,
            opts.adapter.as_ref(),
        )?; // (1, 1, V)
        if sequence.new_tokens == 0 {
            prompt_seconds = start.elapsed().as_secs_f64();
        }
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let step = sequence.step(&logits, &model.tokenizer)?;
        if !step.text.is_empty() {
            on_text(&step.text);
        }
        match step.next {
            Some(next) => input = Tensor::new(&[next], device)?.unsqueeze(0)?,
            None => break,
        }
    }
    let rest = sequence.finish();
    if !rest.is_empty() {
        on_text(&rest);
    }
    Ok(Generated {
        text: sequence.text().to_string(),
        prompt_tokens: prompt_ids.len(),
        new_tokens: sequence.new_tokens,
        finish_reason: sequence.finish_reason.unwrap_or("length"),
        prompt_seconds,
        generate_seconds: start.elapsed().as_secs_f64() - prompt_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_model_generates_deterministically_within_the_budget() {
        let model = crate::model::load("tiny", &Default::default()).unwrap();
        let prompt = model.tokenizer.encode("hello").unwrap();
        let opts = GenerateOptions {
            max_new_tokens: 8,
            ..Default::default()
        };
        let mut streamed = String::new();
        let a = generate(&model, &prompt, &opts, &CancelToken::new(), &mut |t| {
            streamed.push_str(t)
        })
        .unwrap();
        let b = generate(&model, &prompt, &opts, &CancelToken::new(), &mut |_| {}).unwrap();
        assert_eq!(a.text, b.text);
        assert_eq!(streamed, a.text);
        assert!(a.new_tokens <= 8);
        let cancel = CancelToken::new();
        cancel.cancel();
        assert!(generate(&model, &prompt, &opts, &cancel, &mut |_| {}).is_err());
    }
}
