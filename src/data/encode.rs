//! Supervised encoding exactly as LLaMA-Factory does it (specs/llamafactory.md §3): each example
//! becomes token ids and labels, where a label of [`IGNORE`] (-100) means "not trained on".
//!
//! - The template renders each message into pieces; each text piece is tokenized on its own and
//!   bos/eos become the tokenizer's ids (with `replace_eos`, eos is the template's first stop word).
//! - Messages pair up as (prompt, reply): (msg0 with prefix and system, msg1), (msg2, msg3), …
//! - Prompts are masked unless `train_on_prompt`; every reply is trained unless `mask_history`,
//!   which keeps only the last reply and gives the last turn the length budget first.
//! - `cutoff_len` truncates turn by turn with [`infer_seqlen`]; heads are kept, tails cut.
//! - Packing ([`pack`]) fills rows of `cutoff_len` tokens greedily (LLaMA-Factory's knapsack),
//!   restarting positions per example; `neat_packing` also keeps examples from seeing each other.

use super::example::Example;
use super::template::{Piece, Template};
use crate::error::{Error, Result};

/// The label of a position that is not trained on (PyTorch's cross-entropy ignore index).
pub const IGNORE: i32 = -100;

/// How examples are turned into ids.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    pub cutoff_len: usize,
    pub train_on_prompt: bool,
    pub mask_history: bool,
    /// The id of `Piece::Bos` (none: the piece is dropped, as a tokenizer without bos does).
    pub bos_id: Option<u32>,
    /// The id of `Piece::Eos`.
    pub eos_id: u32,
    /// Date for the llama3 tool prompt ("" = today).
    pub today: String,
}

/// One encoded example.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Encoded {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i32>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Positions whose label is trained on.
    pub fn num_label_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}

/// LLaMA-Factory's `infer_seqlen`: how many (source, target) tokens to keep within `cutoff_len`.
pub fn infer_seqlen(source_len: usize, target_len: usize, cutoff_len: usize) -> (usize, usize) {
    let max_target_len = if target_len * 2 < cutoff_len {
        cutoff_len
    } else if source_len * 2 < cutoff_len {
        cutoff_len - source_len
    } else {
        // Python's int() of a float truncates toward zero.
        (cutoff_len as f64 * (target_len as f64 / (source_len + target_len) as f64)) as usize
    };
    let new_target_len = max_target_len.min(target_len);
    let max_source_len = cutoff_len.saturating_sub(new_target_len);
    let new_source_len = max_source_len.min(source_len);
    (new_source_len, new_target_len)
}

/// Encode one example for supervised training. `tokenize` maps a text piece to ids without
/// adding special tokens. The example must alternate prompt and reply turns and end with a reply.
pub fn encode_example(
    example: &Example,
    template: &Template,
    opts: &EncodeOptions,
    tokenize: &dyn Fn(&str) -> Result<Vec<u32>>,
) -> Result<Encoded> {
    if let Some(reason) = example.invalid_reason() {
        return Err(Error::msg(format!(
            "example cannot be trained on: {reason}; fix or filter the record"
        )));
    }
    let messages = &example.messages;
    let turns = template.turns(&example.system, &example.tools, messages, &opts.today)?;
    let ids_of = |pieces: &[Piece]| -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for p in pieces {
            match p {
                Piece::Text(t) => ids.extend(tokenize(t)?),
                Piece::Bos => ids.extend(opts.bos_id),
                Piece::Eos => ids.push(opts.eos_id),
            }
        }
        Ok(ids)
    };
    let mut pairs = Vec::with_capacity(turns.len() / 2);
    for pair in turns.chunks(2) {
        pairs.push((ids_of(&pair[0])?, ids_of(&pair[1])?));
    }
    if opts.mask_history {
        pairs.reverse(); // the last turn gets the length budget first
    }
    let mut out = Encoded::default();
    let mut total = 0usize;
    for (turn, (source, target)) in pairs.into_iter().enumerate() {
        if total >= opts.cutoff_len {
            break;
        }
        let (s, t) = infer_seqlen(source.len(), target.len(), opts.cutoff_len - total);
        let source = &source[..s];
        let target = &target[..t];
        total += s + t;
        let source_labels: Vec<i32> = if opts.train_on_prompt {
            source.iter().map(|&i| i as i32).collect()
        } else {
            vec![IGNORE; s]
        };
        let target_labels: Vec<i32> = if opts.mask_history && turn != 0 {
            vec![IGNORE; t]
        } else {
            target.iter().map(|&i| i as i32).collect()
        };
        let ids = [source, target].concat();
        let labels = [source_labels, target_labels].concat();
        if opts.mask_history {
            out.input_ids.splice(0..0, ids);
            out.labels.splice(0..0, labels);
        } else {
            out.input_ids.extend(ids);
            out.labels.extend(labels);
        }
    }
    Ok(out)
}

