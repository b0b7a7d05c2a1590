//! The pieces under `auto_mix`: the budget solver (src/quant/allocate.rs) against brute force on
//! small random problems and within budget and its lower bound on large ones; the file-size model
//! (src/quant/file_size.rs) against real exports of the tiny model, to the byte; and the plan it
//! becomes (src/quant/auto_plan.rs): exactly the chosen types in tunelab's export, and a
//! `--tensor-type-file` that tunelab reads back and llama-quantize follows (when it is built).

use std::time::Instant;

use tunelab::gguf::export::export_gguf_planned;
use tunelab::gguf::{GgmlType, GgufReader, GgufWriter, Value};
use tunelab::model::{self, Model};
use tunelab::quant::allocate::{
    allocate, allocate_within, Allocation, Candidate, TensorCandidates, EXACT_LIMIT,
};
use tunelab::quant::auto_plan::{AutoPlan, TensorChoice};
use tunelab::quant::file_size::{candidate_types, holds_rows, FileLayout};
use tunelab::quant::plan::{read_rules, QuantPlan, Target, TypeRule};
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

// ---- file_size: the layout against real exports of the tiny model ----

fn tiny() -> Model {
    model::load("tiny", &Default::default()).unwrap()
}

fn ty(name: &str) -> GgmlType {
    GgmlType::from_name(name).unwrap()
}

/// A plan for `target` with `rules` (PATTERN=TYPE).
fn plan_with(target: &str, rules: &[&str]) -> QuantPlan {
    let mut p = QuantPlan::new(Target::named(target).unwrap());
    p.rules = rules
        .iter()
        .map(|r| TypeRule::parse(r, "test rule").unwrap())
        .collect();
    p
}

/// Export `m` with `plan` into `dir` and return the file's size.
fn exported_size(m: &Model, plan: &QuantPlan, dir: &std::path::Path, name: &str) -> u64 {
    let path = dir.join(name);
    export_gguf_planned(m, None, &path, plan, &mut |_| {}).unwrap();
    std::fs::metadata(&path).unwrap().len()
}

#[test]
fn the_layout_predicts_every_export_of_tiny_to_the_byte() {
    let m = tiny();
    let dir = tempfile::tempdir().unwrap();
    let mut plans = vec![
        ("F32", plan_with("F32", &[])),
        ("F16", plan_with("F16", &[])),
        ("BF16", plan_with("BF16", &[])),
        ("Q8_0", plan_with("Q8_0", &[])),
        ("Q4_K_M (K types fall back)", plan_with("Q4_K_M", &[])),
        (
            "Q4_0 with rules",
            plan_with(
                "Q4_0",
                &[
                    "attn_v=Q8_0",
                    "blk\\.1\\.ffn_down=F16",
                    "ffn_up=Q5_1",
                    "attn_q=BF16",
                ],
            ),
        ),
        ("F16 with a Q4_1 rule", plan_with("F16", &["ffn_gate=Q4_1"])),
    ];
    let mut embd = plan_with("Q5_0", &["attn_k=Q4_1"]);
    embd.token_embd_type = Some(ty("F16"));
    plans.push(("Q5_0, token_embd F16", embd));
    let mut pure = plan_with("Q6_K", &[]);
    pure.pure = true;
    plans.push(("Q6_K pure", pure));
    let mut sizes = Vec::new();
    for (i, (what, plan)) in plans.iter().enumerate() {
        let layout = FileLayout::new(&m, &plan.target).unwrap();
        let predicted = layout.size_of_plan(plan).unwrap();
        let actual = exported_size(&m, plan, dir.path(), &format!("{i}.gguf"));
        eprintln!("{what}: predicted {predicted}, exported {actual}");
        assert_eq!(predicted, actual, "{what}");
        sizes.push(actual);
    }
    // The plans really differ, so the equalities are not one number seen nine times.
    sizes.sort();
    sizes.dedup();
    assert!(sizes.len() >= 7, "{sizes:?}");
}

