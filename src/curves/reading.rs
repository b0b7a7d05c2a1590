//! What a loss curve shows, measured robustly: for the training curve its start and end levels,
//! noise, spikes, jumps and the fall of its last quarter; for the eval curve its minimum, the rise
//! after it, its noise and its recent progress. [`super::diagnose`] turns these readings into a
//! verdict; the thresholds they are compared with live there.

use super::diagnose::{
    EARLY_FRACTION, EDGE_FRACTION, EVAL_CLEAR_FALL, EVAL_PROGRESS, LEVEL_CHANGE_SIGMAS,
    MIN_EVALS_AFTER_MIN, MIN_EVAL_POINTS, OVERFIT_NOISE_SIGMAS, OVERFIT_RISE, SPIKE_REL,
    SPIKE_SIGMAS, STALL_FRACTION, STILL_FALLING_REL, STILL_FALLING_SHARE, TAIL_FRACTION,
};
use super::format::{num, pct};
use super::stats::{median, robust_sigma, rolling_median, slope_with_t};
use super::Curve;

/// The finite points of a curve as (steps, values), and the first non-finite step.
pub(super) fn finite_points(c: &Curve) -> (Vec<f64>, Vec<f64>, Option<(usize, usize)>) {
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
pub(super) struct TrainReading {
    pub(super) steps: Vec<f64>,
    pub(super) values: Vec<f64>,
    pub(super) trend: Vec<f64>,
    pub(super) start: f64,
    pub(super) end: f64,
    /// Points in the end median and in the start median; half-width of the rolling median.
    pub(super) edge: usize,
    pub(super) start_points: usize,
    /// The lowest reading of the start: the first point or either early median.
    pub(super) start_low: f64,
    pub(super) half: usize,
    /// σ of the noise relative to the trend, over the run and over its second half (the
    /// smaller of the two).
    pub(super) noise_end_rel: f64,
    /// σ of the noise relative to the trend (see [`relative_noise`]).
    pub(super) noise_rel: f64,
    /// (step, value, trend) of each spike.
    pub(super) spikes: Vec<(f64, f64, f64)>,
    /// Largest rise of the trend above its running minimum: (relative rise, step).
    pub(super) jump: (f64, f64),
}

impl TrainReading {
    pub(super) fn new(steps: Vec<f64>, values: Vec<f64>) -> TrainReading {
        let n = values.len();
        let edge = ((n as f64 * EDGE_FRACTION).ceil() as usize).max(3).min(n);
        // The start is the higher of the medians of the first tenth and of the first 2% (at
        // least 3 points): a loss that drops within the first few steps (common in LoRA) still
        // counts its drop. `start_points` is how many points the chosen median saw.
        let early = ((n as f64 * EARLY_FRACTION).ceil() as usize).max(3).min(n);
        let (head, first) = (median(&values[..edge]), median(&values[..early]));
        let start_low = values[0].min(head).min(first);
        let (median_start, median_points) = if first > head {
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
        // Noise relative to the trend, from second differences: unlike residuals from the
        // rolling median, which follows the noise when the window is short, it holds for short
        // runs. The second half alone too: in a short run a blow-up's own bends inflate the
        // whole-run estimate; the settled end is what the end level is measured against.
        let noise_rel = relative_noise(&values, &trend);
        let half_way = n / 2;
        let noise_end_rel = noise_rel.min(relative_noise(&values[half_way..], &trend[half_way..]));
        // In a short log the whole early fall can lie inside the first three points, where a
        // median hides it: the first point stands for the start when it is above the median by
        // more than the noise could put it ([`LEVEL_CHANGE_SIGMAS`] standard errors of a point).
        let first_point_se = 1.25 * noise_rel * median_start.abs();
        let (start, start_points) =
            if values[0] - median_start > LEVEL_CHANGE_SIGMAS * first_point_se.max(1e-12) {
                (values[0], 1)
            } else {
                (median_start, median_points)
            };
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
    pub(super) fn level_change_se(&self) -> f64 {
        1.25 * self.noise_abs() * (1.0 / self.edge as f64 + 1.0 / self.start_points as f64).sqrt()
    }

    /// Relative standard error of one rolling-median trend value.
    pub(super) fn trend_se_rel(&self) -> f64 {
        1.25 * self.noise_rel / ((2 * self.half + 1) as f64).sqrt()
    }

    pub(super) fn drop_abs(&self) -> f64 {
        self.start - self.end
    }

    pub(super) fn drop_rel(&self) -> f64 {
        self.drop_abs() / self.start.abs().max(1e-12)
    }

    pub(super) fn noise_abs(&self) -> f64 {
        self.noise_rel * self.end.abs()
    }

    /// The trend value at the last point at or before `step` (the first point when none).
    pub(super) fn trend_at(&self, step: f64) -> f64 {
        let i = self.steps.iter().rposition(|&s| s <= step).unwrap_or(0);
        self.trend[i]
    }

    /// The last quarter's fall: (drop relative to the end level, share of the whole decrease,
    /// t statistic of the slope).
    pub(super) fn tail(&self) -> (f64, f64, f64) {
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

    pub(super) fn summary(&self) -> String {
        let change = if self.drop_abs() >= 0.0 {
            format!("fell {}", pct(self.drop_rel()))
        } else {
            format!("rose {}", pct(-self.drop_rel()))
        };
        let levels = if self.start_points == 1 {
            "the first point and the median of the last tenth"
        } else {
            "medians of the first and last tenth"
        };
        format!(
            "train loss {change} (from {} to {}, {levels} of {} points), fluctuating ±{} around \
             its trend",
            num(self.start),
            num(self.end),
            self.values.len(),
            pct(self.noise_rel)
        )
    }
}

/// What the eval curve shows about its minimum.
pub(super) struct EvalReading {
    pub(super) n: usize,
    pub(super) best_step: f64,
    pub(super) best: f64,
    pub(super) after: usize,
    /// Median of the last (up to 3) points after the minimum, relative to the minimum, minus 1.
    pub(super) rise: f64,
    pub(super) noise_rel: f64,
    pub(super) last: f64,
    /// Fall over the last three evaluations relative to the last, and its share of the whole
    /// eval decrease; `None` unless each of them is lower than the one before.
    pub(super) tail_fall: Option<(f64, f64)>,
    /// How much lower the last third's lowest point is than the lowest before it (relative).
    pub(super) progress: f64,
    /// Fall from the first evaluation to the last, relative to the first.
    pub(super) total_fall: f64,
    /// Every evaluation lower than the one before.
    pub(super) falls_at_every_evaluation: bool,
    /// The step of the minimum when at least [`STALL_FRACTION`] of the evaluations (and at least
    /// [`MIN_EVALS_AFTER_MIN`]) came after it: the eval loss has not improved since.
    pub(super) stalled_since: Option<f64>,
}

impl EvalReading {
    pub(super) fn new(steps: &[f64], values: &[f64]) -> Option<EvalReading> {
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
        let noise_rel = relative_noise(values, values);
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
        let needed = ((k as f64 * STALL_FRACTION).ceil() as usize).max(MIN_EVALS_AFTER_MIN);
        let stalled_since = (k - 1 - i >= needed).then_some(steps[i]);
        Some(EvalReading {
            progress,
            total_fall: whole / values[0].abs().max(1e-12),
            falls_at_every_evaluation: values.windows(2).all(|w| w[1] < w[0]),
            stalled_since,
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
    pub(super) fn still_falling(&self) -> bool {
        self.tail_fall.is_some_and(|(rel, share)| {
            rel >= STILL_FALLING_REL
                && share >= STILL_FALLING_SHARE
                && rel >= OVERFIT_NOISE_SIGMAS * self.noise_rel
        })
    }

    /// Whether the eval loss made real progress recently (see [`EVAL_PROGRESS`]).
    pub(super) fn improving(&self) -> bool {
        self.progress >= EVAL_PROGRESS
    }

    /// Improving throughout: lower at every evaluation and by a clear margin in all
    /// ([`EVAL_CLEAR_FALL`]). The eval loss averages a whole validation set, so such a curve shows
    /// learning even when the per-batch train loss is too noisy to.
    pub(super) fn keeps_improving(&self) -> bool {
        self.falls_at_every_evaluation && self.total_fall >= EVAL_CLEAR_FALL
    }

    pub(super) fn overfits(&self) -> bool {
        self.after >= MIN_EVALS_AFTER_MIN
            && self.rise >= OVERFIT_RISE
            && self.rise >= OVERFIT_NOISE_SIGMAS * self.noise_rel
    }
}

/// σ of independent noise on `values`, relative to `level` (the trend, or the values
/// themselves): from second differences, which cancel a locally straight trend and carry σ·√6 of
/// the noise each; the median-based σ ignores the few bends of the curve itself. 0 for fewer
/// than 3 points.
fn relative_noise(values: &[f64], level: &[f64]) -> f64 {
    let second: Vec<f64> = (1..values.len().saturating_sub(1))
        .map(|i| (values[i + 1] - 2.0 * values[i] + values[i - 1]) / level[i].abs().max(1e-12))
        .collect();
    if second.is_empty() {
        0.0
    } else {
        robust_sigma(&second) / 6f64.sqrt()
    }
}
