//! The labelled test set of the loss-curve diagnosis: synthetic curves for every verdict plus real
//! curves from tunelab and LLaMA-Factory runs; at least 95% must get their label. The confusion
//! table is printed (`cargo test --test diagnose -- --nocapture`).
//!
//! How the synthetic curves are made (seeded, so the set is the same on every run): each verdict
//! has a shape family, drawn with random parameters, then
//! - **length** 30–600 points (too_short: 1–5), **spacing** every 1, 5 or 10 steps or uneven
//!   (random gaps of 1–20 steps), **scale** ×0.3–8 on every value;
//! - **noise** multiplicative Gaussian with σ 0–10% of the level (not_converging up to 12%,
//!   unstable oscillation 35–60%), and in a third of the curves rare heavy-tailed points (one in
//!   50, up to +30%) as real batches produce;
//! - in a third of the multi-epoch shapes, LLaMA-Factory's **per-epoch drops** (the train loss
//!   steps down 5–15% at each epoch boundary as the model meets examples again).
//!
//! Shapes (t = position in the run, 0..1):
//! - converged: `L + A·e^(−t/τ)` with τ = 1/5–1/10 of the run and a total fall of 40–80%;
//! - converging: the same with τ = 0.8–3 runs (still falling), or a straight slow descent of
//!   25–50% (a learning rate on the low side);
//! - not_converging: flat with a drift of at most ±1.5% under 2–12% noise;
//! - underfitting: a fall of 8–18% within the first sixth, then flat (noise ≤ a third of the fall);
//! - overfitting: a train loss converging low, and 8–20 sparse evaluations shaped
//!   `E + B·e^(−s/τ) + C·max(0, s − s₀)²` whose minimum lies at 25–60% of the run and whose last
//!   points are 10–40% above it (eval noise ≤ 1.5%);
//! - unstable: a converging loss with 3–6 spikes of ×1.8–4, or a sustained jump of +45–100% for
//!   a tenth of the run, or oscillation of 35–60% around a slight decrease;
//! - diverged: a NaN or inf from some step on, or a fall followed by a blow-up to 1.3–5× the start;
//! - too_short: 1–5 points of any shape.
//!
//! Three further families (issue 17), 40 curves each:
//! - **wild scatter** (unstable): a falling trend (30–70% over the run) whose points scatter
//!   log-normally with σ 25–50% of the level through the whole run, 30–600 points — "fluctuating
//!   wildly: the learning rate is too high or the batch too small", even without single spikes;
//! - **eval follows** (converged or converging): a per-batch train loss that drops 10–25% early
//!   and then wanders with 4–10% noise (varied examples per batch), with evaluations that fall at
//!   every one, from the first to the last: by 3–8% and levelling off over 4–10 evaluations
//!   (converged), or by 12–25% and still falling steadily over 4–8 (converging);
//! - **eval stalls** (converged): a train loss still falling clearly at the end (20–40% over the
//!   run, so under 20% after the eval minimum: not yet the memorising of overfitting), with an
//!   eval loss that reached its minimum at 55–70% of the run and has crept up 0.5–2.5% since
//!   (under the overfitting threshold): done at these settings, not "train longer".

use std::collections::BTreeMap;
use std::path::Path;

use tunelab::curves::{diagnose, sources, Curve, Verdict};
use tunelab::rng::Rng;

/// A Gaussian sample (Box–Muller).
fn gauss(rng: &mut Rng) -> f64 {
    let u1 = rng.next_f64().max(1e-12);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.next_f64()
}

/// Steps for `n` points: every 1, 5 or 10, or uneven gaps.
fn steps(rng: &mut Rng, n: usize) -> Vec<usize> {
    match rng.below(4) {
        0 => (1..=n).collect(),
        1 => (1..=n).map(|i| i * 5).collect(),
        2 => (1..=n).map(|i| i * 10).collect(),
        _ => {
            let mut s = 0;
            (0..n)
                .map(|_| {
                    s += 1 + rng.below(20);
                    s
                })
                .collect()
        }
    }
}