#[test]
fn the_layout_of_a_model_read_from_a_gguf_keeps_that_file_s_keys() {
    let dir = tempfile::tempdir().unwrap();
    let f16 = dir.path().join("tiny-f16.gguf");
    export_gguf_planned(&tiny(), None, &f16, &plan_with("F16", &[]), &mut |_| {}).unwrap();
    let m = model::load(f16.to_str().unwrap(), &Default::default()).unwrap();
    assert_eq!(m.format, "gguf");
    for plan in [
        plan_with("Q8_0", &["ffn_down=Q4_0"]),
        plan_with("BF16", &[]),
    ] {
        let layout = FileLayout::new(&m, &plan.target).unwrap();
        let actual = exported_size(&m, &plan, dir.path(), "again.gguf");
        assert_eq!(
            layout.size_of_plan(&plan).unwrap(),
            actual,
            "{}",
            plan.target.name()
        );
    }
}

#[test]
fn extra_metadata_keeps_the_size_exact() {
    // llama-quantize's importance-matrix keys, written into a real export through the writer.
    let m = tiny();
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_with("Q4_0", &["attn_v=Q8_0"]);
    let plain = dir.path().join("plain.gguf");
    export_gguf_planned(&m, None, &plain, &plan, &mut |_| {}).unwrap();
    let extra = [
        (
            "quantize.imatrix.file",
            Value::String("imatrix.gguf".into()),
        ),
        (
            "quantize.imatrix.dataset",
            Value::String("data/wiki.train.raw".into()),
        ),
        ("quantize.imatrix.entries_count", Value::I32(28)),
        ("quantize.imatrix.chunks_count", Value::I32(100)),
    ];
    let r = GgufReader::open(&plain).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in r
        .metadata
        .iter()
        .cloned()
        .chain(extra.iter().map(|(k, v)| (k.to_string(), v.clone())))
    {
        w.set(k, v);
    }
    for t in &r.tensors {
        w.add_tensor(
            t.name.clone(),
            &t.ne,
            t.ggml_type,
            r.tensor_bytes(t).unwrap(),
        )
        .unwrap();
    }
    let with_keys = dir.path().join("imatrix.gguf");
    w.write(&with_keys).unwrap();
    let mut layout = FileLayout::new(&m, &plan.target).unwrap();
    assert_eq!(
        layout.size_of_plan(&plan).unwrap(),
        std::fs::metadata(&plain).unwrap().len()
    );
    for (k, v) in extra {
        layout.set_metadata(k, v);
    }
    assert_eq!(
        layout.size_of_plan(&plan).unwrap(),
        std::fs::metadata(&with_keys).unwrap().len()
    );
}

