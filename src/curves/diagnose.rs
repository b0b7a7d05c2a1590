//! Reading a loss curve the way a practitioner does: is it converging, converged, not learning,
//! overfitting, underfitting, unstable or diverged — with the numbers that say so and the usual
//! remedy.
//!
//! The reading, in order (the first rule that fires decides):
//! 1. **diverged** — a NaN/inf loss, or the loss ends above where it started;
//! 2. **too_short** — fewer than [`MIN_POINTS`] finite training points;
//! 3. **unstable** — repeated spikes far above the local trend, a sustained jump of the trend
//!    above its running minimum, fluctuation larger than both the level allows and the decrease
//!    achieved, or scatter wider than [`WILD_SCATTER_REL`] through the run even around a falling
//!    trend ("fluctuating wildly": learning rate too high or batch too small). Scatter alone does
//!    not count when an eval curve keeps improving;
//! 4. **overfitting** (with an eval curve) — the eval loss reached its minimum and then rose
//!    meaningfully (above [`OVERFIT_RISE`] and above its own noise) over several evaluations while
//!    the training loss did not rise; or it stalled at its minimum for [`STALL_EVALS`] evaluations
//!    while the training loss fell [`STALL_TRAIN_FALL`] more; `best_step` is the eval minimum;
//! 5. **the eval curve decides** when it falls at every evaluation ([`EVAL_CLEAR_FALL`] in all)
//!    while the train curve shows no clear or only a small decrease: per-batch losses of varied
//!    examples are noisy, the eval loss is not — converging while its last three evaluations
//!    still fall clearly, converged when it levels off;
//! 6. **not_converging** — no clear decrease: under [`CLEAR_DROP`], or smaller than the noise;
//! 7. **converged** when the train loss still falls but the eval loss has not improved over the
//!    last quarter of its evaluations (more steps would memorise; `best_step` is its minimum);
//! 8. **converging** — the last quarter still falls clearly (steep enough relative to the level and
//!    to the whole decrease, and statistically significant) and, with an eval curve, the eval loss
//!    still improves ([`EVAL_PROGRESS`]); or the last three evaluations each fall clearly;
//! 9. **converged** — fell substantially ([`SUBSTANTIAL_DROP`]) and is now flat;
//! 10. **underfitting** — flat, after only a small decrease: stuck at a high level.
//!
//! Whenever the eval loss has not improved over the last fifth of its evaluations, the advice
//! says so (short of overfitting, instability and divergence, whose advice covers it).
//!
//! Levels are medians of the first and last tenth of the points; the trend is a rolling median
//! (spikes do not move it, LLaMA-Factory's per-epoch drops stay sharp steps, not noise); noise is
//! the robust σ of the points around the trend, relative to it. The thresholds below are the
//! named constants; each says why it has its value.

use super::format::{num, pct};
use super::reading::{finite_points, EvalReading, TrainReading};
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
/// Scatter this wide (σ of the points around the trend, relative to it) over the whole run and
/// over its second half is "fluctuating wildly", unstable even around a clearly falling trend: the
/// book's reading of such a curve is a learning rate too high or a batch too small. A quarter of
/// the level, less the σ estimate's own error on a 30-point curve; healthy LoRA runs scatter
/// under 12%.
pub const WILD_SCATTER_REL: f64 = 0.20;
/// The eval loss lower at every evaluation and by this much in all (relative) is learning, however
/// noisy the per-batch train loss: an eval loss averages the whole validation set, and four
/// falling points in a row happen by chance 1 time in 24.
pub const EVAL_CLEAR_FALL: f64 = 0.02;
/// Eval loss this far above its minimum is a meaningful rise (under it is noise or a plateau).
pub const OVERFIT_RISE: f64 = 0.05;
/// At least this many evaluations after the minimum ("several evaluations", not one bad point).
pub const MIN_EVALS_AFTER_MIN: usize = 2;
/// The eval loss has stalled when this share of its evaluations (and at least
/// [`MIN_EVALS_AFTER_MIN`]) came after its minimum: more training stopped helping it.
pub const STALL_FRACTION: f64 = 0.2;
/// The most a stall of the eval loss can be trusted (a few flat evaluations are a judgement).
pub const STALL_CONFIDENCE: f64 = 0.8;
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
                "Training has done what it can at these settings: keep this result. More epochs \
                 would mostly memorise; for a lower loss add data, or train more: a higher LoRA \
                 rank, or more of the weights (finetuning_type freeze or full)."
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