/// Multiplicative noise of relative σ `sigma`, with rare heavy-tailed points in a third of curves.
fn add_noise(rng: &mut Rng, values: &mut [f64], sigma: f64) {
    let heavy = rng.below(3) == 0;
    for v in values.iter_mut() {
        let mut f = 1.0 + sigma * gauss(rng);
        if heavy && rng.below(50) == 0 {
            f += uniform(rng, 0.1, 0.3);
        }
        *v *= f.max(0.05);
    }
}

/// LLaMA-Factory's per-epoch drops in a third of the curves: 2–6 epochs, each boundary steps the
/// loss down 5–15% of its level.
fn epoch_drops(rng: &mut Rng, values: &mut [f64]) {
    if rng.below(3) != 0 {
        return;
    }
    let epochs = 2 + rng.below(5);
    let n = values.len();
    let mut factor = 1.0;
    for (i, v) in values.iter_mut().enumerate() {
        let epoch = i * epochs / n;
        if epoch > 0 && i * epochs % n < epochs {
            factor *= 1.0 - uniform(rng, 0.05, 0.15);
        }
        *v *= factor;
    }
}

fn decay(n: usize, level: f64, amplitude: f64, tau: f64) -> Vec<f64> {
    (0..n)
        .map(|i| level + amplitude * (-(i as f64 / n as f64) / tau).exp())
        .collect()
}

/// One labelled synthetic case: (train, eval).
fn synthetic(verdict: Verdict, rng: &mut Rng) -> (Curve, Option<Curve>) {
    let n = 30 + rng.below(571);
    let scale = uniform(rng, 0.3, 8.0);
    let sigma = uniform(rng, 0.0, 0.10);
    let mut eval = None;
    let values = match verdict {
        Verdict::Converged => {
            let fall = uniform(rng, 0.4, 0.8);
            let mut v = decay(n, 1.0 - fall, fall, uniform(rng, 0.1, 0.2));
            epoch_drops(rng, &mut v);
            add_noise(rng, &mut v, sigma);
            v
        }
        Verdict::Converging => {
            let mut v: Vec<f64> = if rng.below(2) == 0 {
                // Falls 25–50% over the run and would fall further: τ ≥ 0.8 runs.
                let (tau, fall) = (uniform(rng, 0.8, 3.0), uniform(rng, 0.25, 0.5));
                let amplitude = fall / (1.0 - (-1.0 / tau).exp());
                decay(n, 1.0 - amplitude, amplitude, tau)
            } else {
                let fall = uniform(rng, 0.25, 0.5);
                (0..n).map(|i| 1.0 - fall * i as f64 / n as f64).collect()
            };
            add_noise(rng, &mut v, sigma);
            v
        }
        Verdict::NotConverging => {
            let drift = uniform(rng, -0.015, 0.015);
            let mut v: Vec<f64> = (0..n).map(|i| 1.0 + drift * i as f64 / n as f64).collect();
            let sd = uniform(rng, 0.02, 0.12);
            add_noise(rng, &mut v, sd);
            v
        }
        Verdict::Underfitting => {
            let fall = uniform(rng, 0.08, 0.18);
            let mut v = decay(n, 1.0 - fall, fall, uniform(rng, 0.02, 0.06));
            let sd = uniform(rng, 0.0, fall / 3.0);
            add_noise(rng, &mut v, sd);
            v
        }
        Verdict::Overfitting => {
            let fall = uniform(rng, 0.5, 0.85);
            let mut v = decay(n, 1.0 - fall, fall, uniform(rng, 0.15, 0.4));
            epoch_drops(rng, &mut v);
            add_noise(rng, &mut v, sigma);
            let k = 8 + rng.below(13);
            let s0 = uniform(rng, 0.25, 0.6);
            let rise = uniform(rng, 0.10, 0.40);
            let (e_level, e_amp) = (uniform(rng, 0.8, 1.2), uniform(rng, 0.3, 0.8));
            let tau = s0 / 3.0;
            let base = |x: f64| e_level + e_amp * (-x / tau).exp();
            // C so the last evaluation is `rise` above the curve's value at s₀.
            let c = rise * base(s0) / (1.0 - s0).powi(2);
            let e_noise = uniform(rng, 0.0, 0.015);
            let points: Vec<(f64, f64)> = (1..=k)
                .map(|j| {
                    let x = j as f64 / k as f64;
                    let e = base(x) + c * (x - s0).max(0.0).powi(2);
                    (x, e * (1.0 + e_noise * gauss(rng)))
                })
                .collect();
            eval = Some(points);
            v
        }
        Verdict::Unstable => {
            let mut v = decay(n, 0.5, 0.5, uniform(rng, 0.1, 0.3));
            match rng.below(3) {
                0 => {
                    add_noise(rng, &mut v, sigma.min(0.06));
                    for _ in 0..3 + rng.below(4) {
                        let i = n / 10 + rng.below(n * 8 / 10);
                        v[i] *= uniform(rng, 1.8, 4.0);
                    }
                }
                1 => {
                    let at = n / 4 + rng.below(n / 2);
                    let jump = uniform(rng, 1.45, 2.0);
                    for x in v.iter_mut().skip(at).take(n / 10 + 3) {
                        *x *= jump;
                    }
                    add_noise(rng, &mut v, sigma.min(0.06));
                }
                _ => {
                    v = (0..n).map(|i| 1.0 - 0.1 * i as f64 / n as f64).collect();
                    let sd = uniform(rng, 0.35, 0.6);
                    add_noise(rng, &mut v, sd);
                }
            }
            v
        }
        Verdict::Diverged => {
            let mut v = decay(n, 0.5, 0.5, uniform(rng, 0.1, 0.3));
            add_noise(rng, &mut v, sigma);
            match rng.below(3) {
                0 => {
                    let at = n / 3 + rng.below(n / 2);
                    for x in v.iter_mut().skip(at) {
                        *x = f64::NAN;
                    }
                }
                1 => {
                    let at = rng.below(n);
                    v[at] = f64::INFINITY;
                }
                _ => {
                    let at = n / 3 + rng.below(n / 3);
                    let top = uniform(rng, 1.3, 5.0);
                    let rise_from = v[at];
                    let len = (n - at) as f64;
                    for (j, x) in v.iter_mut().enumerate().skip(at) {
                        let t = (j - at) as f64 / len;
                        *x = rise_from * (top / rise_from).powf(t.sqrt());
                    }
                }
            }
            v
        }
        Verdict::TooShort => {
            let m = 1 + rng.below(5);
            (0..m).map(|i| 3.0 - 0.3 * i as f64).collect()
        }
    };
    place(rng, values, eval, scale)
}

