//! One sequence being generated, apart from the model that runs it: what it has said, how to pick
//! its next token, and when it is done. Each step takes the logits of its last position and
//! gives back the next token to feed and the text that became final — held back while it could
//! still grow into a stop string, and never a broken UTF-8 character. [`super::generate`] drives
//! one sequence through the KV cache; a server can drive many, one batch per step.

use crate::error::Result;
use crate::model::tokenizer::{StreamDecoder, Tokenizer};

use super::sampling::{openai_penalties, Sampler};
use super::GenerateOptions;

/// What one step produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Text that became final with this token (may be empty).
    pub text: String,
    /// The token to feed next; None when the sequence has ended.
    pub next: Option<u32>,
    /// The token this step chose, when it became part of the text (not an end token).
    pub token: Option<u32>,
}

/// The state of one sequence between steps.
pub struct Sequence {
    sampler: Sampler,
    /// Prompt and generated tokens (what repetition penalties look at).
    context: Vec<u32>,
    decoder: StreamDecoder,
    /// Everything generated so far, stop string cut off.
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stop_ids: Vec<u32>,
    stop_strings: Vec<String>,
    max_new_tokens: usize,
    /// The context may not grow past this many tokens.
    max_total: usize,
    pub new_tokens: usize,
    pub prompt_tokens: usize,
    /// `stop` (an end token or stop string) or `length`; None while running.
    pub finish_reason: Option<&'static str>,
}

impl Sequence {
    /// A sequence continuing `prompt_ids` as `opts` asks; `model_stop_ids` are the model's own
    /// end tokens; the context ends at `max_total` tokens.
    pub fn new(
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        model_stop_ids: &[u32],
        max_total: usize,
    ) -> Sequence {
        let mut stop_ids = model_stop_ids.to_vec();
        stop_ids.extend(&opts.stop_ids);
        let mut s = Sequence {
            sampler: Sampler::new(opts.sampling.clone()),
            context: prompt_ids.to_vec(),
            decoder: StreamDecoder::default(),
            text: String::new(),
            emitted: 0,
            stop_ids,
            stop_strings: opts.stop_strings.clone(),
            max_new_tokens: opts.max_new_tokens,
            max_total,
            new_tokens: 0,
            prompt_tokens: prompt_ids.len(),
            finish_reason: None,
        };
        if !s.has_room() {
            s.finish_reason = Some("length");
        }
        s
    }

    /// Whether another token may be generated.
    fn has_room(&self) -> bool {
        self.new_tokens < self.max_new_tokens && self.context.len() < self.max_total
    }

    /// Whether the sequence has ended.
    pub fn done(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// Everything generated so far (a stop string cut off).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Take the logits of the last position: pick the next token, and return the text that
    /// became final and the token to feed next (None: the sequence ended — call
    /// [`Sequence::finish`] for the rest of its text).
    pub fn step(&mut self, logits: &[f32], tokenizer: &Tokenizer) -> Result<Step> {
        let o = &self.sampler.options;
        let penalized;
        let logits = if o.presence_penalty != 0.0 || o.frequency_penalty != 0.0 {
            let generated = &self.context[self.prompt_tokens..];
            penalized =
                openai_penalties(logits, generated, o.presence_penalty, o.frequency_penalty);
            &penalized
        } else {
            logits
        };
        let next = self.sampler.next(logits, &self.context);
        self.new_tokens += 1;
        if self.stop_ids.contains(&next) {
            self.finish_reason = Some("stop");
            return Ok(Step {
                text: String::new(),
                next: None,
                token: None,
            });
        }
        self.context.push(next);
        self.text.push_str(&self.decoder.push(tokenizer, next)?);
        if let Some(cut) = self
            .stop_strings
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(cut);
            self.finish_reason = Some("stop");
            return Ok(Step {
                text: String::new(),
                next: None,
                token: Some(next),
            });
        }
        // Hold back a tail that could still grow into a stop string.
        let hold = self
            .stop_strings
            .iter()
            .map(|s| longest_prefix_suffix(&self.text, s))
            .max()
            .unwrap_or(0);
        let ready = self.text.len() - hold;
        let mut text = String::new();
        if ready > self.emitted && self.text.is_char_boundary(ready) {
            text = self.text[self.emitted..ready].to_string();
            self.emitted = ready;
        }
        if !self.has_room() {
            self.finish_reason = Some("length");
        }
        Ok(Step {
            text,
            next: (!self.done()).then_some(next),
            token: Some(next),
        })
    }

    /// The text not yet handed out (the held-back tail, once nothing can follow it).
    pub fn finish(&mut self) -> String {
        let rest = self.text[self.emitted.min(self.text.len())..].to_string();
        self.emitted = self.text.len();
        rest
    }
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
    fn a_sequence_ends_at_its_budget_or_an_end_token() {
        let model = crate::model::load("tiny", &Default::default()).unwrap();
        let vocab = model.config().vocab_size;
        let opts = GenerateOptions {
            max_new_tokens: 3,
            sampling: super::super::sampling::SamplingOptions {
                temperature: 0.0,
                ..Default::default()
            },
            ..Default::default()
        };
        // Greedy on logits that always favour token 5: three steps, then "length".
        let mut logits = vec![0f32; vocab];
        logits[5] = 10.0;
        let mut s = Sequence::new(&[1, 2], &opts, &[], 1000);
        for _ in 0..2 {
            assert_eq!(s.step(&logits, &model.tokenizer).unwrap().next, Some(5));
        }
        assert_eq!(s.step(&logits, &model.tokenizer).unwrap().next, None);
        assert_eq!(s.finish_reason, Some("length"));
        // The same logits with 5 as an end token: "stop" at once.
        let mut s = Sequence::new(&[1, 2], &opts, &[5], 1000);
        assert_eq!(s.step(&logits, &model.tokenizer).unwrap().next, None);
        assert_eq!((s.finish_reason, s.new_tokens), (Some("stop"), 1));
        // A prompt that already fills the context has no room at all.
        assert!(Sequence::new(&[1, 2], &opts, &[], 2).done());
    }
}
