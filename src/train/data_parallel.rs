//! Data parallelism for the training loop: what each rank computes and what the ranks exchange.
//!
//! A run of `W` ranks with `k` accumulation steps each computes what one process with `W·k`
//! accumulation steps computes. The step plan is the single-process plan with `W·k` batches per
//! optimizer step; rank `r` takes the step's batches `r, r+W, …` (torch's DistributedSampler
//! interleave); once per step one sum over the ranks of the flattened gradients, followed by the
//! step's loss, its tokens and a stop flag ([`Exchange`]), gives every rank the same gradient, so
//! every rank takes the same optimizer step and holds the same weights. Before the first step the
//! ranks compare what they are about to train ([`agree`]): differing data or settings would make
//! them exchange buffers of different sizes, which hangs a real engine instead of failing.

use std::hash::{Hash, Hasher};

use candle_core::{DType, Tensor};

use crate::collective::Collective;
use crate::error::{Error, Result};

/// The group and this process's place in it, for a run of more than one rank.
#[derive(Clone, Copy)]
pub struct Ranks<'a> {
    pub group: &'a dyn Collective,
    pub rank: usize,
    pub world: usize,
}

impl<'a> Ranks<'a> {
    /// The ranks of `group`, or `None` for a single process. A group of one rank still
    /// exchanges (with itself: the sums change nothing), which checks an engine on one device.
    pub fn of(group: Option<&'a dyn Collective>) -> Option<Ranks<'a>> {
        group.map(|group| Ranks {
            group,
            rank: group.rank(),
            world: group.world(),
        })
    }
}

/// Whether the step's `j`-th batch is this rank's: batches `rank, rank + world, …`.
pub fn is_mine(j: usize, ranks: Option<Ranks>) -> bool {
    ranks.is_none_or(|r| j % r.world == r.rank)
}

/// What one step's exchange returns on every rank: the summed gradients and figures.
pub struct Exchanged {
    pub grads: Vec<Tensor>,
    pub loss: f64,
    pub tokens: usize,
    /// Some rank was asked to stop (Ctrl-C) during the step.
    pub stop: bool,
}

/// The one collective of a step: gradients, loss, tokens and stop flag summed over the ranks in
/// a single buffer.
pub fn exchange(
    ranks: Ranks,
    grads: Vec<Tensor>,
    loss: f64,
    tokens: usize,
    stop: bool,
) -> Result<Exchanged> {
    let device = grads
        .first()
        .map_or(candle_core::Device::Cpu, |g| g.device().clone());
    let shapes: Vec<candle_core::Shape> = grads.iter().map(|g| g.shape().clone()).collect();
    // One buffer in the gradients' dtype (f64 for LoRA, f32 otherwise).
    let dtype = grads.first().map_or(DType::F64, |g| g.dtype());
    let mut parts: Vec<Tensor> = grads
        .iter()
        .map(|g| g.to_dtype(dtype)?.flatten_all())
        .collect::<candle_core::Result<_>>()?;
    let figures = [loss, tokens as f64, if stop { 1.0 } else { 0.0 }];
    parts.push(Tensor::new(&figures, &device)?.to_dtype(dtype)?);
    let flat = Tensor::cat(&parts, 0)?;
    let summed = ranks.group.all_reduce_sum(&flat)?;
    let mut offset = 0;
    let mut out = Vec::with_capacity(shapes.len());
    for (shape, g) in shapes.iter().zip(&grads) {
        let n = shape.elem_count();
        out.push(
            summed
                .narrow(0, offset, n)?
                .reshape(shape)?
                .to_dtype(g.dtype())?,
        );
        offset += n;
    }
    let tail = summed
        .narrow(0, offset, 3)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    Ok(Exchanged {
        grads: out,
        loss: tail[0],
        tokens: tail[1].round() as usize,
        stop: tail[2] > 0.0,
    })
}

/// Where the time of a run's exchanges went.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExchangeTime {
    /// The all-reduce itself: per step, the shortest exchange over the ranks (the last rank to
    /// arrive waits for no one).
    pub transfer: f64,
    /// This rank's waiting for slower ranks: its exchanges less the transfer.
    pub waiting: f64,
}