/// The curves of `values` (scaled, at random step spacing) and of the eval points (positions
/// 0..1 of the run) at the matching steps.
fn place(
    rng: &mut Rng,
    values: Vec<f64>,
    eval: Option<Vec<(f64, f64)>>,
    scale: f64,
) -> (Curve, Option<Curve>) {
    let s = steps(rng, values.len());
    let points: Vec<(usize, f64)> = s
        .iter()
        .copied()
        .zip(values.iter().map(|v| v * scale))
        .collect();
    let last = *s.last().unwrap_or(&1) as f64;
    let eval = eval.map(|points| {
        let pts: Vec<(usize, f64)> = points
            .iter()
            .map(|&(x, e)| (((x * last).round() as usize).max(1), e * scale))
            .collect();
        Curve::new("eval_loss", &pts)
    });
    (Curve::new("loss", &points), eval)
}

/// One labelled case of the set.
struct Case {
    name: String,
    expected: Verdict,
    train: Curve,
    eval: Option<Curve>,
    /// The eval minimum's step, for overfitting cases (best_step must equal it).
    best_step: Option<usize>,
}

const PER_VERDICT: usize = 40;

/// Multiplies each value by a log-normal factor of σ `sigma` (median 1), as per-batch losses scatter.
fn lognormal_noise(rng: &mut Rng, values: &mut [f64], sigma: f64) {
    for v in values.iter_mut() {
        *v *= (sigma * gauss(rng)).exp();
    }
}

/// Eval points `(position 0..1, value)` at `k` evenly spaced evaluations; `fall(u)` is the
/// relative fall reached at `u` = 0 (the first evaluation) .. 1 (the last).
fn evals(k: usize, level: f64, fall: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    (1..=k)
        .map(|j| {
            let u = (j - 1) as f64 / (k - 1) as f64;
            (j as f64 / k as f64, level * (1.0 - fall(u)))
        })
        .collect()
}