/// Reads `train` (and `eval` when given). When the eval loss has stalled, the advice says so
/// whatever the train loss shows (short of overfitting, instability or divergence, whose advice
/// covers it).
pub fn diagnose(train: &Curve, eval: Option<&Curve>) -> Diagnosis {
    let mut d = read(train, eval);
    let stalled_since = eval
        .map(finite_points)
        .and_then(|(s, v, _)| EvalReading::new(&s, &v))
        .and_then(|e| e.stalled_since);
    if let Some(step) = stalled_since {
        match d.verdict {
            Verdict::Converged => d.advice = stall_advice(step),
            Verdict::Converging | Verdict::Underfitting | Verdict::NotConverging => {
                d.advice = format!(
                    "The eval loss has not improved since step {step}. {}",
                    d.advice
                )
            }
            _ => {}
        }
    }
    d
}

/// The verdict with its standard advice.
fn read(train: &Curve, eval: Option<&Curve>) -> Diagnosis {
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

    let eval_reading = eval_points
        .as_ref()
        .and_then(|(s, v, _)| EvalReading::new(s, v));
    // Scatter of the per-batch train loss is judged against the eval curve when there is one: an
    // eval loss that keeps improving shows the run learns, whatever the batches do.
    let eval_improves = eval_reading.as_ref().is_some_and(|e| e.keeps_improving());
    if let Some(u) = unstable(&t, eval_improves) {
        let mut d = make(Verdict::Unstable, u.confidence, u.headline, u.evidence);
        if let Some(advice) = u.advice {
            d.advice = advice.to_string();
        }
        return d;
    }

    {
        if let Some(e) = &eval_reading {
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
                         model is memorising the training set",
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

    // The eval curve keeps improving where the train curve shows no clear decrease or a plateau:
    // the verdict follows the eval loss (the train loss of varied batches is noisy).
    let follow_eval = |e: &EvalReading| -> Diagnosis {
        let first = eval_points.as_ref().map_or(e.last, |p| p.1[0]);
        let evidence = format!(
            "{}; but the eval loss fell at every one of its {} evaluations, {} → {} ({}): the \
             model learns, and the per-batch train loss scatters as batches of varied examples do",
            t.summary(),
            e.n,
            num(first),
            num(e.last),
            pct(-e.total_fall)
        );
        let mut d = if e.still_falling() {
            let (rel, share) = e.tail_fall.unwrap_or_default();
            make(
                Verdict::Converging,
                margin(rel, STILL_FALLING_REL).min(margin(share, STILL_FALLING_SHARE)),
                format!(
                    "converging: eval loss still falls ({} over the last 3)",
                    pct(rel)
                ),
                evidence,
            )
        } else {
            make(
                Verdict::Converged,
                margin(e.total_fall, EVAL_CLEAR_FALL),
                format!(
                    "converged: eval loss fell at every evaluation, to {}",
                    num(e.last)
                ),
                format!("{evidence}; its last steps are small: it is levelling off"),
            )
        };
        if t.noise_end_rel >= WILD_SCATTER_REL {
            d.advice = format!(
                "{} The train loss scatters ±{} around its trend, too widely to read: a larger \
                 batch (or gradient_accumulation_steps) or a lower learning rate steadies it; \
                 until then the eval loss is the guide.",
                d.advice,
                pct(t.noise_end_rel)
            );
        }
        d
    };

    let (drop_rel, drop_abs) = (t.drop_rel(), t.drop_abs());
    let no_clear_drop = drop_rel < CLEAR_DROP
        || drop_abs < t.noise_abs()
        || drop_abs < LEVEL_CHANGE_SIGMAS * t.level_change_se();
    if let Some(e) = eval_reading.as_ref().filter(|e| e.keeps_improving()) {
        if no_clear_drop || drop_rel < SUBSTANTIAL_DROP {
            return follow_eval(e);
        }
    }
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
    let train_still_falls =
        tail_rel >= STILL_FALLING_REL && share >= STILL_FALLING_SHARE && tstat <= -STILL_FALLING_T;
    let stalled_since = eval_reading.as_ref().and_then(|e| e.stalled_since);
    if let (true, Some(step), Some(e)) = (train_still_falls, stalled_since, &eval_reading) {
        // More steps lower the train loss but no longer the eval loss: done, not "train longer".
        let mut d = make(
            Verdict::Converged,
            // A few flat evaluations are a judgement, never certain.
            margin(tail_rel, STILL_FALLING_REL).min(STALL_CONFIDENCE),
            format!("converged: eval loss flat since step {step} while train loss still falls"),
            format!(
                "{}; {tail_text}{eval_note}; the eval loss has not improved over its last {} \
                 evaluations",
                t.summary(),
                e.after
            ),
        );
        d.best_step = Some(step as usize);
        return d;
    }
    // With an eval curve, "more training helps" also needs the eval loss to be improving.
    let eval_allows = eval_reading.as_ref().is_none_or(|e| e.improving());
    if eval_allows && train_still_falls {
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

/// Why a training curve is unstable.
struct Instability {
    confidence: f64,
    headline: String,
    evidence: String,
    /// Advice other than the verdict's standard one.
    advice: Option<&'static str>,
}

/// The advice for a loss that scatters wildly around a falling trend.
const SCATTER_ADVICE: &str = "The loss fluctuates wildly: the learning rate is too high or the \
    batch too small. Lower the learning rate 3-10×, raise the batch size (or \
    gradient_accumulation_steps), and keep gradient clipping (max_grad_norm 1.0).";

/// Why the training curve is unstable, if it is. Scatter alone (oscillation, wild fluctuation)
/// does not count when `eval_improves`: the eval curve then shows the run learning.
fn unstable(t: &TrainReading, eval_improves: bool) -> Option<Instability> {
    let found = |confidence: f64, headline: String, evidence: String| Instability {
        confidence,
        headline,
        evidence,
        advice: None,
    };
    if t.spikes.len() >= MIN_SPIKES {
        let (step, value, trend) = t
            .spikes
            .iter()
            .copied()
            .max_by(|a, b| (a.1 / a.2).total_cmp(&(b.1 / b.2)))?;
        let worst = value / trend - 1.0;
        return Some(found(
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
        return Some(found(
            margin(jump, JUMP_REL),
            format!("unstable: loss jumped +{} at step {step}", pct(jump)),
            format!(
                "the loss trend jumped {} above its lowest point so far at step {step}; {}",
                pct(jump),
                t.summary()
            ),
        ));
    }
    if eval_improves {
        return None;
    }
    let drop_hidden =
        t.noise_abs() > t.drop_abs() || t.drop_abs() < LEVEL_CHANGE_SIGMAS * t.level_change_se();
    if t.noise_rel > OSCILLATION_REL && drop_hidden {
        return Some(found(
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
    // Near zero (a memorised training set) the relative scatter of tiny losses means nothing.
    if t.noise_end_rel >= WILD_SCATTER_REL && t.end > LOW_LOSS {
        return Some(Instability {
            confidence: margin(t.noise_end_rel, WILD_SCATTER_REL),
            headline: format!(
                "unstable: loss fluctuates wildly (±{})",
                pct(t.noise_end_rel)
            ),
            evidence: format!(
                "the loss scatters ±{} around its trend through the run (±{} or more in its \
                 second half too), beyond the {} a healthy run shows; {}",
                pct(t.noise_rel),
                pct(t.noise_end_rel),
                pct(WILD_SCATTER_REL),
                t.summary()
            ),
            advice: Some(SCATTER_ADVICE),
        });
    }
    None
}

/// The advice when the eval loss has stalled (see [`STALL_FRACTION`]).
fn stall_advice(step: f64) -> String {
    format!(
        "The eval loss has not improved since step {step}: more training at these settings would \
         mostly memorise the training set. Keep the checkpoint of best_step \
         (early_stopping_patience keeps it); for a lower eval loss add data or raise the LoRA \
         rank."
    )
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
        ((i * 12.9898).sin() * 43758.5453).rem_euclid(1.0) * 2.0 - 1.0
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
    fn wide_scatter_around_a_falling_trend_is_unstable_unless_eval_keeps_improving() {
        // Falls 50%, its points ±26% (σ) off the trend through the run.
        let train = curve(
            "loss",
            |i| (1.0 + (-i / 60.0).exp()) * (1.0 + 0.45 * wobble(i)),
            200,
            1,
        );
        let d = diagnose(&train, None);
        assert_eq!(d.verdict, Verdict::Unstable, "{d}");
        assert!(d.advice.contains("batch too small"), "{d}");
        // The same with an eval loss lower at every evaluation: the eval curve decides.
        let eval = curve("eval_loss", |i| 1.5 - 0.05 * i, 5, 40);
        let d = diagnose(&train, Some(&eval));
        assert_ne!(d.verdict, Verdict::Unstable, "{d}");
        // Scatter of a healthy run (±8%) stays converged.
        let calm = curve(
            "loss",
            |i| (1.0 + (-i / 30.0).exp()) * (1.0 + 0.08 * wobble(i)),
            200,
            1,
        );
        assert_eq!(diagnose(&calm, None).verdict, Verdict::Converged);
    }

    #[test]
    fn an_eval_loss_falling_at_every_evaluation_outweighs_a_wandering_train_loss() {
        // The chapter's run: train 2.03 → ~1.6 by step 30, then wandering 1.6-1.8; eval
        // 1.860 → 1.804 → 1.784 → 1.779.
        let train = curve(
            "loss",
            |i| {
                if i < 6.0 {
                    2.03 - 0.08 * i
                } else {
                    1.7 + 0.1 * wobble(i)
                }
            },
            16,
            5,
        );
        let eval = Curve::new(
            "eval_loss",
            &[(20, 1.860), (40, 1.804), (60, 1.784), (80, 1.779)],
        );
        let d = diagnose(&train, Some(&eval));
        assert_eq!(d.verdict, Verdict::Converged, "{d}");
        assert!(
            d.evidence.contains("fell at every one of its 4"),
            "{}",
            d.evidence
        );
        assert!(!d.advice.contains("No learning signal"), "{}", d.advice);
    }

    #[test]
    fn a_stalled_eval_loss_is_never_told_to_train_longer() {
        // Train still falling clearly; eval flat for its last 4 of 15 evaluations.
        let train = curve("loss", |i| 1.0 + 2.0 * (-i / 150.0).exp(), 150, 1);
        let eval = curve(
            "eval_loss",
            |i| {
                if i <= 11.0 {
                    2.0 - 0.05 * i
                } else {
                    1.45 + 0.002 * (i - 11.0)
                }
            },
            15,
            10,
        );
        let d = diagnose(&train, Some(&eval));
        assert_eq!(d.verdict, Verdict::Converged, "{d}");
        assert_eq!(d.best_step, Some(110));
        assert!(
            d.advice.contains("has not improved since step 110"),
            "{}",
            d.advice
        );
        assert!(!d.advice.contains("train longer"), "{}", d.advice);
    }

    #[test]
    fn verdict_names_round_trip() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::parse(v.name()), Some(v));
        }
    }
}
