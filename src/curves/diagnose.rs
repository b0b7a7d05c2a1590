//! Reading a loss curve the way a practitioner does: is it converging, converged, not learning,
//! overfitting, underfitting, unstable or diverged — with the numbers that say so and the usual
//! remedy.
//!
//! The reading, in order (the first rule that fires decides):
//! 1. **diverged** — a NaN/inf loss, or the loss ends above where it started;
//! 2. **too_short** — fewer than [`MIN_POINTS`] finite training points;
//! 3. **unstable** — repeated spikes far above the local trend, a sustained jump of the trend
//!    above its running minimum, or fluctuation larger than both the level allows and the
//!    decrease achieved;
//! 4. **overfitting** (with an eval curve) — the eval loss reached its minimum and then rose
//!    meaningfully (above [`OVERFIT_RISE`] and above its own noise) over several evaluations while
//!    the training loss did not rise; or it stalled at its minimum for [`STALL_EVALS`] evaluations
//!    while the training loss fell [`STALL_TRAIN_FALL`] more; `best_step` is the eval minimum;
//! 5. **not_converging** — no clear decrease: under [`CLEAR_DROP`], or smaller than the noise;
//! 6. **converging** — the last quarter still falls clearly (steep enough relative to the level and
//!    to the whole decrease, and statistically significant) and, with an eval curve, the eval loss
//!    still improves ([`EVAL_PROGRESS`]); or the last three evaluations each fall clearly;
//! 7. **converged** — fell substantially ([`SUBSTANTIAL_DROP`]) and is now flat;
//! 8. **underfitting** — flat, after only a small decrease: stuck at a high level.
//!
//! Levels are medians of the first and last tenth of the points; the trend is a rolling median
//! (spikes do not move it, LLaMA-Factory's per-epoch drops stay sharp steps, not noise); noise is
//! the robust σ of the points around the trend, relative to it. The thresholds below are the
//! named constants; each says why it has its value.

use super::stats::{median, robust_sigma, rolling_median, slope_with_t};
use super::Curve;

/// Fewer points than this cannot show a trend against noise (a level at each end needs ≥ 3).
pub const MIN_POINTS: usize = 6;
/// Share of the points at each end whose median is the start/end level (robust to a noisy point).
pub const EDGE_FRACTION: f64 = 0.10;
/// Share of the points at the start whose median may stand for the start level instead, when it is
/// higher: catches a drop within the first few steps, which the first tenth's median would hide.
pub const EARLY_FRACTION: f64 = 0.02;
/// Share of the points, at the end, tested for "still falling" (the last quarter of training).
pub const TAIL_FRACTION: f64 = 0.25;
/// Ending above the start level by more than this is divergence: training made the model worse.
pub const DIVERGED_RISE: f64 = 0.10;
/// A spike is a point this far above its local trend (×1.5)...
pub const SPIKE_REL: f64 = 0.5;
/// ...and this many noise σ above it (so a generally noisy curve has no "spikes").
pub const SPIKE_SIGMAS: f64 = 5.0;
/// Two spikes are a pattern (one is a bad batch).
pub const MIN_SPIKES: usize = 2;
/// The trend rising this far above its running minimum is a sudden jump (loss should not rise
/// during training; 30% is well beyond what batch-to-batch noise moves a rolling median).
pub const JUMP_REL: f64 = 0.30;
/// Relative fluctuation above this (σ/level) is oscillation, when it also exceeds the decrease:
/// healthy LoRA runs logged every few steps fluctuate well under 15%.
pub const OSCILLATION_REL: f64 = 0.30;
/// Eval loss this far above its minimum is a meaningful rise (under it is noise or a plateau).
pub const OVERFIT_RISE: f64 = 0.05;
/// At least this many evaluations after the minimum ("several evaluations", not one bad point).
pub const MIN_EVALS_AFTER_MIN: usize = 2;
/// Eval loss stalled at its minimum for this many later evaluations...
pub const STALL_EVALS: usize = 3;
/// ...while the train loss fell this much more since the minimum is the onset of overfitting:
/// the model keeps fitting the training set and no longer generalises better.
pub const STALL_TRAIN_FALL: f64 = 0.20;
/// The eval loss "still improves" when its lowest point in the last third of the evaluations is
/// at least 1% below its lowest before; otherwise more training cannot help it.
pub const EVAL_PROGRESS: f64 = 0.01;
/// An eval curve needs this many points to have a minimum with points after it.
pub const MIN_EVAL_POINTS: usize = 4;
/// The rise must also exceed this many eval-noise σ.
pub const OVERFIT_NOISE_SIGMAS: f64 = 2.0;
/// Train loss may drift up this much after the eval minimum and still count as "not rising".
pub const TRAIN_RISE_TOLERANCE: f64 = 0.02;
/// A decrease under 5% of the start level is no clear decrease.
pub const CLEAR_DROP: f64 = 0.05;
/// The last quarter still falling by ≥ 3% of the level...
pub const STILL_FALLING_REL: f64 = 0.03;
/// ...and by ≥ 10% of the whole decrease (its slope ≥ 40% of the run's average slope)...
pub const STILL_FALLING_SHARE: f64 = 0.10;
/// ...with a least-squares slope this many standard errors below zero (not a noise artefact;
/// with the two conditions above a flat noisy tail passes all three well under 1% of the time).
pub const STILL_FALLING_T: f64 = 2.0;
/// A change of level (start → end) counts only when it exceeds this many standard errors of the
/// difference of two edge medians (each median's error is 1.25σ/√points).
pub const LEVEL_CHANGE_SIGMAS: f64 = 3.0;
/// A jump of the trend counts only when it exceeds this many standard errors of a rolling median
/// (the range of many noisy medians reaches ±2.5 SE by chance).
pub const JUMP_SIGMAS: f64 = 6.0;
/// A decrease of ≥ 25% of the start level is substantial: LoRA SFT typically cuts the loss by a
/// third to a half; a smaller drop that has stopped is a plateau at a high level.
pub const SUBSTANTIAL_DROP: f64 = 0.25;
/// A flat loss under this (nats per token) is converged whatever the start: near-perfect fit.
pub const LOW_LOSS: f64 = 0.1;