/// One curve of an issue-17 family: (family name, expected verdict, train values, eval points at
/// positions 0..1 of the run).
type FamilyCase = (&'static str, Verdict, Vec<f64>, Option<Vec<(f64, f64)>>);

/// The families of issue 17.
fn issue17_synthetic(family: usize, rng: &mut Rng) -> FamilyCase {
    let n = 30 + rng.below(571);
    match family {
        0 => {
            let fall = uniform(rng, 0.3, 0.7);
            let mut v = decay(n, 1.0 - fall, fall, uniform(rng, 0.1, 0.5));
            let sigma = uniform(rng, 0.25, 0.5);
            lognormal_noise(rng, &mut v, sigma);
            ("wild scatter", Verdict::Unstable, v, None)
        }
        1 => {
            let early = uniform(rng, 0.10, 0.25);
            let mut v = decay(n, 1.0 - early, early, uniform(rng, 0.03, 0.1));
            let sigma = uniform(rng, 0.04, 0.10);
            add_noise(rng, &mut v, sigma);
            let level = uniform(rng, 0.9, 1.1);
            if rng.below(2) == 0 {
                // Falls at every evaluation, by less each time: levelling off.
                let k = 4 + rng.below(7);
                let (total, tau) = (uniform(rng, 0.03, 0.08), uniform(rng, 0.15, 0.3));
                let norm = 1.0 - (-1.0 / tau).exp();
                let e = evals(k, level, |u| total * (1.0 - (-u / tau).exp()) / norm);
                (
                    "eval follows (levelling off)",
                    Verdict::Converged,
                    v,
                    Some(e),
                )
            } else {
                let k = 4 + rng.below(5);
                let total = uniform(rng, 0.12, 0.25);
                let e = evals(k, level, |u| total * u);
                (
                    "eval follows (still falling)",
                    Verdict::Converging,
                    v,
                    Some(e),
                )
            }
        }
        _ => {
            let (tau, fall) = (uniform(rng, 0.8, 3.0), uniform(rng, 0.2, 0.4));
            let amplitude = fall / (1.0 - (-1.0 / tau).exp());
            let mut v = decay(n, 1.0 - amplitude, amplitude, tau);
            let sigma = uniform(rng, 0.0, 0.04);
            add_noise(rng, &mut v, sigma);
            let k = 8 + rng.below(9);
            let s0 = uniform(rng, 0.55, 0.7);
            let (level, amp, creep) = (
                uniform(rng, 0.9, 1.1),
                uniform(rng, 0.2, 0.5),
                uniform(rng, 0.005, 0.025),
            );
            let base = move |x: f64| level + amp * (-x / (s0 / 3.0)).exp();
            let e: Vec<(f64, f64)> = (1..=k)
                .map(|j| {
                    let x = j as f64 / k as f64;
                    let after = (x - s0).max(0.0) / (1.0 - s0);
                    (x, base(x.min(s0)) * (1.0 + creep * after))
                })
                .collect();
            ("eval stalls", Verdict::Converged, v, Some(e))
        }
    }
}

/// 40 curves of each issue-17 family.
fn issue17_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = Vec::new();
    for family in 0..3 {
        for i in 0..PER_VERDICT {
            let (name, expected, values, eval) = issue17_synthetic(family, rng);
            let scale = uniform(rng, 0.3, 8.0);
            let (train, eval) = place(rng, values, eval, scale);
            cases.push(Case {
                name: format!("synthetic {name} #{i}"),
                expected,
                train,
                eval,
                best_step: None,
            });
        }
    }
    cases
}

fn synthetic_cases() -> Vec<Case> {
    let mut rng = Rng::new(20261128);
    let mut cases = Vec::new();
    for verdict in Verdict::ALL {
        for i in 0..PER_VERDICT {
            let (train, eval) = synthetic(verdict, &mut rng);
            let best_step = eval.as_ref().and_then(|e| e.argmin());
            cases.push(Case {
                name: format!("synthetic {} #{i}", verdict.name()),
                expected: verdict,
                train,
                eval,
                best_step,
            });
        }
    }
    cases.extend(issue17_cases(&mut Rng::new(20261202)));
    cases
}