#[test]
fn sizes_add_up_per_tensor_and_refuse_types_the_rows_cannot_hold() {
    let m = tiny();
    let layout = FileLayout::new(&m, &Target::named("Q8_0").unwrap()).unwrap();
    let names: Vec<&str> = layout.weights().iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"token_embd.weight") && names.contains(&"blk.3.ffn_down.weight"));
    assert!(!names.iter().any(|n| n.ends_with("_norm.weight")));
    // A file is its fixed part plus each weight's padded bytes.
    let pick = |name: &str| {
        if name.contains("attn") {
            ty("Q4_0")
        } else {
            ty("F16")
        }
    };
    let sum: u64 = names
        .iter()
        .map(|n| layout.tensor_bytes(n, pick(n)).unwrap())
        .sum();
    assert_eq!(layout.size_with(pick).unwrap(), layout.fixed_bytes() + sum);
    // tiny's rows are 128 and 384 weights: no K-quant holds them.
    let e = layout
        .tensor_bytes("blk.0.attn_q.weight", ty("Q4_K"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("Q4_0"),
        "{e}"
    );
    let e = layout
        .tensor_bytes("blk.9.attn_q.weight", ty("Q4_0"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no weight called"), "{e}");
    let e = layout.weight_budget(1000).unwrap_err().to_string();
    assert!(e.contains("fixed part") && e.contains("MB"), "{e}");
    assert_eq!(layout.weight_budget(layout.fixed_bytes() + 5).unwrap(), 5);
    let bpw = layout.bits_per_weight(|_| ty("Q8_0"));
    assert!(bpw > 8.5 && bpw < 9.0, "{bpw}"); // Q8_0 is 8.5, plus the F32 norms
}

#[test]
fn candidate_types_are_the_writable_ones_whose_blocks_divide_the_rows() {
    let names = |n: u64| {
        candidate_types(n)
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(128),
        ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16", "F32"]
    );
    let wide = names(4096);
    assert_eq!(wide.first(), Some(&"Q2_K"));
    assert!(wide.contains(&"Q6_K") && wide.len() == 13, "{wide:?}");
    assert_eq!(names(100), ["F16", "BF16", "F32"]);
    assert!(holds_rows(ty("Q4_K"), 512) && !holds_rows(ty("Q4_K"), 384));
}

#[test]
fn an_untied_output_and_biases_are_counted_too() {
    use candle_core::{DType, Tensor};
    use tunelab::model::linear::Linear;
    // tiny, untied (its own output.weight) and with biases on attn_q and attn_v of layer 1.
    let m = tiny();
    let mut parts = (*m).clone();
    parts.llama.config.tie_word_embeddings = false;
    parts.llama.lm_head = Linear::dense((parts.llama.embed.clone() * 0.5).unwrap(), None);
    let block = &mut parts.llama.blocks[1];
    for lin in [&mut block.q, &mut block.v] {
        let out = lin.dims().0;
        lin.bias = Some(Tensor::zeros(out, DType::F32, &candle_core::Device::Cpu).unwrap());
    }
    let m = Model::new(parts);
    let dir = tempfile::tempdir().unwrap();
    let mut plan = plan_with("Q4_0", &["attn_v=Q5_1"]);
    plan.output_type = Some(ty("Q8_0"));
    let layout = FileLayout::new(&m, &plan.target).unwrap();
    assert!(layout.weight("output.weight").is_some());
    let actual = exported_size(&m, &plan, dir.path(), "untied.gguf");
    assert_eq!(layout.size_of_plan(&plan).unwrap(), actual);
    let r = GgufReader::open(dir.path().join("untied.gguf")).unwrap();
    assert!(r.tensor("blk.1.attn_v.bias").is_some() && r.tensor("output.weight").is_some());
}

// ---- auto_plan: the solver's answer as a plan, a file and a table ----

/// A varied choice for every weight of tiny: the i-th weight takes the (i mod n)-th type its rows
/// hold, so every writable 32-block and float type appears.
fn varied_choices(layout: &FileLayout) -> Vec<TensorChoice> {
    layout
        .weights()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let types = candidate_types(t.row_len());
            let ty = types[i % types.len()];
            TensorChoice {
                name: t.name.clone(),
                ggml_type: ty,
                bytes: layout.tensor_bytes(&t.name, ty).unwrap(),
                score: i as f64,
            }
        })
        .collect()
}

/// The ggml type of every tensor in the GGUF at `path`.
fn file_types(path: &std::path::Path) -> std::collections::HashMap<String, &'static str> {
    let r = GgufReader::open(path).unwrap();
    r.tensors
        .iter()
        .map(|t| (t.name.clone(), t.ggml_type.name))
        .collect()
}

#[test]
fn the_plan_gives_every_weight_exactly_its_chosen_type() {
    let m = tiny();
    let layout = FileLayout::new(&m, &Target::named("Q4_K_M").unwrap()).unwrap();
    let choices = varied_choices(&layout);
    let auto = AutoPlan::new(&layout, choices.clone()).unwrap();
    let plan = auto.to_quant_plan();
    for c in &choices {
        let ne = &layout.weight(&c.name).unwrap().ne;
        let got = plan.tensor_type(&c.name, ne, &layout.shape());
        assert_eq!(got.name, c.ggml_type.name, "{}", c.name);
    }
    // And the export writes those types, in a file of exactly the predicted size.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auto.gguf");
    export_gguf_planned(&m, None, &path, &plan, &mut |_| {}).unwrap();
    let types = file_types(&path);
    for c in &choices {
        assert_eq!(types[&c.name], c.ggml_type.name, "{}", c.name);
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), auto.bytes);
    let sum: u64 = choices.iter().map(|c| c.bytes).sum();
    assert_eq!(auto.bytes, layout.fixed_bytes() + sum);
}

