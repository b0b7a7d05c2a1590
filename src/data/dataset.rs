//! A loaded dataset: normalized examples plus the report of what was skipped, and the operations
//! scripts chain on it (take, shuffle, split, concat, sample, fill).
//!
//! A [`Dataset`] is immutable and cheap to clone: examples sit behind `Arc`s, so `shuffle` or
//! `split` on a million records copies pointers, not text. Every random operation takes a seed and
//! gives the same records for it on every machine ([`crate::rng::Rng`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::example::Example;
use crate::rng::Rng;

/// How many skip reasons (with their record numbers) a dataset keeps for display.
pub const MAX_KEPT_SKIP_REASONS: usize = 20;

/// What loading dropped, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipReport {
    /// Records skipped in all.
    pub total: usize,
    /// Count per reason category ("role order", "missing column", ...).
    pub by_kind: BTreeMap<String, usize>,
    /// The first reasons in full, e.g. `record 17: role "gpt" at position 0, expected a user turn`.
    pub first: Vec<String>,
}

impl SkipReport {
    /// Count one skip of category `kind` described by `reason`.
    pub fn add(&mut self, kind: &str, reason: String) {
        self.total += 1;
        *self.by_kind.entry(kind.to_string()).or_default() += 1;
        if self.first.len() < MAX_KEPT_SKIP_REASONS {
            self.first.push(reason);
        }
    }

    /// Both reports together (for `concat`).
    pub fn merged(&self, other: &SkipReport) -> SkipReport {
        let mut out = self.clone();
        out.total += other.total;
        for (k, n) in &other.by_kind {
            *out.by_kind.entry(k.clone()).or_default() += n;
        }
        for r in &other.first {
            if out.first.len() < MAX_KEPT_SKIP_REASONS {
                out.first.push(r.clone());
            }
        }
        out
    }
}

/// An immutable, cheaply cloned list of examples with a name and a provenance.
#[derive(Debug, Clone)]
pub struct Dataset {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    source: String,
    examples: Vec<Arc<Example>>,
    skipped: SkipReport,
}

impl Dataset {
    /// A dataset called `name`, from `source` (a description such as the file and format).
    pub fn new(
        name: impl Into<String>,
        source: impl Into<String>,
        examples: Vec<Example>,
        skipped: SkipReport,
    ) -> Self {
        Self::from_shared(
            name.into(),
            source.into(),
            examples.into_iter().map(Arc::new).collect(),
            skipped,
        )
    }

    /// Like [`Dataset::new`] for examples already behind `Arc`s (no second copy of the list).
    pub fn from_shared(
        name: String,
        source: String,
        examples: Vec<Arc<Example>>,
        skipped: SkipReport,
    ) -> Self {
        Dataset {
            inner: Arc::new(Inner {
                name,
                source,
                examples,
                skipped,
            }),
        }
    }

    /// A new dataset with the same name and provenance and the given examples.
    fn derive(&self, what: &str, examples: Vec<Arc<Example>>) -> Self {
        Self::from_shared(
            self.inner.name.clone(),
            format!("{}, {what}", self.inner.source),
            examples,
            self.inner.skipped.clone(),
        )
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where the examples came from and what was done to them.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    pub fn len(&self) -> usize {
        self.inner.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.examples.is_empty()
    }

    /// The example at `index`.
    pub fn get(&self, index: usize) -> Option<&Example> {
        self.inner.examples.get(index).map(|e| e.as_ref())
    }

    /// Every example, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Example> {
        self.inner.examples.iter().map(|e| e.as_ref())
    }

    /// What loading skipped.
    pub fn skipped(&self) -> &SkipReport {
        &self.inner.skipped
    }

