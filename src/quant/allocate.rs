//! Choosing one ggml type per tensor so that all of them fit a byte budget with the least total
//! damage: the solver behind `auto_mix`. This is a multiple-choice knapsack (NP-hard in general,
//! easy in practice), solved in four stages; the first three are those of llama.cpp's
//! `--target-bpw` (PR #15550) and exllamav3:
//!
//! 1. **Lagrangian relaxation.** A candidate that takes at least the bytes of another of its
//!    tensor and does no less damage is never worth taking: it is dropped. At a price of λ ≥ 0
//!    per byte, each tensor on its own picks argmin(damage + λ·bytes), always a point of its lower
//!    convex hull; the higher the price, the fewer the bytes. Walking every tensor up its hull in
//!    one list sorted by damage saved per byte finds the price λ* at which the total just fits —
//!    the value a bisection on λ converges to, found exactly. It also bounds the answer: no choice
//!    within the budget does less damage than L(λ) = Σ min(damage + λ·bytes) − λ·budget.
//! 2. **Greedy fill.** The bytes the walk leaves over go to the upgrade (to any candidate, not
//!    only hull points) that saves most damage per byte and still fits, again and again.
//! 3. **Swaps.** An upgrade of one tensor paid for by a downgrade of another, when the two fit
//!    together and save damage; then fill again, until neither helps.
//! 4. **Proof.** For any choice x within the budget, damage(x) = L(λ*) + Σ rᵢ(x) + λ*·unused(x),
//!    where the reduced cost rᵢ ≥ 0 is how far tensor i's candidate is above that tensor's
//!    minimum of damage + λ*·bytes. A choice better than the answer so far therefore needs
//!    Σ rᵢ below the gap (answer − L(λ*)): candidates whose r alone exceeds it are out. What
//!    remains is searched exactly, tensor by tensor, keeping only partial choices that no other
//!    beats on both bytes and damage (pruned by that bound and by the bytes the remaining tensors
//!    need): it finds the best answer or proves there is none better. Problems of at most
//!    [`EXACT_LIMIT`] combinations are searched to the end, so their answer is optimal; larger
//!    ones stop after considering [`STATE_LIMIT`] partial choices and say whether they finished.
//!
//! The solver knows nothing of models: bytes and damage come from the caller
//! ([`super::file_size`] for bytes, the damage measures for damage).

use crate::error::{Error, Result};
use crate::gguf::GgmlType;

/// Problems whose useful candidates multiply to at most this many combinations are searched with
/// no node limit, so their answer is always provably optimal.
pub const EXACT_LIMIT: u64 = 200_000;

/// Partial choices a larger problem's search may consider before the solver settles for the
/// answer of stages 1–3 (within the budget, with its lower bound): at most ~100 MB and a fraction
/// of a second.
pub const STATE_LIMIT: u64 = 2_000_000;

/// A damage difference this small relative to the total is rounding noise, not an improvement.
const NOISE: f64 = 1e-12;

/// Rounds of fill-and-swap at most (each one lowers the damage, so this only guards a bug).
const MAX_ROUNDS: usize = 100_000;

/// One way to store one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub ggml_type: GgmlType,
    /// Bytes the tensor adds to the file in this type.
    pub bytes: u64,
    /// The measured damage of this type (≥ 0, lower is better).
    pub damage: f64,
}

/// A tensor and the types it may take.
#[derive(Debug, Clone)]
pub struct TensorCandidates {
    pub name: String,
    pub candidates: Vec<Candidate>,
}

/// The solver's answer.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// For each tensor, the index of its chosen candidate in its list.
    pub choice: Vec<usize>,
    /// Total bytes of the chosen candidates (≤ the budget).
    pub bytes: u64,
    /// Total damage of the chosen candidates.
    pub damage: f64,
    /// No choice within the budget does less damage than this (the Lagrangian bound L(λ*)).
    pub lower_bound: f64,
    /// The price per byte λ* at which the relaxation just fits (0 when everything fits).
    pub lambda: f64,
    /// Whether the search finished, which proves `damage` the least possible.
    pub optimal: bool,
    /// Partial choices the search considered (a measure of its work).
    pub states: u64,
}