#[test]
fn the_tensor_type_file_reads_back_to_the_same_types() {
    let m = tiny();
    let layout = FileLayout::new(&m, &Target::named("Q8_0").unwrap()).unwrap();
    let auto = AutoPlan::new(&layout, varied_choices(&layout)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/types.txt");
    auto.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    // llama-quantize reads whitespace-separated PATTERN=TYPE items and knows no comments.
    assert_eq!(text.lines().count(), layout.weights().len());
    assert!(text
        .lines()
        .all(|l| l.split_whitespace().count() == 1 && l.contains('=')));
    assert!(!text.contains('#'));
    assert!(text.contains("^blk\\.0\\.attn_q\\.weight$="), "{text}");
    let mut back = QuantPlan::new(auto.target());
    back.rules = read_rules(&path).unwrap();
    for c in &auto.per_tensor {
        let ne = &layout.weight(&c.name).unwrap().ne;
        assert_eq!(
            back.tensor_type(&c.name, ne, &layout.shape()).name,
            c.ggml_type.name
        );
    }
    // Nothing left beside it from the atomic write.
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn solver_to_file_stays_within_a_budget_for_the_whole_file() {
    let m = tiny();
    let layout = FileLayout::new(&m, &Target::named("Q4_0").unwrap()).unwrap();
    // Damage: each weight's error falls 4× per extra bit (a stand-in for a measure), with
    // attn_v made more sensitive.
    let tensors: Vec<TensorCandidates> = layout
        .weights()
        .iter()
        .map(|t| TensorCandidates {
            name: t.name.clone(),
            candidates: candidate_types(t.row_len())
                .into_iter()
                .map(|ty| Candidate {
                    ggml_type: ty,
                    bytes: layout.tensor_bytes(&t.name, ty).unwrap(),
                    damage: t.elements() as f64
                        * (-2.0 * ty.bits_per_weight()).exp2()
                        * if t.name.contains("attn_v") { 50.0 } else { 1.0 },
                })
                .collect(),
        })
        .collect();
    let smallest = layout.size_with(|_| ty("Q4_0")).unwrap();
    let file_budget = smallest + 200_000;
    let a = allocate(&tensors, layout.weight_budget(file_budget).unwrap()).unwrap();
    let combinations: f64 = tensors.iter().map(|t| t.candidates.len() as f64).product();
    eprintln!(
        "tiny: {} weights, {combinations:.1e} combinations (exact search up to {EXACT_LIMIT}), proven optimal: {}, {} states",
        tensors.len(),
        a.optimal,
        a.states
    );
    let auto = AutoPlan::from_allocation(&layout, &tensors, &a).unwrap();
    assert!(auto.bytes <= file_budget, "{} > {file_budget}", auto.bytes);
    assert_eq!(auto.bytes, layout.fixed_bytes() + a.bytes);
    assert!((auto.score() - a.damage).abs() < 1e-9 * a.damage.max(1.0));
    // The sensitive attn_v got more bits than the cheapest type.
    assert!(auto
        .per_tensor
        .iter()
        .filter(|c| c.name.contains("attn_v"))
        .all(|c| c.ggml_type.bits_per_weight() > 4.5));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budget.gguf");
    export_gguf_planned(&m, None, &path, &auto.to_quant_plan(), &mut |_| {}).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), auto.bytes);
    let summary = auto.summary();
    eprintln!("{summary}");
    assert!(summary.starts_with("kind"), "{summary}");
    assert!(summary.contains("attn_v") && summary.contains("token_embd"));
    assert!(summary.contains(&format!("{} bytes", auto.bytes)));
}

