//! The pieces under `auto_mix`: the budget solver (src/quant/allocate.rs) against brute force on
//! small random problems and within budget and its lower bound on large ones; the file-size model
//! (src/quant/file_size.rs) against real exports of the tiny model, to the byte; and the plan it
//! becomes (src/quant/auto_plan.rs): exactly the chosen types, and a `--tensor-type-file` that
//! reads back.

use std::time::Instant;

use tunelab::gguf::GgmlType;
use tunelab::quant::allocate::{
    allocate, allocate_within, Allocation, Candidate, TensorCandidates,
};
use tunelab::rng::Rng;

/// How the random damages relate to bytes.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Damage falls as bytes rise, convexly (the usual case).
    Convex,
    /// Damage falls with bytes but with bumps (a hull drops some candidates).
    Bumpy,
    /// Damage has nothing to do with bytes (many candidates are dominated).
    Random,
    /// Few distinct bytes and damages, so ties everywhere.
    Tied,
}

const SHAPES: [Shape; 4] = [Shape::Convex, Shape::Bumpy, Shape::Random, Shape::Tied];

fn q4() -> GgmlType {
    GgmlType::from_name("Q4_0").unwrap()
}

/// `n` tensors of `min_k..=max_k` candidates of the given shape.
fn problem(
    rng: &mut Rng,
    n: usize,
    min_k: usize,
    max_k: usize,
    shape: Shape,
) -> Vec<TensorCandidates> {
    (0..n)
        .map(|i| {
            let k = min_k + rng.below(max_k - min_k + 1);
            let scale = 1000 + rng.below(100_000) as u64;
            let weight = 0.1 + rng.next_f64() * 10.0;
            let candidates = (0..k)
                .map(|_| {
                    let (bytes, damage) = match shape {
                        Shape::Tied => {
                            // 1 to 4 kB, each kB saving 1 or 2: equal rates across tensors.
                            let kb = 1 + rng.below(4) as u64;
                            let per_kb = [1.0, 2.0][rng.below(2)];
                            (
                                kb * 1000,
                                (4 - kb) as f64 * per_kb + [0.0, 1.0][rng.below(2)],
                            )
                        }
                        _ => {
                            let bits = 2.0 + rng.next_f64() * 14.0;
                            let bytes = (scale as f64 * bits / 8.0) as u64;
                            let smooth = weight * (-0.7 * bits).exp2();
                            let damage = match shape {
                                Shape::Convex => smooth,
                                Shape::Bumpy => smooth * (0.5 + rng.next_f64()),
                                _ => weight * rng.next_f64(),
                            };
                            (bytes, damage)
                        }
                    };
                    Candidate {
                        ggml_type: q4(),
                        bytes,
                        damage,
                    }
                })
                .collect();
            TensorCandidates {
                name: format!("blk.{i}.ffn_down.weight"),
                candidates,
            }
        })
        .collect()
}

/// The smallest total, and the total of each tensor's least damage (more buys nothing).
fn extremes(p: &[TensorCandidates]) -> (u64, u64) {
    let smallest = p
        .iter()
        .map(|t| t.candidates.iter().map(|c| c.bytes).min().unwrap());
    let least_damage = p.iter().map(|t| {
        let best = t
            .candidates
            .iter()
            .map(|c| c.damage)
            .fold(f64::INFINITY, f64::min);
        t.candidates
            .iter()
            .filter(|c| c.damage == best)
            .map(|c| c.bytes)
            .min()
            .unwrap()
    });
    (smallest.sum(), least_damage.sum())
}

/// A budget between the smallest total and the one where every tensor has its least damage.
fn budget(rng: &mut Rng, p: &[TensorCandidates]) -> u64 {
    let (lo, hi) = extremes(p);
    lo + ((hi - lo) as f64 * rng.next_f64()) as u64
}

/// The least damage within `budget`, by trying every combination.
fn brute_force(p: &[TensorCandidates], budget: u64) -> f64 {
    let mut best = f64::INFINITY;
    let mut at = vec![0usize; p.len()];
    loop {
        let bytes: u64 = p.iter().zip(&at).map(|(t, &k)| t.candidates[k].bytes).sum();
        if bytes <= budget {
            let damage: f64 = p
                .iter()
                .zip(&at)
                .map(|(t, &k)| t.candidates[k].damage)
                .sum();
            best = best.min(damage);
        }
        // Next combination, like an odometer.
        let mut i = 0;
        loop {
            if i == p.len() {
                return best;
            }
            at[i] += 1;
            if at[i] < p[i].candidates.len() {
                break;
            }
            at[i] = 0;
            i += 1;
        }
    }
}