impl Allocation {
    /// How far the answer lies above the lower bound: its distance from optimal is at most this
    /// (and is zero when `optimal`, where what remains is the relaxation's own gap).
    pub fn bound_gap(&self) -> f64 {
        self.damage - self.lower_bound
    }
}

/// One candidate per tensor, total bytes ≤ `budget`, least total damage: provably optimal for
/// problems of at most [`EXACT_LIMIT`] combinations, searched up to [`STATE_LIMIT`] beyond.
pub fn allocate(tensors: &[TensorCandidates], budget: u64) -> Result<Allocation> {
    let combinations = tensors.iter().fold(1u64, |n, t| {
        n.saturating_mul(Front::of(&t.candidates).len().max(1) as u64)
    });
    let limit = if combinations <= EXACT_LIMIT {
        u64::MAX
    } else {
        STATE_LIMIT
    };
    allocate_within(tensors, budget, limit)
}

/// [`allocate`] with the search of stage 4 stopped after `state_limit` partial choices (0: the
/// answer of stages 1–3 alone).
pub fn allocate_within(
    tensors: &[TensorCandidates],
    budget: u64,
    state_limit: u64,
) -> Result<Allocation> {
    check(tensors, budget)?;
    let fronts: Vec<Front> = tensors.iter().map(|t| Front::of(&t.candidates)).collect();
    let (mut pick, lambda) = relax(&fronts, budget);
    let bound = Bound::new(&fronts, &pick, lambda, budget);
    improve(&fronts, &mut pick, budget);
    let (pick, optimal, states) = prove(&fronts, pick, &bound, budget, state_limit);
    Ok(Allocation {
        choice: pick.iter().zip(&fronts).map(|(&k, f)| f.index[k]).collect(),
        bytes: total_bytes(&fronts, &pick),
        damage: total_damage(&fronts, &pick),
        lower_bound: bound.lower,
        lambda,
        optimal,
        states,
    })
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Every tensor has candidates with usable damage, and the smallest of them fit the budget.
fn check(tensors: &[TensorCandidates], budget: u64) -> Result<()> {
    for t in tensors {
        if t.candidates.is_empty() {
            return Err(Error::msg(format!(
                "auto_mix: tensor {} has no candidate types; give it at least one type whose blocks divide its rows (file_size::candidate_types)",
                t.name
            )));
        }
        if let Some(c) = t
            .candidates
            .iter()
            .find(|c| !(c.damage.is_finite() && c.damage >= 0.0))
        {
            return Err(Error::msg(format!(
                "auto_mix: tensor {}, type {}: damage {} is not a finite number ≥ 0; the damage measure must give one",
                t.name, c.ggml_type.name, c.damage
            )));
        }
    }
    let smallest = tensors
        .iter()
        .map(|t| t.candidates.iter().map(|c| c.bytes).min().unwrap_or(0))
        .fold(0u64, u64::saturating_add);
    if smallest > budget {
        return Err(Error::msg(format!(
            "auto_mix: the tensors need at least {smallest} bytes ({:.2} MB, each at its smallest candidate) but the budget leaves them {budget} bytes ({:.2} MB); raise the budget to at least that, or offer smaller types",
            mb(smallest),
            mb(budget)
        )));
    }
    Ok(())
}

/// One tensor's useful candidates — those no other beats on both bytes and damage — sorted by
/// bytes ascending, so damage strictly descends.
struct Front {
    /// Where each one sits in the caller's list.
    index: Vec<usize>,
    bytes: Vec<u64>,
    damage: Vec<f64>,
}

impl Front {
    fn of(candidates: &[Candidate]) -> Front {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| {
            let (ca, cb) = (&candidates[a], &candidates[b]);
            ca.bytes
                .cmp(&cb.bytes)
                .then(ca.damage.total_cmp(&cb.damage))
        });
        let mut front = Front {
            index: Vec::new(),
            bytes: Vec::new(),
            damage: Vec::new(),
        };
        for i in order {
            let c = &candidates[i];
            if front.damage.last().is_none_or(|&d| c.damage < d) {
                front.index.push(i);
                front.bytes.push(c.bytes);
                front.damage.push(c.damage);
            }
        }
        front
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// The points of the lower convex hull, in order (the first and last always among them).
    fn hull(&self) -> Vec<usize> {
        let mut hull: Vec<usize> = Vec::new();
        for k in 0..self.len() {
            while let [.., a, b] = hull[..] {
                // b goes when it lies on or above the segment from a to k.
                let (ab, ak) = (
                    (self.bytes[b] - self.bytes[a]) as f64,
                    (self.bytes[k] - self.bytes[a]) as f64,
                );
                if (self.damage[b] - self.damage[a]) * ak >= (self.damage[k] - self.damage[a]) * ab
                {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(k);
        }
        hull
    }
}

fn total_bytes(fronts: &[Front], pick: &[usize]) -> u64 {
    fronts.iter().zip(pick).map(|(f, &k)| f.bytes[k]).sum()
}

fn total_damage(fronts: &[Front], pick: &[usize]) -> f64 {
    fronts.iter().zip(pick).map(|(f, &k)| f.damage[k]).sum()
}

/// Stage 1: every tensor at its smallest candidate, then hull steps in order of damage saved per
/// byte while they fit. Returns the picks and λ*, the rate of the first step that did not fit.
fn relax(fronts: &[Front], budget: u64) -> (Vec<usize>, f64) {
    let mut steps: Vec<(f64, usize, usize)> = Vec::new(); // (saved per byte, tensor, to)
    for (t, f) in fronts.iter().enumerate() {
        for w in f.hull().windows(2) {
            let rate = (f.damage[w[0]] - f.damage[w[1]]) / (f.bytes[w[1]] - f.bytes[w[0]]) as f64;
            steps.push((rate, t, w[1]));
        }
    }
    steps.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let mut pick = vec![0; fronts.len()];
    let mut bytes = total_bytes(fronts, &pick);
    for (rate, t, to) in steps {
        // A tensor's hull rates descend, so its steps come in order; rounding may tie them.
        if to <= pick[t] {
            continue;
        }
        let more = fronts[t].bytes[to] - fronts[t].bytes[pick[t]];
        if bytes + more > budget {
            return (pick, rate);
        }
        bytes += more;
        pick[t] = to;
    }
    (pick, 0.0)
}

/// The Lagrangian bound at λ and each candidate's reduced cost, measured from a reference pick
/// so that large byte counts times λ do not swamp the damages.
struct Bound {
    lambda: f64,
    /// L(λ): no choice within the budget does less damage.
    lower: f64,
    /// reduced[t][k] ≥ 0: damage + λ·bytes of candidate k above tensor t's minimum of it.
    reduced: Vec<Vec<f64>>,
}

impl Bound {
    fn new(fronts: &[Front], reference: &[usize], lambda: f64, budget: u64) -> Bound {
        let mut lower = -lambda * (budget - total_bytes(fronts, reference)) as f64;
        let mut reduced = Vec::with_capacity(fronts.len());
        for (f, &r) in fronts.iter().zip(reference) {
            let priced: Vec<f64> = (0..f.len())
                .map(|k| f.damage[k] + lambda * (f.bytes[k] as f64 - f.bytes[r] as f64))
                .collect();
            let least = priced.iter().copied().fold(f64::INFINITY, f64::min);
            lower += least;
            reduced.push(priced.iter().map(|p| (p - least).max(0.0)).collect());
        }
        Bound {
            lambda,
            lower,
            reduced,
        }
    }
}

/// Stages 2 and 3: fill, then swap and fill again while the damage falls.
fn improve(fronts: &[Front], pick: &mut [usize], budget: u64) {
    for _ in 0..MAX_ROUNDS {
        fill(fronts, pick, budget);
        let Some(swap) = best_swap(fronts, pick, budget) else {
            return;
        };
        pick[swap.up.0] = swap.up.1;
        pick[swap.down.0] = swap.down.1;
    }
}

/// Stage 2: the upgrade saving most damage per byte that fits, until none fits.
fn fill(fronts: &[Front], pick: &mut [usize], budget: u64) {
    let mut bytes = total_bytes(fronts, pick);
    loop {
        let slack = budget - bytes;
        let mut best: Option<(f64, usize, usize)> = None; // (saved per byte, tensor, to)
        for (t, f) in fronts.iter().enumerate() {
            let now = pick[t];
            for k in now + 1..f.len() {
                let more = f.bytes[k] - f.bytes[now];
                if more > slack {
                    break;
                }
                let rate = (f.damage[now] - f.damage[k]) / more as f64;
                if best.is_none_or(|b| rate > b.0) {
                    best = Some((rate, t, k));
                }
            }
        }
        let Some((_, t, k)) = best else { return };
        bytes += fronts[t].bytes[k] - fronts[t].bytes[pick[t]];
        pick[t] = k;
    }
}

/// An upgrade (tensor, to) paid for by a downgrade (tensor, to) of another tensor.
struct Swap {
    up: (usize, usize),
    down: (usize, usize),
}

/// Stage 3: the swap that saves the most damage and fits, if any saves more than noise.
fn best_swap(fronts: &[Front], pick: &[usize], budget: u64) -> Option<Swap> {
    let slack = budget - total_bytes(fronts, pick);
    let noise = NOISE * total_damage(fronts, pick);
    // Every downgrade as (bytes freed, damage added, tensor, to), by bytes freed.
    let mut downs: Vec<(u64, f64, usize, usize)> = Vec::new();
    for (t, f) in fronts.iter().enumerate() {
        let now = pick[t];
        for k in 0..now {
            downs.push((f.bytes[now] - f.bytes[k], f.damage[k] - f.damage[now], t, k));
        }
    }
    downs.sort_by_key(|d| d.0);
    // cheapest[i]: the downgrade from i on that adds least damage, and the least of the others'
    // tensors (an upgrade cannot be paid for by its own tensor).
    let mut cheapest: Vec<(Option<usize>, Option<usize>)> = vec![(None, None); downs.len() + 1];
    for i in (0..downs.len()).rev() {
        let (mut first, mut other) = cheapest[i + 1];
        match first {
            Some(f) if downs[i].1 >= downs[f].1 => {
                if downs[i].2 != downs[f].2 && other.is_none_or(|o| downs[i].1 < downs[o].1) {
                    other = Some(i);
                }
            }
            _ => {
                if first.is_some_and(|f| downs[f].2 != downs[i].2) {
                    other = first;
                }
                first = Some(i);
            }
        }
        cheapest[i] = (first, other);
    }
    let mut best: Option<(f64, Swap)> = None;
    for (t, f) in fronts.iter().enumerate() {
        let now = pick[t];
        for k in now + 1..f.len() {
            let short = (f.bytes[k] - f.bytes[now]).saturating_sub(slack);
            let from = downs.partition_point(|d| d.0 < short);
            let down = match cheapest[from] {
                (Some(first), _) if downs[first].2 != t => Some(first),
                (_, other) => other,
            };
            let Some(d) = down else { continue };
            let net = (f.damage[now] - f.damage[k]) - downs[d].1;
            if net > noise && best.as_ref().is_none_or(|b| net > b.0) {
                let swap = Swap {
                    up: (t, k),
                    down: (downs[d].2, downs[d].3),
                };
                best = Some((net, swap));
            }
        }
    }
    best.map(|b| b.1)
}

/// Stage 4: look for a better choice than `pick`, layer by layer over the tensors that still have
/// a choice. A state is a partial choice (bytes, damage); one with no fewer bytes and no less
/// damage than another of the same layer can never end better, so only the others are kept
/// (Nemhauser–Ullmann), and ties between tensors collapse instead of multiplying. Returns the
/// best choice, whether the search finished within `limit` partial choices considered, and how
/// many it considered.
fn prove(
    fronts: &[Front],
    pick: Vec<usize>,
    bound: &Bound,
    budget: u64,
    limit: u64,
) -> (Vec<usize>, bool, u64) {
    let best = total_damage(fronts, &pick);
    let noise = NOISE * (best.abs() + bound.lower.abs());
    // damage = lower + Σ r + λ·unused: a better answer keeps these below the gap.
    let gap = best - bound.lower + noise;
    // Candidates that could be part of a better choice, cheapest in reduced cost first.
    let options: Vec<Vec<(usize, f64)>> = bound
        .reduced
        .iter()
        .map(|r| {
            let mut o: Vec<(usize, f64)> = (0..r.len())
                .filter(|&k| r[k] <= gap)
                .map(|k| (k, r[k]))
                .collect();
            o.sort_by(|a, b| a.1.total_cmp(&b.1));
            o
        })
        .collect();
    let sizes = |t: usize| options[t].iter().map(move |&(k, _)| fronts[t].bytes[k]);
    let span = |t: usize| sizes(t).max().unwrap_or(0) - sizes(t).min().unwrap_or(0);
    // Tensors with one option left keep it; the widest byte ranges go first (they settle what
    // the rest may spend soonest).
    let mut start = State {
        bytes: 0,
        damage: 0.0,
        reduced: 0.0,
    };
    let mut base = pick.clone();
    for (t, o) in options.iter().enumerate() {
        if let [(k, r)] = o[..] {
            base[t] = k;
            start.bytes += fronts[t].bytes[k];
            start.damage += fronts[t].damage[k];
            start.reduced += r;
        }
    }
    let mut order: Vec<usize> = (0..fronts.len())
        .filter(|&t| options[t].len() > 1)
        .collect();
    order.sort_by_key(|&t| std::cmp::Reverse(span(t)));
    // Bytes the tensors order[d..] take at least and at most.
    let (mut min_rest, mut max_rest) = (vec![0u64; order.len() + 1], vec![0u64; order.len() + 1]);
    for d in (0..order.len()).rev() {
        min_rest[d] = min_rest[d + 1] + sizes(order[d]).min().unwrap_or(0);
        max_rest[d] = max_rest[d + 1] + sizes(order[d]).max().unwrap_or(0);
    }
    let mut states = vec![start];
    // For each layer, how each kept state was reached: (state of the layer before, option).
    let mut trail: Vec<Vec<(usize, usize)>> = Vec::with_capacity(order.len());
    let mut considered = 0u64;
    for (d, &t) in order.iter().enumerate() {
        // Checked before the layer is built, so the limit also caps its memory.
        considered += (states.len() * options[t].len()) as u64;
        if considered > limit {
            return (pick, false, considered);
        }
        let f = &fronts[t];
        let mut next: Vec<(State, (usize, usize))> = Vec::new();
        for (s, state) in states.iter().enumerate() {
            for &(k, r) in &options[t] {
                let reduced = state.reduced + r;
                if reduced > gap {
                    break;
                }
                let bytes = state.bytes + f.bytes[k];
                if bytes + min_rest[d + 1] > budget {
                    continue;
                }
                // At least this much of the budget goes unused, at λ a byte.
                let unused = budget.saturating_sub(bytes + max_rest[d + 1]);
                if reduced + bound.lambda * unused as f64 > gap {
                    continue;
                }
                let damage = state.damage + f.damage[k];
                next.push((
                    State {
                        bytes,
                        damage,
                        reduced,
                    },
                    (s, k),
                ));
            }
        }
        // Keep the states no other beats on both bytes and damage.
        next.sort_by(|a, b| {
            a.0.bytes
                .cmp(&b.0.bytes)
                .then(a.0.damage.total_cmp(&b.0.damage))
        });
        let mut least = f64::INFINITY;
        next.retain(|(s, _)| {
            let keep = s.damage < least;
            least = least.min(s.damage);
            keep
        });
        let (layer, how): (Vec<State>, Vec<(usize, usize)>) = next.into_iter().unzip();
        states = layer;
        trail.push(how);
    }
    // The best final state, if it beats the answer so far; walk its trail back.
    let winner = (0..states.len())
        .filter(|&s| states[s].damage < best - noise)
        .min_by(|&a, &b| states[a].damage.total_cmp(&states[b].damage));
    let Some(mut s) = winner else {
        return (pick, true, considered);
    };
    let mut better = base;
    for (d, how) in trail.iter().enumerate().rev() {
        let (parent, k) = how[s];
        better[order[d]] = k;
        s = parent;
    }
    (better, true, considered)
}

/// A partial choice in stage 4: its bytes, damage and reduced cost so far.
#[derive(Debug, Clone, Copy)]
struct State {
    bytes: u64,
    damage: f64,
    reduced: f64,
}