/// What the curve says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Converged,
    Converging,
    NotConverging,
    Overfitting,
    Underfitting,
    Unstable,
    Diverged,
    TooShort,
}

impl Verdict {
    pub const ALL: [Verdict; 8] = [
        Verdict::Converged,
        Verdict::Converging,
        Verdict::NotConverging,
        Verdict::Overfitting,
        Verdict::Underfitting,
        Verdict::Unstable,
        Verdict::Diverged,
        Verdict::TooShort,
    ];

    /// The script name (`not_converging`, …).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Converged => "converged",
            Verdict::Converging => "converging",
            Verdict::NotConverging => "not_converging",
            Verdict::Overfitting => "overfitting",
            Verdict::Underfitting => "underfitting",
            Verdict::Unstable => "unstable",
            Verdict::Diverged => "diverged",
            Verdict::TooShort => "too_short",
        }
    }

    pub fn parse(name: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The standard remedy.
    fn advice(self) -> &'static str {
        match self {
            Verdict::Converged => {
                "Training has done what it can at these settings: keep this adapter. More epochs \
                 would mostly memorise; for a lower loss add data or raise the LoRA rank."
            }
            Verdict::Converging => {
                "Still improving: train longer (more epochs or max_steps); if the descent is slow, \
                 raise the learning rate (e.g. ×2)."
            }
            Verdict::NotConverging => {
                "No learning signal: check that the template and labels fit the data (are the \
                 answers masked out?), raise the learning rate (LoRA usually wants 1e-4 to 5e-4), \
                 and make sure LoRA targets the attention/MLP layers."
            }
            Verdict::Overfitting => {
                "Use the checkpoint of best_step (early_stopping_patience keeps it; LLaMA-Factory: \
                 early_stopping_steps), and memorise less: fewer epochs, more data, lora dropout 0.05-0.1, or a lower rank or \
                 learning rate."
            }
            Verdict::Underfitting => {
                "The model cannot fit the data at these settings: raise the LoRA rank (and alpha) \
                 or target all linear layers, raise the learning rate, or train longer."
            }
            Verdict::Unstable => {
                "The learning rate is likely too high: lower it 3-10×, add warmup (warmup_ratio \
                 0.1), keep gradient clipping (max_grad_norm 1.0), or raise the batch size."
            }
            Verdict::Diverged => {
                "Lower the learning rate 10×, keep max_grad_norm 1.0 and add warmup; check the data \
                 for broken examples; prefer bf16 to fp16."
            }
            Verdict::TooShort => {
                "Train longer or log more often (logging_steps) before judging the curve."
            }
        }
    }
}

