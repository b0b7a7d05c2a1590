//! Training items and batches. An item is one encoded example, or one packed row; a batch stacks
//! items right-padded to the longest (pads get label -100, so they are never trained on and, with
//! causal attention, never seen by real tokens). The loss rows are the positions whose next
//! token is a label: the output projection runs on those only.

use candle_core::{Device, Tensor};

use crate::data::encode::{Encoded, PackedRow, IGNORE};
use crate::error::Result;
use crate::rng::Rng;

/// One sequence to train on.
#[derive(Debug, Clone, Hash)]
pub struct Item {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i32>,
    /// Positions (packing restarts them per example); None: 0, 1, 2, …
    pub position_ids: Option<Vec<u32>>,
    /// Attention segments (neat packing); None: causal over the whole row.
    pub segment_ids: Option<Vec<u32>>,
}

impl Item {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Labelled positions after the shift (position t predicts label t + 1).
    pub fn num_targets(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }
}

impl From<Encoded> for Item {
    fn from(e: Encoded) -> Item {
        Item {
            input_ids: e.input_ids,
            labels: e.labels,
            position_ids: None,
            segment_ids: None,
        }
    }
}

impl Item {
    /// A packed row; `neat` keeps its segments apart.
    pub fn packed(row: PackedRow, neat: bool) -> Item {
        Item {
            input_ids: row.input_ids,
            labels: row.labels,
            position_ids: Some(row.position_ids),
            segment_ids: neat.then_some(row.segment_ids),
        }
    }
}

/// A stacked batch, ready for [`crate::model::Llama::forward_train`].
pub struct Batch {
    /// (B, T) u32.
    pub ids: Tensor,
    /// B·T positions.
    pub positions: Vec<u32>,
    /// B·T segment ids when any item has them.
    pub segments: Option<Vec<u32>>,
    /// (N,) flat indices of the positions with a label to predict.
    pub rows: Tensor,
    /// (N,) the labels those positions predict.
    pub targets: Tensor,
    /// N.
    pub num_targets: usize,
    /// B·T, padding included (what LLaMA-Factory's `total_tokens` counts).
    pub num_tokens: usize,
}

/// Batches at least this long are split when padding would be more than a quarter of them.
const UNPAD_MIN_LEN: usize = 128;

/// How a batch is computed: stacked as it is, or — when it is long and mostly padding — one item
/// at a time, each at its own length. The two give the same gradient (pads never reach a real
/// token, and the loss is summed over label tokens either way), but the split spends nothing on
/// padding: the linear layers run on real tokens only and attention on each item's own square,
/// as padding-free training does. Short batches stay stacked, where one large product beats
/// several small ones.
pub fn compute_groups<'a>(items: &[&'a Item]) -> Vec<Vec<&'a Item>> {
    let longest = items.iter().map(|i| i.len()).max().unwrap_or(0);
    let real: usize = items.iter().map(|i| i.len()).sum();
    let padded = longest * items.len();
    if items.len() > 1 && longest >= UNPAD_MIN_LEN && 4 * (padded - real) > padded {
        items.iter().map(|i| vec![*i]).collect()
    } else {
        vec![items.to_vec()]
    }
}

/// B·T of `items` stacked: what LLaMA-Factory's `total_tokens` counts, however they are computed.
pub fn padded_tokens(items: &[&Item]) -> usize {
    items.iter().map(|i| i.len()).max().unwrap_or(0) * items.len()
}

/// Stack `items` right-padded with `pad_id`.
pub fn stack(items: &[&Item], pad_id: u32, device: &Device) -> Result<Batch> {
    let b = items.len();
    let t = items.iter().map(|i| i.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(b * t);
    let mut positions = Vec::with_capacity(b * t);
    let neat = items.iter().any(|i| i.segment_ids.is_some());
    let mut segments = Vec::with_capacity(if neat { b * t } else { 0 });
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (r, item) in items.iter().enumerate() {
        let n = item.len();
        ids.extend(&item.input_ids);
        ids.extend(std::iter::repeat_n(pad_id, t - n));
        match &item.position_ids {
            Some(p) => positions.extend(p),
            None => positions.extend(0..n as u32),
        }
        positions.extend(n as u32..t as u32);
        if neat {
            match &item.segment_ids {
                Some(s) => segments.extend(s),
                None => segments.extend(std::iter::repeat_n(1, n)),
            }
            segments.extend(std::iter::repeat_n(0, t - n));
        }
        for pos in 0..n.saturating_sub(1) {
            let label = item.labels[pos + 1];
            if label != IGNORE {
                rows.push((r * t + pos) as u32);
                targets.push(label as u32);
            }
        }
    }
    let num_targets = rows.len();
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        positions,
        segments: neat.then_some(segments),
        rows: Tensor::from_vec(rows, num_targets, device)?,
        targets: Tensor::from_vec(targets, num_targets, device)?,
        num_targets,
        num_tokens: b * t,
    })
}

/// The order of items for one epoch: a seeded shuffle, and with `group_by_length` items of
/// similar length batched together (mega-batches of 50 batches sorted by length, as
/// transformers' length-grouped sampler does), so little compute goes to padding.
pub fn epoch_order(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
    group_by_length: bool,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    let mut rng = Rng::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.shuffle(&mut order);
    if group_by_length {
        for mega in order.chunks_mut(batch_size * 50) {
            mega.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacking_pads_right_and_selects_shifted_label_rows() {
        let a = Item::from(Encoded {
            input_ids: vec![5, 6, 7],
            labels: vec![IGNORE, 6, 7],
        });
        let b = Item::from(Encoded {
            input_ids: vec![8, 9],
            labels: vec![IGNORE, 9],
        });
        let batch = stack(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(
            batch.ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7], vec![8, 9, 0]]
        );
        assert_eq!(batch.rows.to_vec1::<u32>().unwrap(), vec![0, 1, 3]);
        assert_eq!(batch.targets.to_vec1::<u32>().unwrap(), vec![6, 7, 9]);
        assert_eq!(batch.positions, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(a.num_targets() + b.num_targets(), batch.num_targets);
    }

    #[test]
    fn long_batches_that_are_mostly_padding_are_computed_one_item_at_a_time() {
        let item = |n: usize| Item {
            input_ids: vec![1; n],
            labels: vec![1; n],
            position_ids: None,
            segment_ids: None,
        };
        let (a, b, c) = (item(600), item(200), item(64));
        // 600 + 200 real of 1200 padded: one at a time.
        assert_eq!(compute_groups(&[&a, &b]).len(), 2);
        assert_eq!(padded_tokens(&[&a, &b]), 1200);
        // Little padding, or short: stacked.
        assert_eq!(compute_groups(&[&a, &a, &item(500)]).len(), 1);
        assert_eq!(compute_groups(&[&c, &item(10)]).len(), 1);
        assert_eq!(compute_groups(&[&a]).len(), 1);
    }

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let lengths = vec![3, 9, 1, 7, 5, 2];
        let a = epoch_order(&lengths, 2, 1, 0, false);
        assert_eq!(a, epoch_order(&lengths, 2, 1, 0, false));
        assert_ne!(a, epoch_order(&lengths, 2, 1, 1, false));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..6).collect::<Vec<_>>());
        let g = epoch_order(&lengths, 2, 1, 0, true);
        assert_eq!(
            g.iter().map(|&i| lengths[i]).collect::<Vec<_>>(),
            vec![9, 7, 5, 3, 2, 1]
        );
    }
}