/// Real curves: every `*.jsonl` in tests/fixtures/curves/{tunelab,lf} listed in `labels.json`
/// (file → expected verdict, judged by looking at the plot; best_step where it overfits). A key
/// `file#train_only` reads the same run's train loss alone, as a run without eval shows it.
fn real_cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/curves");
    let labels: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("labels.json")).expect("labels.json"),
    )
    .expect("labels.json parses");
    let mut cases = Vec::new();
    for (key, label) in labels.as_object().expect("an object") {
        // `file#train_only`: the same run read as a user without a validation split sees it.
        let (file, train_only) = match key.strip_suffix("#train_only") {
            Some(file) => (file, true),
            None => (key.as_str(), false),
        };
        let path = root.join(file);
        let train = sources::from_trainer_log(&path, "loss").expect("a loss curve");
        let eval = if train_only {
            None
        } else {
            sources::from_trainer_log(&path, "eval_loss").ok()
        };
        let expected = Verdict::parse(label["verdict"].as_str().expect("verdict"))
            .unwrap_or_else(|| panic!("{file}: unknown verdict {label}"));
        cases.push(Case {
            name: format!("real {key}"),
            expected,
            train,
            eval,
            best_step: label["best_step"].as_u64().map(|s| s as usize),
        });
    }
    cases
}

#[test]
fn labelled_curves_get_their_verdict_at_least_95_percent_of_the_time() {
    let mut cases = synthetic_cases();
    cases.extend(real_cases());

    let mut confusion: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    // expected verdict → (cases, right)
    let mut per_verdict: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for case in &cases {
        let d = diagnose(&case.train, case.eval.as_ref());
        *confusion
            .entry((case.expected.name(), d.verdict.name()))
            .or_default() += 1;
        let best_ok = case.expected != Verdict::Overfitting
            || d.verdict != Verdict::Overfitting
            || d.best_step == case.best_step;
        let tally = per_verdict.entry(case.expected.name()).or_default();
        tally.0 += 1;
        if d.verdict == case.expected && best_ok {
            tally.1 += 1;
        } else {
            wrong.push(format!(
                "{}: expected {}, got {} (best_step {:?}, expected {:?}): {}",
                case.name,
                case.expected.name(),
                d.verdict.name(),
                d.best_step,
                case.best_step,
                d.evidence
            ));
        }
    }

    let names: Vec<&str> = Verdict::ALL.iter().map(|v| v.name()).collect();
    println!("confusion table (rows: expected, columns: diagnosed)");
    print!("{:>15}", "");
    for n in &names {
        print!("{:>8}", &n[..n.len().min(7)]);
    }
    println!("   right");
    for row in &names {
        print!("{row:>15}");
        for col in &names {
            print!("{:>8}", confusion.get(&(*row, *col)).copied().unwrap_or(0));
        }
        let (n, right) = per_verdict.get(row).copied().unwrap_or_default();
        println!("  {:>5.1}%", right as f64 * 100.0 / n.max(1) as f64);
    }
    for w in &wrong {
        println!("MISS {w}");
    }
    let correct = cases.len() - wrong.len();
    let share = correct as f64 / cases.len() as f64;
    println!("{correct}/{} correct ({:.1}%)", cases.len(), share * 100.0);
    assert!(share >= 0.95, "only {:.1}% correct", share * 100.0);
    let weak: Vec<String> = per_verdict
        .iter()
        .filter(|(_, (n, right))| (*right as f64) < 0.95 * *n as f64)
        .map(|(v, (n, right))| format!("{v}: {right}/{n}"))
        .collect();
    assert!(weak.is_empty(), "verdicts under 95%: {}", weak.join(", "));
}

#[test]
fn the_set_has_real_curves_of_several_verdicts() {
    let real = real_cases();
    let kinds: std::collections::BTreeSet<&str> = real.iter().map(|c| c.expected.name()).collect();
    assert!(real.len() >= 6, "the real set has {} curves", real.len());
    assert!(kinds.len() >= 4, "the real set covers only {kinds:?}");
}
