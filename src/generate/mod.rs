//! Text generation: a prompt in, tokens out one at a time through the KV cache, streamed as text,
//! stopping at an end token, a stop string, the token budget, or Ctrl-C; and chat sessions.

pub mod chat;
pub mod sampling;

use std::time::Instant;

use candle_core::Tensor;

use crate::cancel::CancelToken;
use crate::error::Result;
use crate::model::tokenizer::StreamDecoder;
use crate::model::{KvCache, Logits, Model};
use sampling::{Sampler, SamplingOptions};

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
    let mut stop_ids = model.stop_ids.clone();
    stop_ids.extend(&opts.stop_ids);
    let max_total = model.config().max_position_embeddings;
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut cache = KvCache::default();
    let mut context: Vec<u32> = prompt_ids.to_vec();
    let mut decoder = StreamDecoder::default();
    let mut text = String::new();
    let mut emitted = 0; // bytes of `text` already passed to on_text
    let start = Instant::now();
    let mut prompt_seconds = 0.0;
    let mut input = Tensor::new(prompt_ids, device)?.unsqueeze(0)?; // (1, T)
    let mut finish = "length";
    let mut new_tokens = 0;
    while new_tokens < opts.max_new_tokens && context.len() < max_total {
        cancel.check()?;
        let logits = model.llama.forward_in_pool(
            &input,
            Some(&mut cache),
            Logits::Last,
            opts.adapter.as_ref(),
        )?; // (1, 1, V)
        if new_tokens == 0 {
            prompt_seconds = start.elapsed().as_secs_f64();
        }
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let next = sampler.next(&logits, &context);
        new_tokens += 1;
        if stop_ids.contains(&next) {
            finish = "stop";
            break;
        }
        context.push(next);
        text.push_str(&decoder.push(&model.tokenizer, next)?);
        if let Some(cut) = opts
            .stop_strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
            finish = "stop";
            break;
        }
        // Hold back a tail that could still grow into a stop string.
        let hold = opts
            .stop_strings
            .iter()
            .map(|s| longest_prefix_suffix(&text, s))
            .max()
            .unwrap_or(0);
        let ready = text.len() - hold;
        if ready > emitted && text.is_char_boundary(ready) {
            on_text(&text[emitted..ready]);
            emitted = ready;
        }
        input = Tensor::new(&[next], device)?.unsqueeze(0)?;
    }
    if text.len() > emitted {
        on_text(&text[emitted..]);
    }
    Ok(Generated {
        text,
        prompt_tokens: prompt_ids.len(),
        new_tokens,
        finish_reason: finish,
        prompt_seconds,
        generate_seconds: start.elapsed().as_secs_f64() - prompt_seconds,
    })
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_tail_is_the_longest_stop_prefix() {
        assert_eq!(longest_prefix_suffix("hello <|im", "<|im_end|>"), 4);
        assert_eq!(longest_prefix_suffix("hello", "<|im_end|>"), 0);
        assert_eq!(longest_prefix_suffix("a\n\nUs", "\n\nUser:"), 4);
    }

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