/// The reading of a curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnosis {
    pub verdict: Verdict,
    /// 0.5 (on a threshold) to 0.95 (far from every threshold); 1.0 for NaN and too few points.
    pub confidence: f64,
    /// One line for progress output ("overfitting since step 120: eval loss +12%").
    pub headline: String,
    /// The numbers behind the verdict.
    pub evidence: String,
    /// What to do.
    pub advice: String,
    /// The step of the lowest eval loss (the checkpoint to keep), when there is an eval curve.
    pub best_step: Option<usize>,
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (confidence {:.2}): {}\n  advice: {}",
            self.verdict.name(),
            self.confidence,
            self.evidence,
            self.advice
        )
    }
}

/// Confidence from how far `value` is past `threshold` (relative): 0.5 on it, 0.95 at twice it.
fn margin(value: f64, threshold: f64) -> f64 {
    let d = ((value - threshold).abs() / threshold.abs().max(1e-12)).min(1.0);
    0.5 + 0.45 * d
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p.abs() >= 10.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

fn num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.4}")
    }
}

/// The finite points of a curve as (steps, values), and the first non-finite step.
fn finite_points(c: &Curve) -> (Vec<f64>, Vec<f64>, Option<(usize, usize)>) {
    let mut steps = Vec::new();
    let mut values = Vec::new();
    let mut first_bad = None;
    let mut bad = 0;
    for (&s, &v) in c.steps.iter().zip(&c.values) {
        if v.is_finite() {
            steps.push(s as f64);
            values.push(v);
        } else {
            bad += 1;
            first_bad.get_or_insert(s);
        }
    }
    (steps, values, first_bad.map(|s| (s, bad)))
}

/// What the training curve alone shows.
struct TrainReading {
    steps: Vec<f64>,
    values: Vec<f64>,
    trend: Vec<f64>,
    start: f64,
    end: f64,
    /// Points in the end median and in the start median; half-width of the rolling median.
    edge: usize,
    start_points: usize,
    /// The lowest reading of the start: the first point or either early median.
    start_low: f64,
    half: usize,
    /// σ of the noise relative to the trend, over the run and over its second half (the
    /// smaller of the two).
    noise_end_rel: f64,
    /// σ of value/trend − 1.
    noise_rel: f64,
    /// (step, value, trend) of each spike.
    spikes: Vec<(f64, f64, f64)>,
    /// Largest rise of the trend above its running minimum: (relative rise, step).
    jump: (f64, f64),
}