/// The answer is what it says it is: its totals add up, within the budget, above its bound.
fn check_consistent(p: &[TensorCandidates], a: &Allocation, budget: u64) {
    let bytes: u64 = p
        .iter()
        .zip(&a.choice)
        .map(|(t, &k)| t.candidates[k].bytes)
        .sum();
    let damage: f64 = p
        .iter()
        .zip(&a.choice)
        .map(|(t, &k)| t.candidates[k].damage)
        .sum();
    assert_eq!(bytes, a.bytes);
    assert!(bytes <= budget, "{bytes} bytes over the budget of {budget}");
    assert!(
        (damage - a.damage).abs() <= 1e-9 * (1.0 + damage),
        "{damage} vs {}",
        a.damage
    );
    assert!(
        a.lower_bound <= a.damage + 1e-9 * (1.0 + a.damage),
        "lower bound {} above the damage {}",
        a.lower_bound,
        a.damage
    );
}

#[test]
fn small_problems_are_solved_exactly_as_brute_force_finds() {
    let mut rng = Rng::new(1);
    let mut checked = 0;
    for case in 0..600 {
        let shape = SHAPES[case % SHAPES.len()];
        let n = 1 + rng.below(7);
        let p = problem(&mut rng, n, 1, 5, shape);
        let b = budget(&mut rng, &p);
        let a = allocate(&p, b).unwrap();
        check_consistent(&p, &a, b);
        assert!(
            a.optimal,
            "case {case}: a small problem must be searched to the end"
        );
        let want = brute_force(&p, b);
        assert!(
            (a.damage - want).abs() <= 1e-9 * (1.0 + want),
            "case {case} ({shape:?}, {n} tensors, budget {b}): solver {} vs brute force {want}",
            a.damage
        );
        checked += 1;
    }
    assert_eq!(checked, 600);
}

#[test]
fn large_problems_stay_within_budget_and_near_their_bound() {
    let mut rng = Rng::new(2);
    for shape in SHAPES {
        for _ in 0..3 {
            let n = 200 + rng.below(200);
            let p = problem(&mut rng, n, 5, 8, shape);
            let b = budget(&mut rng, &p);
            let a = allocate(&p, b).unwrap();
            check_consistent(&p, &a, b);
            // Stages 1–3 alone (no search) stay within the budget too, and never beat it.
            let quick = allocate_within(&p, b, 0).unwrap();
            check_consistent(&p, &quick, b);
            assert!(quick.damage >= a.damage - 1e-9 * (1.0 + a.damage));
            eprintln!(
                "{shape:?}, {n} tensors: damage {:.6} (without the search {:.6}), lower bound {:.6} (gap {:.2e}), {} of {b} bytes, proven optimal: {}, {} states",
                a.damage,
                quick.damage,
                a.lower_bound,
                a.bound_gap(),
                a.bytes,
                a.optimal,
                a.states
            );
        }
    }
}

#[test]
fn a_larger_budget_never_gives_more_damage() {
    let mut rng = Rng::new(3);
    for (case, shape) in SHAPES.iter().cycle().take(12).enumerate() {
        let n = if case < 4 { 6 } else { 300 };
        let p = problem(&mut rng, n, 5, 8, *shape);
        let (lo, hi) = extremes(&p);
        let mut last: Option<Allocation> = None;
        for step in 0..=20 {
            let b = lo + (hi - lo) * step / 20;
            let a = allocate(&p, b).unwrap();
            check_consistent(&p, &a, b);
            if let Some(prev) = &last {
                assert!(
                    a.damage <= prev.damage + 1e-9 * (1.0 + prev.damage),
                    "case {case} ({shape:?}): budget {b} gives {} but a smaller one gave {} (optimal: {} and {})",
                    a.damage,
                    prev.damage,
                    a.optimal,
                    prev.optimal
                );
            }
            last = Some(a);
        }
    }
}

#[test]
fn the_bound_is_tight_when_the_relaxation_fills_the_budget_exactly() {
    // Convex fronts: a budget that ends on hull points leaves no gap.
    let c = |bytes, damage| Candidate {
        ggml_type: q4(),
        bytes,
        damage,
    };
    let p: Vec<TensorCandidates> = (0..3)
        .map(|i| TensorCandidates {
            name: format!("t{i}"),
            candidates: vec![c(100, 8.0), c(200, 3.0), c(400, 1.0)],
        })
        .collect();
    // Upgrades save 5/100 bytes first (all three), then 2/200: a budget of 3·200 takes the first.
    let a = allocate(&p, 600).unwrap();
    assert_eq!(a.choice, vec![1, 1, 1]);
    assert!((a.damage - 9.0).abs() < 1e-12);
    assert!(a.bound_gap().abs() < 1e-9, "gap {}", a.bound_gap());
    assert!(a.optimal);
    // Everything fits: each tensor takes its least damage, λ = 0.
    let a = allocate(&p, 10_000).unwrap();
    assert_eq!((a.choice, a.lambda), (vec![2, 2, 2], 0.0));
}