#[test]
fn the_summary_counts_types_per_kind_and_the_label_follows_the_majority() {
    let m = tiny();
    let layout = FileLayout::new(&m, &Target::named("Q8_0").unwrap()).unwrap();
    let choices: Vec<TensorChoice> = layout
        .weights()
        .iter()
        .map(|t| {
            let ty = match t.name.as_str() {
                n if n.contains("ffn_down") => ty("Q5_1"),
                n if n.contains("blk.0.attn_q") => ty("F16"),
                _ => ty("Q4_0"),
            };
            TensorChoice {
                name: t.name.clone(),
                ggml_type: ty,
                bytes: layout.tensor_bytes(&t.name, ty).unwrap(),
                score: 0.5,
            }
        })
        .collect();
    let auto = AutoPlan::new(&layout, choices).unwrap();
    assert_eq!(auto.target().name(), "Q4_0");
    let summary = auto.summary();
    let lines: Vec<Vec<&str>> = summary
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["kind", "Q4_0", "Q5_1", "F16"], "{summary}");
    assert_eq!(lines[1], ["token_embd", "1", ".", "."], "{summary}");
    assert_eq!(lines[2], ["attn_q", "3", ".", "1"], "{summary}");
    assert_eq!(lines[8], ["ffn_down", ".", "4", "."], "{summary}");
}

#[test]
fn plans_refuse_missing_unknown_repeated_or_misreported_weights() {
    let m = tiny();
    let layout = FileLayout::new(&m, &Target::named("Q8_0").unwrap()).unwrap();
    let good = varied_choices(&layout);
    let err = |choices: Vec<TensorChoice>| AutoPlan::new(&layout, choices).unwrap_err().to_string();
    let e = err(good[1..].to_vec());
    assert!(
        e.contains(&good[0].name) && e.contains("no type chosen"),
        "{e}"
    );
    let mut unknown = good.clone();
    unknown[0].name = "blk.99.attn_q.weight".into();
    assert!(err(unknown).contains("no such weight"));
    let mut twice = good.clone();
    twice.push(good[3].clone());
    assert!(err(twice).contains("chosen twice"));
    let mut unpadded = good.clone();
    unpadded[2].bytes += 1;
    assert!(err(unpadded).contains("FileLayout::tensor_bytes"));
    let mut k_quant = good.clone();
    k_quant[0].ggml_type = ty("Q4_K");
    assert!(err(k_quant).contains("blocks"));
    let mut iq = good;
    iq[0].ggml_type = ty("IQ4_NL");
    assert!(err(iq).contains("not a type tunelab can write"));
}

/// llama-quantize reads the saved file and writes exactly the chosen types. Skipped when
/// llama.cpp is not built (scripts/build-llama-cpp.sh).
#[test]
fn llama_quantize_reads_the_tensor_type_file() {
    let Some(home) = std::env::var_os("HOME") else {
        return;
    };
    let bin = std::path::Path::new(&home).join(".cache/tunelab/llama.cpp/build/bin/llama-quantize");
    if !bin.is_file() {
        eprintln!("skipped: {} is not built", bin.display());
        return;
    }
    let m = tiny();
    let dir = tempfile::tempdir().unwrap();
    let f32_file = dir.path().join("tiny-f32.gguf");
    export_gguf_planned(&m, None, &f32_file, &plan_with("F32", &[]), &mut |_| {}).unwrap();
    let layout = FileLayout::new(&m, &Target::named("Q8_0").unwrap()).unwrap();
    let auto = AutoPlan::new(&layout, varied_choices(&layout)).unwrap();
    let rules = dir.path().join("types.txt");
    auto.save(&rules).unwrap();
    let out = dir.path().join("quantized.gguf");
    let run = std::process::Command::new(&bin)
        .arg("--tensor-type-file")
        .arg(&rules)
        .arg(&f32_file)
        .arg(&out)
        .arg(auto.target().name())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "llama-quantize failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let types = file_types(&out);
    for c in &auto.per_tensor {
        assert_eq!(types[&c.name], c.ggml_type.name, "{}", c.name);
    }
}