impl TrainReading {
    fn new(steps: Vec<f64>, values: Vec<f64>) -> TrainReading {
        let n = values.len();
        let edge = ((n as f64 * EDGE_FRACTION).ceil() as usize).max(3).min(n);
        // The start is the higher of the medians of the first tenth and of the first 2% (at
        // least 3 points): a loss that drops within the first few steps (common in LoRA) still
        // counts its drop. `start_points` is how many points the chosen median saw.
        let early = ((n as f64 * EARLY_FRACTION).ceil() as usize).max(3).min(n);
        let (head, first) = (median(&values[..edge]), median(&values[..early]));
        let start_low = values[0].min(head).min(first);
        let (start, start_points) = if first > head {
            (first, early)
        } else {
            (head, edge)
        };
        let end = median(&values[n - edge..]);
        let half = (n / 20).max(2);
        let trend = rolling_median(&values, half);
        let rel: Vec<f64> = values
            .iter()
            .zip(&trend)
            .map(|(v, t)| v / t.abs().max(1e-12) - 1.0)
            .collect();
        // Noise from second differences (each carries σ·√6 of independent noise and cancels a
        // locally straight trend), relative to the trend: unlike residuals from the rolling
        // median, which follows the noise when the window is short, it holds for short runs.
        let second: Vec<f64> = (1..n.saturating_sub(1))
            .map(|i| (values[i + 1] - 2.0 * values[i] + values[i - 1]) / trend[i].abs().max(1e-12))
            .collect();
        let sigma = |d: &[f64]| {
            if d.is_empty() {
                0.0
            } else {
                robust_sigma(d) / 6f64.sqrt()
            }
        };
        let noise_rel = sigma(&second);
        // The second half alone: in a short run a blow-up's own bends inflate the whole-run
        // estimate; the settled end is what the end level is measured against.
        let noise_end_rel = noise_rel.min(sigma(&second[second.len() / 2..]));
        let spikes = rel
            .iter()
            .enumerate()
            .filter(|(_, &r)| r > SPIKE_REL && r > SPIKE_SIGMAS * noise_rel)
            .map(|(i, _)| (steps[i], values[i], trend[i]))
            .collect();
        // Jumps are read where the rolling window is whole (at the ends it shrinks to one point).
        let mut running_min = f64::INFINITY;
        let mut jump = (0.0, steps[0]);
        for (i, &t) in trend.iter().enumerate().take(n - half.min(n)).skip(half) {
            running_min = running_min.min(t);
            let rise = t / running_min.max(1e-12) - 1.0;
            if rise > jump.0 {
                jump = (rise, steps[i]);
            }
        }
        TrainReading {
            steps,
            values,
            trend,
            start,
            end,
            edge,
            start_points,
            start_low,
            half,
            noise_rel,
            noise_end_rel,
            spikes,
            jump,
        }
    }

    /// Standard error of the difference of the start and end levels (two medians).
    fn level_change_se(&self) -> f64 {
        1.25 * self.noise_abs() * (1.0 / self.edge as f64 + 1.0 / self.start_points as f64).sqrt()
    }

    /// Relative standard error of one rolling-median trend value.
    fn trend_se_rel(&self) -> f64 {
        1.25 * self.noise_rel / ((2 * self.half + 1) as f64).sqrt()
    }

    fn drop_abs(&self) -> f64 {
        self.start - self.end
    }

    fn drop_rel(&self) -> f64 {
        self.drop_abs() / self.start.abs().max(1e-12)
    }

    fn noise_abs(&self) -> f64 {
        self.noise_rel * self.end.abs()
    }

    /// The trend value at the last point at or before `step` (the first point when none).
    fn trend_at(&self, step: f64) -> f64 {
        let i = self.steps.iter().rposition(|&s| s <= step).unwrap_or(0);
        self.trend[i]
    }

    /// The last quarter's fall: (drop relative to the end level, share of the whole decrease,
    /// t statistic of the slope).
    fn tail(&self) -> (f64, f64, f64) {
        let n = self.values.len();
        let k = ((n as f64 * TAIL_FRACTION).ceil() as usize).max(4).min(n);
        let (x, y) = (&self.steps[n - k..], &self.values[n - k..]);
        let (slope, t) = slope_with_t(x, y);
        let fall = -slope * (x[k - 1] - x[0]);
        let share = if self.drop_abs() > 0.0 {
            fall / self.drop_abs()
        } else {
            0.0
        };
        (fall / self.end.abs().max(1e-12), share, t)
    }

    fn summary(&self) -> String {
        let change = if self.drop_abs() >= 0.0 {
            format!("fell {}", pct(self.drop_rel()))
        } else {
            format!("rose {}", pct(-self.drop_rel()))
        };
        format!(
            "train loss {change} (from {} to {}, medians of the first and last tenth of {} \
             points), fluctuating ±{} around its trend",
            num(self.start),
            num(self.end),
            self.values.len(),
            pct(self.noise_rel)
        )
    }
}

/// What the eval curve shows about its minimum.
struct EvalReading {
    n: usize,
    best_step: f64,
    best: f64,
    after: usize,
    /// Median of the last (up to 3) points after the minimum, relative to the minimum, minus 1.
    rise: f64,
    noise_rel: f64,
    last: f64,
    /// Fall over the last three evaluations relative to the last, and its share of the whole
    /// eval decrease; `None` unless each of them is lower than the one before.
    tail_fall: Option<(f64, f64)>,
    /// How much lower the last third's lowest point is than the lowest before it (relative).
    progress: f64,
}

