//! Dataset statistics: sizes, turns, characters, roles, what was skipped, and (given per-example
//! token counts from a tokenizer) a token-length histogram to choose `cutoff_len` from.

use std::collections::BTreeMap;

use super::dataset::{Dataset, SkipReport};
use super::example::Role;

/// Summary numbers of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub records: usize,
    /// Messages over all records (system prompts not counted).
    pub messages: usize,
    /// Assistant-side turns, the ones trained on.
    pub turns: usize,
    /// Characters over all records (system, tools, messages).
    pub chars: usize,
    pub min_chars: usize,
    pub max_chars: usize,
    /// Messages per role.
    pub roles: BTreeMap<Role, usize>,
    pub with_system: usize,
    pub with_tools: usize,
    pub skipped: SkipReport,
}

/// Compute the statistics of `ds`.
pub fn stats(ds: &Dataset) -> Stats {
    let mut s = Stats {
        records: ds.len(),
        messages: 0,
        turns: 0,
        chars: 0,
        min_chars: usize::MAX,
        max_chars: 0,
        roles: BTreeMap::new(),
        with_system: 0,
        with_tools: 0,
        skipped: ds.skipped().clone(),
    };
    for e in ds.iter() {
        let chars = e.chars();
        s.chars += chars;
        s.min_chars = s.min_chars.min(chars);
        s.max_chars = s.max_chars.max(chars);
        s.messages += e.messages.len();
        s.turns += e
            .messages
            .iter()
            .filter(|m| m.role.is_response_side())
            .count();
        for m in &e.messages {
            *s.roles.entry(m.role).or_default() += 1;
        }
        s.with_system += usize::from(!e.system.is_empty());
        s.with_tools += usize::from(!e.tools.is_empty() && e.tools != "[]");
    }
    if s.records == 0 {
        s.min_chars = 0;
    }
    s
}

/// A histogram of lengths: `(upper bound of the bucket, count)` with power-of-two buckets
/// (≤64, ≤128, ... ≤ the first power of two above the maximum).
pub fn length_histogram(lengths: &[usize]) -> Vec<(usize, usize)> {
    let max = lengths.iter().copied().max().unwrap_or(0);
    let mut bounds = vec![64];
    while *bounds.last().unwrap() < max {
        bounds.push(bounds.last().unwrap() * 2);
    }
    let mut counts = vec![0; bounds.len()];
    for &l in lengths {
        let i = bounds
            .iter()
            .position(|&b| l <= b)
            .unwrap_or(bounds.len() - 1);
        counts[i] += 1;
    }
    bounds.into_iter().zip(counts).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::example::{Example, Message};

    #[test]
    fn counts_roles_turns_and_chars() {
        let ex = Example {
            system: "sys".into(),
            tools: String::new(),
            messages: vec![
                Message::new(Role::User, "ab"),
                Message::new(Role::Function, "{}"),
                Message::new(Role::Observation, "x"),
                Message::new(Role::Assistant, "done"),
            ],
        };
        let ds = Dataset::new("t", "t", vec![ex], SkipReport::default());
        let s = stats(&ds);
        assert_eq!(
            (s.records, s.messages, s.turns, s.chars),
            (1, 4, 2, 3 + 2 + 2 + 1 + 4)
        );
        assert_eq!(s.roles[&Role::Observation], 1);
        assert_eq!(s.with_system, 1);
    }

    #[test]
    fn histogram_buckets_are_powers_of_two() {
        assert_eq!(
            length_histogram(&[1, 64, 65, 300]),
            vec![(64, 2), (128, 1), (256, 0), (512, 1)]
        );
    }
}