#[test]
fn three_hundred_tensors_of_eight_candidates_take_well_under_a_second() {
    let mut rng = Rng::new(4);
    let mut slowest = 0.0f64;
    for shape in SHAPES {
        let p = problem(&mut rng, 300, 8, 8, shape);
        let b = budget(&mut rng, &p);
        let start = Instant::now();
        let a = allocate(&p, b).unwrap();
        let took = start.elapsed().as_secs_f64();
        check_consistent(&p, &a, b);
        eprintln!(
            "{shape:?}: 300 × 8 in {:.1} ms ({} states)",
            took * 1e3,
            a.states
        );
        slowest = slowest.max(took);
    }
    // Generous for a loaded test machine; typically a few milliseconds.
    assert!(slowest < 1.0, "slowest {slowest:.3} s");
}

#[test]
fn errors_name_the_tensor_or_the_smallest_size() {
    let c = |bytes, damage| Candidate {
        ggml_type: q4(),
        bytes,
        damage,
    };
    let p = vec![
        TensorCandidates {
            name: "token_embd.weight".into(),
            candidates: vec![c(1_500_000, 1.0), c(3_000_000, 0.5)],
        },
        TensorCandidates {
            name: "blk.0.attn_q.weight".into(),
            candidates: vec![],
        },
    ];
    let e = allocate(&p, 10_000_000).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("no candidate"),
        "{e}"
    );
    let e = allocate(&p[..1], 1_000_000).unwrap_err().to_string();
    assert!(
        e.contains("1500000 bytes") && e.contains("1.50 MB") && e.contains("raise the budget"),
        "{e}"
    );
    let bad = vec![TensorCandidates {
        name: "output.weight".into(),
        candidates: vec![c(10, f64::NAN)],
    }];
    let e = allocate(&bad, 100).unwrap_err().to_string();
    assert!(e.contains("output.weight") && e.contains("NaN"), "{e}");
    // No tensors: nothing to choose, nothing spent.
    let a = allocate(&[], 0).unwrap();
    assert_eq!((a.bytes, a.choice.len()), (0, 0));
}

/// The least damage within `budget` when every size is a multiple of `unit`, by dynamic
/// programming over the budget in units (exact, and fast when budget/unit is small).
fn dynamic_programming(p: &[TensorCandidates], budget: u64, unit: u64) -> f64 {
    let cap = (budget / unit) as usize;
    // least[c]: the least damage of the tensors so far within c units.
    let mut least = vec![0.0f64; cap + 1];
    for t in p {
        let mut next = vec![f64::INFINITY; cap + 1];
        for c in 0..=cap {
            for cand in &t.candidates {
                assert_eq!(cand.bytes % unit, 0);
                let u = (cand.bytes / unit) as usize;
                if u <= c {
                    next[c] = next[c].min(least[c - u] + cand.damage);
                }
            }
        }
        least = next;
    }
    least[cap]
}

#[test]
fn large_problems_with_coarse_sizes_match_dynamic_programming() {
    let mut rng = Rng::new(5);
    for (case, shape) in SHAPES.iter().cycle().take(16).enumerate() {
        let mut p = problem(&mut rng, 250, 5, 8, *shape);
        // Sizes rounded to whole kB, so the budget is a few thousand units.
        for t in &mut p {
            for c in &mut t.candidates {
                c.bytes = c.bytes.div_ceil(1000) * 1000;
            }
        }
        let b = budget(&mut rng, &p);
        let a = allocate(&p, b).unwrap();
        check_consistent(&p, &a, b);
        let want = dynamic_programming(&p, b, 1000);
        eprintln!(
            "case {case} ({shape:?}): solver {:.6}, dynamic programming {want:.6}, bound {:.6}, proven: {}, {} states",
            a.damage, a.lower_bound, a.optimal, a.states
        );
        assert!(a.optimal, "case {case}: the search should finish on these");
        assert!(
            (a.damage - want).abs() <= 1e-9 * (1.0 + want),
            "case {case}"
        );
    }
}