/// One packed row: several examples back to back, padded to the row length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i32>,
    /// Restart at 0 for each example; 0 on padding.
    pub position_ids: Vec<u32>,
    /// LLaMA-Factory's attention mask: with `neat_packing` the example's number (1, 2, …) and 0
    /// on padding; otherwise 1 everywhere (examples may attend to earlier ones in the row).
    pub segment_ids: Vec<u32>,
}

/// LLaMA-Factory's `greedy_knapsack`: sort the lengths, then fill each bin by repeatedly taking
/// the largest length that still fits. Returns the bins as lists of lengths.
pub fn greedy_knapsack(mut lengths: Vec<usize>, capacity: usize) -> Vec<Vec<usize>> {
    lengths.sort_unstable();
    let mut bins = Vec::new();
    while !lengths.is_empty() {
        let mut bin = Vec::new();
        let mut remaining = capacity;
        loop {
            // bisect_right: the number of lengths ≤ remaining.
            let fit = lengths.partition_point(|&l| l <= remaining);
            if fit == 0 {
                break;
            }
            remaining -= lengths[fit - 1];
            bin.push(lengths.remove(fit - 1));
        }
        if bin.is_empty() {
            break; // only lengths larger than the capacity are left (never true after filtering)
        }
        bins.push(bin);
    }
    bins
}

/// Pack encoded examples into rows of `row_len` tokens (LLaMA-Factory's cutoff_len + 1, its
/// packing capacity being cutoff_len - 1 + 1). Examples longer than `row_len - 1` are dropped;
/// the number dropped is returned with the rows.
pub fn pack(
    examples: Vec<Encoded>,
    row_len: usize,
    pad_id: u32,
    neat: bool,
) -> (Vec<PackedRow>, usize) {
    let capacity = row_len.saturating_sub(1);
    let mut dropped = 0;
    let mut kept = Vec::new();
    let mut by_length: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for e in examples {
        if e.len() > capacity {
            dropped += 1;
            continue;
        }
        by_length.entry(e.len()).or_default().push(kept.len());
        kept.push(e);
    }
    let lengths: Vec<usize> = kept.iter().map(Encoded::len).collect();
    let mut rows = Vec::new();
    for bin in greedy_knapsack(lengths, capacity) {
        let mut row = PackedRow::default();
        for (i, len) in bin.into_iter().enumerate() {
            // As LLaMA-Factory: the last example registered with this length goes first.
            let index = by_length
                .get_mut(&len)
                .and_then(|v| v.pop())
                .expect("every packed length was registered");
            let e = &kept[index];
            row.input_ids.extend(&e.input_ids);
            row.labels.extend(&e.labels);
            row.position_ids.extend(0..e.len() as u32);
            let segment = if neat { i as u32 + 1 } else { 1 };
            row.segment_ids
                .extend(std::iter::repeat_n(segment, e.len()));
        }
        if row.input_ids.len() < row_len {
            let pad = row_len - row.input_ids.len();
            row.input_ids.extend(std::iter::repeat_n(pad_id, pad));
            row.labels.extend(std::iter::repeat_n(IGNORE, pad));
            row.position_ids.extend(std::iter::repeat_n(0, pad));
            row.segment_ids
                .extend(std::iter::repeat_n(if neat { 0 } else { 1 }, pad));
        }
        rows.push(row);
    }
    (rows, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infer_seqlen_matches_llamafactory_examples() {
        assert_eq!(infer_seqlen(600, 600, 1024), (512, 512));
        assert_eq!(infer_seqlen(100, 2000, 1024), (100, 924));
        assert_eq!(infer_seqlen(2000, 100, 1024), (924, 100));
        assert_eq!(infer_seqlen(10, 10, 1024), (10, 10));
        assert_eq!(infer_seqlen(5, 5, 0), (0, 0));
    }

    #[test]
    fn knapsack_takes_the_largest_that_fits() {
        assert_eq!(
            greedy_knapsack(vec![5, 3, 8, 2, 9], 10),
            vec![vec![9], vec![8, 2], vec![5, 3]]
        );
        assert!(greedy_knapsack(vec![], 10).is_empty());
    }

    #[test]
    fn pack_pads_restarts_positions_and_numbers_segments() {
        let e = |n: u32| Encoded {
            input_ids: (0..n).collect(),
            labels: vec![1; n as usize],
        };
        let (rows, dropped) = pack(vec![e(3), e(2), e(9)], 8, 99, true);
        assert_eq!(dropped, 1);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].input_ids, vec![0, 1, 2, 0, 1, 99, 99, 99]);
        assert_eq!(rows[0].position_ids, vec![0, 1, 2, 0, 1, 0, 0, 0]);
        assert_eq!(rows[0].segment_ids, vec![1, 1, 1, 2, 2, 0, 0, 0]);
        assert_eq!(rows[0].labels[5..], [IGNORE; 3]);
    }
}