    /// The first `n` examples (LLaMA-Factory's `max_samples`: no shuffling).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        self.derive(&format!("first {n}"), self.inner.examples[..n].to_vec())
    }

    /// All examples in an order fixed by `seed`.
    pub fn shuffle(&self, seed: u64) -> Dataset {
        let mut examples = self.inner.examples.clone();
        Rng::new(seed).shuffle(&mut examples);
        self.derive(&format!("shuffled (seed {seed})"), examples)
    }

    /// Shuffle with `seed`, then hold out `val_count` examples: `(train, val)`, as Hugging Face's
    /// `train_test_split` (which LLaMA-Factory's `val_size` uses) does: the held-out part is the
    /// first `val_count` of the shuffled order.
    pub fn split(&self, val_count: usize, seed: u64) -> (Dataset, Dataset) {
        let val_count = val_count.min(self.len());
        let order = Rng::new(seed).permutation(self.len());
        let pick = |range: &[usize]| {
            range
                .iter()
                .map(|&i| self.inner.examples[i].clone())
                .collect()
        };
        let val = self.derive(
            &format!("validation split (seed {seed})"),
            pick(&order[..val_count]),
        );
        let train = self.derive(
            &format!("training split (seed {seed})"),
            pick(&order[val_count..]),
        );
        (train, val)
    }

    /// The held-out count for a fraction (`0 < f < 1`, rounded up, as Hugging Face does) or a count.
    pub fn val_count(&self, fraction_or_count: f64) -> Option<usize> {
        if fraction_or_count > 0.0 && fraction_or_count < 1.0 {
            Some((fraction_or_count * self.len() as f64).ceil() as usize)
        } else if fraction_or_count >= 1.0
            && fraction_or_count.fract() == 0.0
            && fraction_or_count as usize <= self.len()
        {
            Some(fraction_or_count as usize)
        } else {
            None
        }
    }

    /// This dataset followed by `other`.
    pub fn concat(&self, other: &Dataset) -> Dataset {
        let mut examples = self.inner.examples.clone();
        examples.extend(other.inner.examples.iter().cloned());
        Self::from_shared(
            format!("{}+{}", self.name(), other.name()),
            format!("{} + {}", self.source(), other.source()),
            examples,
            self.inner.skipped.merged(&other.inner.skipped),
        )
    }

    /// Exactly `n` examples chosen with `seed`: a random subset when `n <= len`, otherwise every
    /// example once plus random repeats (LLaMA-Factory's `num_samples` over-sampling).
    pub fn num_samples(&self, n: usize, seed: u64) -> Dataset {
        let len = self.len();
        if len == 0 {
            return self.clone();
        }
        let mut rng = Rng::new(seed);
        let mut order = rng.permutation(len);
        order.truncate(n);
        while order.len() < n {
            order.push(rng.below(len));
        }
        let examples = order
            .iter()
            .map(|&i| self.inner.examples[i].clone())
            .collect();
        self.derive(&format!("{n} sampled (seed {seed})"), examples)
    }

    /// `n` distinct examples chosen with `seed` (fewer when the dataset is smaller), for a look.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<&Example> {
        let order = Rng::new(seed).permutation(self.len());
        order
            .iter()
            .take(n)
            .map(|&i| self.inner.examples[i].as_ref())
            .collect()
    }

    /// Keep the examples for which `keep` says yes.
    pub fn filter<E>(
        &self,
        mut keep: impl FnMut(&Example) -> Result<bool, E>,
    ) -> Result<Dataset, E> {
        let mut kept = Vec::new();
        for e in &self.inner.examples {
            if keep(e)? {
                kept.push(e.clone());
            }
        }
        Ok(self.derive("filtered", kept))
    }

    /// Replace each example with what `f` makes of it.
    pub fn map<E>(
        &self,
        mut f: impl FnMut(usize, &Example) -> Result<Example, E>,
    ) -> Result<Dataset, E> {
        let mut out = Vec::with_capacity(self.len());
        for (i, e) in self.inner.examples.iter().enumerate() {
            out.push(Arc::new(f(i, e)?));
        }
        Ok(self.derive("mapped", out))
    }

    /// Replace `{{key}}` placeholders (e.g. identity.json's `{{name}}` and `{{author}}`) in the
    /// system prompt and every message.
    pub fn fill(&self, values: &[(String, String)]) -> Dataset {
        let replace = |text: &str| {
            let mut out = text.to_string();
            for (key, value) in values {
                out = out.replace(&format!("{{{{{key}}}}}"), value);
            }
            out
        };
        let examples = self
            .inner
            .examples
            .iter()
            .map(|e| {
                let mut e = Example::clone(e);
                e.system = replace(&e.system);
                for m in &mut e.messages {
                    m.content = replace(&m.content);
                }
                Arc::new(e)
            })
            .collect();
        let keys: Vec<&str> = values.iter().map(|(k, _)| k.as_str()).collect();
        self.derive(&format!("filled {}", keys.join(", ")), examples)
    }
}