/// Split this rank's exchange times (one per step, the same count on every rank) into transfer
/// and waiting, with one all-gather at the end of the run.
pub fn exchange_time(ranks: Ranks, mine: &[f64]) -> Result<ExchangeTime> {
    let bits: Vec<u64> = mine.iter().map(|t| t.to_bits()).collect();
    let all = ranks.group.all_gather(&bits)?;
    let transfer: f64 = (0..mine.len())
        .map(|s| {
            all.iter()
                .map(|r| f64::from_bits(r[s]))
                .fold(f64::INFINITY, f64::min)
        })
        .sum();
    let own: f64 = mine.iter().sum();
    Ok(ExchangeTime {
        transfer,
        waiting: (own - transfer).max(0.0),
    })
}

/// Evaluation sums `[loss, correct, tokens]` over the ranks (each evaluated its share).
pub fn sum_figures(ranks: Ranks, figures: [f64; 3]) -> Result<[f64; 3]> {
    let t = Tensor::new(&figures, &candle_core::Device::Cpu)?;
    let v = ranks.group.all_reduce_sum(&t)?.to_vec1::<f64>()?;
    Ok([v[0], v[1], v[2]])
}

/// A stable 64-bit hash (the same in every process of one build).
pub fn hash_of(value: &impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The sum of every trainable value, as f64 bits: equal on every rank while the ranks agree.
pub fn checksum(vars: &[candle_core::Var]) -> Result<u64> {
    let mut sum = 0f64;
    for v in vars {
        sum += v
            .as_tensor()
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sum.to_bits())
}

/// One thing the ranks must agree on: its name, a hash of it, and what to do when they do not.
pub struct Agreement {
    pub what: &'static str,
    pub hash: u64,
    pub advice: &'static str,
}

/// Check that every rank agrees on each of `items`; the first difference is an error on every
/// rank (all see all hashes, so all stop together rather than one hanging).
pub fn agree(ranks: Ranks, items: &[Agreement]) -> Result<()> {
    let mine: Vec<u64> = items.iter().map(|a| a.hash).collect();
    let all = ranks.group.all_gather(&mine)?;
    for (i, item) in items.iter().enumerate() {
        if let Some(other) = (1..all.len()).find(|&r| all[r][i] != all[0][i]) {
            return Err(Error::config(
                "data parallel",
                format!(
                    "rank {other}'s {} differs from rank 0's; {}",
                    item.what, item.advice
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::in_process as threads;

    #[test]
    fn batches_interleave_over_the_ranks() {
        let group = threads::group(2);
        let r1 = Ranks::of(Some(&group[1])).unwrap();
        let mine: Vec<usize> = (0..6).filter(|&j| is_mine(j, Some(r1))).collect();
        assert_eq!(mine, [1, 3, 5]);
        assert!((0..6).all(|j| is_mine(j, None)));
        let single = threads::group(1);
        let alone = Ranks::of(Some(&single[0]));
        assert!(
            (0..3).all(|j| is_mine(j, alone)),
            "one rank takes every batch"
        );
    }

    #[test]
    fn an_exchange_sums_gradients_and_figures_and_keeps_shapes() {
        let group = threads::group(2);
        let results: Vec<Exchanged> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|rank| {
                    s.spawn(move || {
                        let r = rank.rank as f32;
                        let g = Tensor::new(
                            &[[1f32 + r, 2.0], [3.0, 4.0 * r]],
                            &candle_core::Device::Cpu,
                        )
                        .unwrap();
                        let ranks = Ranks::of(Some(rank)).unwrap();
                        exchange(ranks, vec![g], 0.5 + r as f64, 10, rank.rank == 1).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for e in &results {
            assert_eq!(
                e.grads[0].to_vec2::<f32>().unwrap(),
                [[3.0, 4.0], [6.0, 4.0]]
            );
            assert_eq!((e.loss, e.tokens, e.stop), (2.0, 20, true));
        }
    }

    #[test]
    fn a_disagreement_names_the_rank_and_what_differs_on_every_rank() {
        let group = threads::group(2);
        let errors: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|rank| {
                    s.spawn(move || {
                        let items = [
                            Agreement {
                                what: "model",
                                hash: 7,
                                advice: "load the same model",
                            },
                            Agreement {
                                what: "training data",
                                hash: rank.rank as u64,
                                advice: "give every rank the same dataset",
                            },
                        ];
                        agree(Ranks::of(Some(rank)).unwrap(), &items)
                            .unwrap_err()
                            .to_string()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for e in errors {
            assert!(e.contains("rank 1's training data differs"), "{e}");
        }
    }
}