impl EvalReading {
    fn new(steps: &[f64], values: &[f64]) -> Option<EvalReading> {
        if values.len() < MIN_EVAL_POINTS {
            return None;
        }
        let (i, &best) = values
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))?;
        let after = &values[i + 1..];
        let tail = &after[after.len().saturating_sub(3)..];
        let rise = if tail.is_empty() {
            0.0
        } else {
            median(tail) / best.abs().max(1e-12) - 1.0
        };
        // Second differences cancel a locally straight trend; for independent noise of σ each
        // has σ·√6. The median-based σ ignores the few bends of the curve itself.
        let second: Vec<f64> = values
            .windows(3)
            .map(|w| (w[2] - 2.0 * w[1] + w[0]) / w[1].abs().max(1e-12))
            .collect();
        let noise_rel = if second.is_empty() {
            0.0
        } else {
            robust_sigma(&second) / 6f64.sqrt()
        };
        let k = values.len();
        let last3 = &values[k - 3..];
        let monotone = last3.windows(2).all(|w| w[1] < w[0]);
        let whole = values[0] - values[k - 1];
        let tail_fall = (monotone && whole > 0.0).then(|| {
            let fall = last3[0] - last3[2];
            (fall / last3[2].abs().max(1e-12), fall / whole)
        });
        let third = k.div_ceil(3).max(2).min(k - 1);
        let low = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let before = low(&values[..k - third]);
        let progress = (before - low(&values[k - third..])) / before.abs().max(1e-12);
        Some(EvalReading {
            progress,
            tail_fall,
            n: values.len(),
            best_step: steps[i],
            best,
            after: after.len(),
            rise,
            noise_rel,
            last: *values.last()?,
        })
    }

    /// Still clearly falling at the end: the last three evaluations each lower, by the same
    /// margins as the train tail test (eval loss is an average over the whole validation set, so
    /// three falling points in a row are rarely noise).
    fn still_falling(&self) -> bool {
        self.tail_fall.is_some_and(|(rel, share)| {
            rel >= STILL_FALLING_REL
                && share >= STILL_FALLING_SHARE
                && rel >= OVERFIT_NOISE_SIGMAS * self.noise_rel
        })
    }

    /// Whether the eval loss made real progress recently (see [`EVAL_PROGRESS`]).
    fn improving(&self) -> bool {
        self.progress >= EVAL_PROGRESS
    }

    fn overfits(&self) -> bool {
        self.after >= MIN_EVALS_AFTER_MIN
            && self.rise >= OVERFIT_RISE
            && self.rise >= OVERFIT_NOISE_SIGMAS * self.noise_rel
    }
}

