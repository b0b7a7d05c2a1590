//! Choosing the next token from logits: repetition penalty, temperature, top-k, top-p, min-p,
//! then a draw from the seeded generator — or the argmax when the temperature is 0 (greedy).
//! The order and the penalty rule follow Hugging Face transformers' logits processors.

use crate::rng::Rng;

/// Sampling settings; the defaults are greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    /// 0 = greedy; higher = more random.
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability adds up to p (1 = off).
    pub top_p: f64,
    /// Drop tokens less likely than min_p × the most likely one (0 = off).
    pub min_p: f64,
    /// Divide positive (multiply negative) logits of tokens already present (1 = off).
    pub repetition_penalty: f64,
    /// Seed of the draws.
    pub seed: u64,
    /// OpenAI's presence penalty: subtracted once from the logit of every token already
    /// generated (0 = off; the prompt does not count).
    pub presence_penalty: f64,
    /// OpenAI's frequency penalty: subtracted from a generated token's logit once per time it
    /// was generated (0 = off).
    pub frequency_penalty: f64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

/// A sampler with its own random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub options: SamplingOptions,
    rng: Rng,
}

impl Sampler {
    pub fn new(options: SamplingOptions) -> Self {
        let rng = Rng::new(options.seed);
        Sampler { options, rng }
    }

    /// The next token given the last position's `logits` and the tokens so far (`context`).
    pub fn next(&mut self, logits: &[f32], context: &[u32]) -> u32 {
        let o = &self.options;
        let mut logits = logits.to_vec();
        if o.repetition_penalty != 1.0 {
            let mut seen = context.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &id in &seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 {
                        *l / o.repetition_penalty as f32
                    } else {
                        *l * o.repetition_penalty as f32
                    };
                }
            }
        }
        if o.temperature <= 0.0 {
            return argmax(&logits);
        }
        // Candidates sorted by logit, descending.
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if o.top_k > 0 {
            order.truncate(o.top_k);
        }
        let max = logits[order[0]] as f64;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / o.temperature).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        let mut keep = probs.len();
        if o.top_p < 1.0 {
            let mut cum = 0.0;
            for (n, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= o.top_p {
                    keep = n + 1;
                    break;
                }
            }
        }
        if o.min_p > 0.0 {
            let floor = o.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut draw = self.rng.next_f64() * total;
        for (n, p) in probs[..keep].iter().enumerate() {
            draw -= p;
            if draw <= 0.0 {
                return order[n] as u32;
            }
        }
        order[keep - 1] as u32
    }
}

/// `logits` with OpenAI's penalties applied for the tokens `generated` so far:
/// `logit − count·frequency − (count > 0)·presence`.
pub fn openai_penalties(
    logits: &[f32],
    generated: &[u32],
    presence: f64,
    frequency: f64,
) -> Vec<f32> {
    let mut counts = std::collections::HashMap::<u32, usize>::new();
    for &id in generated {
        *counts.entry(id).or_default() += 1;
    }
    let mut out = logits.to_vec();
    for (id, n) in counts {
        if let Some(l) = out.get_mut(id as usize) {
            *l -= (n as f64 * frequency + presence) as f32;
        }
    }
    out
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_penalty_can_change_it() {
        let logits = [1.0, 3.0, 2.0];
        assert_eq!(
            Sampler::new(SamplingOptions::default()).next(&logits, &[]),
            1
        );
        let mut s = Sampler::new(SamplingOptions {
            repetition_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.next(&logits, &[1]), 2, "3.0 / 2 = 1.5 < 2.0");
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy_and_seeds_repeat() {
        let logits = [0.5, 0.1, 2.0, 1.9];
        for opts in [
            SamplingOptions {
                temperature: 1.0,
                top_k: 1,
                ..Default::default()
            },
            SamplingOptions {
                temperature: 1.0,
                top_p: 1e-6,
                ..Default::default()
            },
            SamplingOptions {
                temperature: 1.0,
                min_p: 0.99,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(opts);
            assert!((0..20).all(|_| s.next(&logits, &[]) == 2));
        }
        let draws = |seed| {
            let mut s = Sampler::new(SamplingOptions {
                temperature: 1.0,
                seed,
                ..Default::default()
            });
            (0..30).map(|_| s.next(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draws(5), draws(5));
        assert!(
            draws(5).iter().any(|&t| t != 2),
            "temperature 1 must sometimes pick others"
        );
    }
}