/// Shorten `text` to `max` characters for display, marking the cut.
pub fn preview(text: &str, max: usize) -> String {
    let flat = text.replace('\n', "⏎");
    if flat.chars().count() <= max {
        flat
    } else {
        flat.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Dataset \"{}\": {} records ({})",
            self.name(),
            self.len(),
            self.source()
        )?;
        if self.skipped().total > 0 {
            write!(f, ", {} skipped", self.skipped().total)?;
        }
        for (i, e) in self.iter().take(2).enumerate() {
            write!(f, "\n  [{i}]")?;
            if !e.system.is_empty() {
                write!(f, " system: {}", preview(&e.system, 40))?;
            }
            for m in &e.messages {
                write!(f, "\n      {}: {}", m.role, preview(&m.content, 70))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::example::{Message, Role};

    fn ds(n: usize) -> Dataset {
        let examples = (0..n)
            .map(|i| Example {
                messages: vec![
                    Message::new(Role::User, format!("q{i} {{{{name}}}}")),
                    Message::new(Role::Assistant, format!("a{i}")),
                ],
                ..Default::default()
            })
            .collect();
        Dataset::new("t", "test", examples, SkipReport::default())
    }

    fn firsts(d: &Dataset) -> Vec<String> {
        d.iter().map(|e| e.messages[1].content.clone()).collect()
    }

    #[test]
    fn split_is_deterministic_disjoint_and_complete() {
        let d = ds(10);
        assert_eq!(d.val_count(0.1), Some(1));
        assert_eq!(d.val_count(0.15), Some(2));
        assert_eq!(d.val_count(3.0), Some(3));
        assert_eq!(d.val_count(1.5), None);
        let (train, val) = d.split(3, 42);
        let (train2, val2) = d.split(3, 42);
        assert_eq!(firsts(&train), firsts(&train2));
        assert_eq!(firsts(&val), firsts(&val2));
        assert_eq!((train.len(), val.len()), (7, 3));
        let mut all = firsts(&train);
        all.extend(firsts(&val));
        all.sort();
        let mut expected = firsts(&d);
        expected.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn take_shuffle_concat_num_samples_fill() {
        let d = ds(5);
        assert_eq!(firsts(&d.take(2)), ["a0", "a1"]);
        assert_eq!(d.take(99).len(), 5);
        assert_eq!(firsts(&d.shuffle(1)), firsts(&d.shuffle(1)));
        assert_ne!(firsts(&d.shuffle(1)), firsts(&d));
        assert_eq!(d.concat(&d.take(1)).len(), 6);
        let over = d.num_samples(12, 0);
        assert_eq!(over.len(), 12);
        let mut distinct = firsts(&over);
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            5,
            "over-sampling keeps every record at least once"
        );
        assert_eq!(d.num_samples(3, 0).len(), 3);
        let filled = d.fill(&[("name".into(), "Lab".into())]);
        assert_eq!(filled.get(0).unwrap().messages[0].content, "q0 Lab");
        assert_eq!(d.sample(2, 7).len(), 2);
    }

    #[test]
    fn display_shows_name_size_and_two_records() {
        let text = ds(3).to_string();
        assert!(
            text.starts_with("Dataset \"t\": 3 records (test)"),
            "{text}"
        );
        assert!(text.contains("[1]") && !text.contains("[2]"), "{text}");
    }
}