/// Reads `train` (and `eval` when given).
pub fn diagnose(train: &Curve, eval: Option<&Curve>) -> Diagnosis {
    let (steps, values, bad) = finite_points(train);
    let eval_points = eval.map(finite_points);
    let best_step = eval.and_then(|e| e.argmin());
    let make = |verdict: Verdict, confidence: f64, headline: String, evidence: String| Diagnosis {
        verdict,
        confidence: (confidence * 100.0).round() / 100.0,
        headline,
        evidence,
        advice: verdict.advice().to_string(),
        best_step,
    };

    let eval_bad = eval_points.as_ref().and_then(|p| p.2);
    if let Some((step, count)) = bad.or(eval_bad) {
        let which = if bad.is_some() { "train" } else { "eval" };
        return make(
            Verdict::Diverged,
            1.0,
            format!("diverged at step {step}: {which} loss is NaN/inf"),
            format!(
                "{which} loss is not a finite number from step {step} ({count} such point(s)): \
                 the weights blew up"
            ),
        );
    }
    if values.len() < MIN_POINTS {
        return make(
            Verdict::TooShort,
            1.0,
            format!("too short to judge ({} points)", values.len()),
            format!(
                "only {} training loss point(s); at least {MIN_POINTS} are needed to tell a trend \
                 from noise",
                values.len()
            ),
        );
    }

    let t = TrainReading::new(steps, values);
    // Divergence is judged against the lowest reading of the start (the first point or the
    // early medians): in a blow-up the early medians already contain the explosion.
    let rise_abs = t.end - t.start_low;
    let rise = rise_abs / t.start_low.abs().max(1e-12);
    let rise_se = 1.25 * t.noise_end_rel * t.end.abs() * (1.0 + 1.0 / t.edge as f64).sqrt();
    if rise > DIVERGED_RISE && rise_abs > LEVEL_CHANGE_SIGMAS * rise_se {
        return make(
            Verdict::Diverged,
            margin(rise, DIVERGED_RISE),
            format!("diverged: train loss {} above its start", pct(rise)),
            format!(
                "train loss ended at {} (median of the last tenth), {} above its start {}: \
                 training made the model worse; {}",
                num(t.end),
                pct(rise),
                num(t.start_low),
                t.summary()
            ),
        );
    }

    if let Some(d) = unstable(&t) {
        return make(Verdict::Unstable, d.0, d.1, d.2);
    }

    if let Some((esteps, evalues, _)) = &eval_points {
        if let Some(e) = EvalReading::new(esteps, evalues) {
            let train_at_best = t.trend_at(e.best_step);
            let train_change = t.end / train_at_best.abs().max(1e-12) - 1.0;
            if e.overfits() && train_change <= TRAIN_RISE_TOLERANCE {
                let mut d = make(
                    Verdict::Overfitting,
                    margin(e.rise, OVERFIT_RISE),
                    format!(
                        "overfitting since step {}: eval loss +{} from its minimum {}",
                        e.best_step,
                        pct(e.rise),
                        num(e.best)
                    ),
                    format!(
                        "eval loss rose {} from its minimum {} at step {} over the next {} \
                         evaluation(s) (last {}) while train loss {} {} (to {})",
                        pct(e.rise),
                        num(e.best),
                        e.best_step,
                        e.after,
                        num(e.last),
                        if train_change <= 0.0 {
                            "fell"
                        } else {
                            "stayed flat,"
                        },
                        pct(train_change.abs()),
                        num(t.end)
                    ),
                );
                d.best_step = Some(e.best_step as usize);
                return d;
            }
            let train_fall = -train_change;
            if e.after >= STALL_EVALS && train_fall >= STALL_TRAIN_FALL {
                let mut d = make(
                    Verdict::Overfitting,
                    margin(train_fall, STALL_TRAIN_FALL)
                        .min(margin(e.after as f64, STALL_EVALS as f64 - 1.0)),
                    format!(
                        "overfitting since step {}: eval loss stalled while train loss fell {}",
                        e.best_step,
                        pct(train_fall)
                    ),
                    format!(
                        "eval loss has not improved on its minimum {} at step {} for {} \
                         evaluations (last {}, +{}) while train loss fell {} more (to {}): the \
                         adapter is memorising the training set",
                        num(e.best),
                        e.best_step,
                        e.after,
                        num(e.last),
                        pct(e.last / e.best.abs().max(1e-12) - 1.0),
                        pct(train_fall),
                        num(t.end)
                    ),
                );
                d.best_step = Some(e.best_step as usize);
                return d;
            }
        }
    }

    let eval_reading = eval_points
        .as_ref()
        .and_then(|(s, v, _)| EvalReading::new(s, v));
    let eval_note = eval_reading
        .as_ref()
        .zip(eval_points.as_ref().map(|p| p.1[0]))
        .map(|(e, first)| {
            format!(
                "; eval loss {} → {} over {} evaluations (lowest {} at step {})",
                num(first),
                num(e.last),
                e.n,
                num(e.best),
                e.best_step
            )
        })
        .unwrap_or_default();

    let (drop_rel, drop_abs) = (t.drop_rel(), t.drop_abs());
    if drop_rel < CLEAR_DROP
        || drop_abs < t.noise_abs()
        || drop_abs < LEVEL_CHANGE_SIGMAS * t.level_change_se()
    {
        let confidence = if drop_rel < CLEAR_DROP {
            margin(drop_rel.max(0.0), CLEAR_DROP)
        } else {
            margin(drop_abs, t.noise_abs())
        };
        return make(
            Verdict::NotConverging,
            confidence,
            format!("not converging: train loss {}", pct(-drop_rel)),
            format!(
                "{}: no decrease clearly larger than the noise{eval_note}",
                t.summary()
            ),
        );
    }

    let (tail_rel, share, tstat) = t.tail();
    let tail_text = if tail_rel >= 0.0 {
        format!(
            "over the last quarter it fell a further {} ({} of the whole decrease, slope t = {:.1})",
            pct(tail_rel),
            pct(share),
            tstat
        )
    } else {
        format!(
            "over the last quarter it rose {} (slope t = {:.1})",
            pct(-tail_rel),
            tstat
        )
    };
    // With an eval curve, "more training helps" also needs the eval loss to be improving.
    let eval_allows = eval_reading.as_ref().is_none_or(|e| e.improving());
    if eval_allows
        && tail_rel >= STILL_FALLING_REL
        && share >= STILL_FALLING_SHARE
        && tstat <= -STILL_FALLING_T
    {
        let confidence =
            margin(tail_rel, STILL_FALLING_REL).min(margin(share, STILL_FALLING_SHARE));
        return make(
            Verdict::Converging,
            confidence,
            format!(
                "converging: still falling ({} in the last quarter)",
                pct(tail_rel)
            ),
            format!("{}; {tail_text}{eval_note}", t.summary()),
        );
    }
    if let Some((rel, eval_share)) = eval_reading
        .as_ref()
        .filter(|e| e.still_falling())
        .and_then(|e| e.tail_fall)
    {
        return make(
            Verdict::Converging,
            margin(rel, STILL_FALLING_REL).min(margin(eval_share, STILL_FALLING_SHARE)),
            format!(
                "converging: eval loss still falling ({} over the last 3 evaluations)",
                pct(rel)
            ),
            format!(
                "{}; eval loss fell {} more over its last 3 evaluations, each lower than the one \
                 before ({} of its whole decrease){eval_note}",
                t.summary(),
                pct(rel),
                pct(eval_share)
            ),
        );
    }
    let flatness = if tstat > -STILL_FALLING_T {
        0.95
    } else {
        margin(tail_rel, STILL_FALLING_REL).min(margin(share, STILL_FALLING_SHARE))
    };
    if drop_rel >= SUBSTANTIAL_DROP || t.end <= LOW_LOSS {
        let confidence = if t.end <= LOW_LOSS {
            flatness
        } else {
            flatness.min(margin(drop_rel, SUBSTANTIAL_DROP))
        };
        return make(
            Verdict::Converged,
            confidence,
            format!("converged at {}", num(t.end)),
            format!("{}; {tail_text}: flat{eval_note}", t.summary()),
        );
    }
    make(
        Verdict::Underfitting,
        flatness.min(margin(drop_rel, SUBSTANTIAL_DROP)),
        format!(
            "underfitting: plateau at {} after a {} decrease",
            num(t.end),
            pct(drop_rel)
        ),
        format!(
            "{}, under the {} a run usually achieves; {tail_text}: a plateau at a high \
             level{eval_note}",
            t.summary(),
            pct(SUBSTANTIAL_DROP)
        ),
    )
}

/// (confidence, headline, evidence) when the training curve is unstable.
fn unstable(t: &TrainReading) -> Option<(f64, String, String)> {
    if t.spikes.len() >= MIN_SPIKES {
        let (step, value, trend) = t
            .spikes
            .iter()
            .copied()
            .max_by(|a, b| (a.1 / a.2).total_cmp(&(b.1 / b.2)))?;
        let worst = value / trend - 1.0;
        return Some((
            margin(t.spikes.len() as f64, 1.0).min(margin(worst, SPIKE_REL)),
            format!("unstable: {} loss spikes", t.spikes.len()),
            format!(
                "{} spikes above the trend (each > {} over it and > {SPIKE_SIGMAS}σ of the noise), \
                 the largest +{} at step {step} ({} vs trend {}); {}",
                t.spikes.len(),
                pct(SPIKE_REL),
                pct(worst),
                num(value),
                num(trend),
                t.summary()
            ),
        ));
    }
    let (jump, step) = t.jump;
    if jump > JUMP_REL && jump > JUMP_SIGMAS * t.trend_se_rel() {
        return Some((
            margin(jump, JUMP_REL),
            format!("unstable: loss jumped +{} at step {step}", pct(jump)),
            format!(
                "the loss trend jumped {} above its lowest point so far at step {step}; {}",
                pct(jump),
                t.summary()
            ),
        ));
    }
    let drop_hidden =
        t.noise_abs() > t.drop_abs() || t.drop_abs() < LEVEL_CHANGE_SIGMAS * t.level_change_se();
    if t.noise_rel > OSCILLATION_REL && drop_hidden {
        return Some((
            margin(t.noise_rel, OSCILLATION_REL),
            format!("unstable: loss oscillates ±{}", pct(t.noise_rel)),
            format!(
                "the loss oscillates ±{} of its level, hiding its decrease ({}); {}",
                pct(t.noise_rel),
                num(t.drop_abs()),
                t.summary()
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(name: &str, f: impl Fn(f64) -> f64, n: usize, every: usize) -> Curve {
        let points: Vec<(usize, f64)> = (1..=n).map(|i| (i * every, f(i as f64))).collect();
        Curve::new(name, &points)
    }

    /// Deterministic pseudo-noise in [-1, 1].
    fn wobble(i: f64) -> f64 {
        ((i * 12.9898).sin() * 43758.5453).fract() * 2.0 - 1.0
    }

    #[test]
    fn clean_shapes_get_their_verdicts() {
        let converged = curve("loss", |i| 1.0 + 2.0 * (-i / 15.0).exp(), 200, 1);
        assert_eq!(diagnose(&converged, None).verdict, Verdict::Converged);
        let converging = curve("loss", |i| 1.0 + 2.0 * (-i / 150.0).exp(), 200, 1);
        assert_eq!(diagnose(&converging, None).verdict, Verdict::Converging);
        let flat = curve("loss", |i| 3.0 + 0.05 * wobble(i), 100, 1);
        assert_eq!(diagnose(&flat, None).verdict, Verdict::NotConverging);
        let plateau = curve("loss", |i| 2.7 + 0.3 * (-i / 10.0).exp(), 100, 1);
        assert_eq!(diagnose(&plateau, None).verdict, Verdict::Underfitting);
        let short = curve("loss", |i| 3.0 - i, 4, 1);
        assert_eq!(diagnose(&short, None).verdict, Verdict::TooShort);
    }

    #[test]
    fn nan_and_blow_up_are_divergence() {
        let mut c = curve("loss", |i| 3.0 - 0.01 * i, 50, 10);
        c.values[30] = f64::NAN;
        let d = diagnose(&c, None);
        assert_eq!(d.verdict, Verdict::Diverged);
        assert!(d.evidence.contains("step 310"), "{}", d.evidence);
        let up = curve("loss", |i| 2.0 + 0.1 * i, 50, 1);
        assert_eq!(diagnose(&up, None).verdict, Verdict::Diverged);
    }

    #[test]
    fn spikes_are_instability_but_one_bad_batch_is_not() {
        let mut c = curve("loss", |i| 1.0 + 2.0 * (-i / 20.0).exp(), 150, 1);
        c.values[60] *= 3.0;
        assert_eq!(diagnose(&c, None).verdict, Verdict::Converged);
        c.values[100] *= 2.5;
        let d = diagnose(&c, None);
        assert_eq!(d.verdict, Verdict::Unstable, "{d}");
        assert!(d.evidence.contains("2 spikes"), "{}", d.evidence);
    }

    #[test]
    fn eval_rising_after_its_minimum_is_overfitting_with_the_best_step() {
        let train = curve("loss", |i| 0.2 + 2.0 * (-i / 40.0).exp(), 300, 1);
        let eval = curve(
            "eval_loss",
            |i| {
                let s = i * 25.0;
                1.0 + 1.5 * (-s / 40.0).exp() + 0.000_01 * (s - 120.0).max(0.0).powi(2)
            },
            12,
            25,
        );
        let d = diagnose(&train, Some(&eval));
        assert_eq!(d.verdict, Verdict::Overfitting, "{d}");
        assert_eq!(d.best_step, eval.argmin());
        assert!(d.evidence.contains("eval loss rose"), "{}", d.evidence);
    }

    #[test]
    fn verdict_names_round_trip() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::parse(v.name()), Some(v));
        }
    }
}
