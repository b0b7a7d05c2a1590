//! Script API, area "curves": curve objects from runs, logs, CSV files and arrays, and their
//! queries and smoothing. Thin bindings over [`crate::curves`].

use rhai::plugin::*;

/// The area name `:help` groups these functions under.
pub const AREA: &str = "curves";

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(curves_api)
}

use std::path::Path;

use rhai::{Dynamic, Map, NativeCallContext};

use crate::curves::plot::{self, PlotOptions};
use crate::curves::Curve;
use crate::script::engine::host;
use crate::script::errors::{runtime, IntoScript, ScriptResult};
use crate::script::options::Options;

#[export_module]
pub mod curves_api {
    use std::path::Path;

    use rhai::{Array, Map, NativeCallContext, INT};

    use crate::curves::{smooth, sources, Curve as CoreCurve};
    use crate::script::errors::{runtime, IntoScript, ScriptResult};

    /// A series of (step, value) points: `len()`, `steps`, `values`, `min()`, `argmin()`,
    /// `last()`, `slice(from, to)`, `smooth()`, `ema(weight)`, `plot(path[, opts])`.
    pub type Curve = CoreCurve;

    fn from_file(path: &str, key: Option<&str>) -> ScriptResult<Curve> {
        let p = Path::new(path);
        if path.ends_with(".csv") {
            sources::from_csv(p, key).script()
        } else {
            sources::from_trainer_log(p, key.unwrap_or("loss")).script()
        }
    }

    /// The training loss of a `trainer_log.jsonl` (tunelab's or LLaMA-Factory's), or the values
    /// of a CSV of step,value.
    #[rhai_fn(return_raw)]
    pub fn curve(path: &str) -> ScriptResult<Curve> {
        from_file(path, None)
    }

    /// The series `key` (e.g. "eval_loss", "lr") of a trainer log or a CSV with a header.
    #[rhai_fn(name = "curve", return_raw)]
    pub fn curve_key(path: &str, key: &str) -> ScriptResult<Curve> {
        from_file(path, Some(key))
    }

    /// A curve from numbers (steps 1, 2, 3, …) or from [step, value] pairs.
    #[rhai_fn(name = "curve", return_raw)]
    pub fn curve_array(points: Array) -> ScriptResult<Curve> {
        let number = |v: &Dynamic, i: usize| -> ScriptResult<f64> {
            v.as_float()
                .or_else(|_| v.as_int().map(|n| n as f64))
                .map_err(|_| {
                    runtime(format!(
                        "curve: point {i}: expected a number or [step, value]"
                    ))
                })
        };
        let mut pairs = Vec::with_capacity(points.len());
        let mut plain = Vec::with_capacity(points.len());
        for (i, p) in points.iter().enumerate() {
            if p.is_array() {
                let pair = p.clone().into_array().unwrap_or_default();
                if pair.len() != 2 {
                    return Err(runtime(format!("curve: point {i}: expected [step, value]")));
                }
                pairs.push((number(&pair[0], i)?.max(0.0) as usize, number(&pair[1], i)?));
            } else {
                plain.push(number(p, i)?);
            }
        }
        if !pairs.is_empty() && !plain.is_empty() {
            return Err(runtime(
                "curve: mix of numbers and [step, value] pairs; use one kind",
            ));
        }
        Ok(if pairs.is_empty() {
            sources::from_values("values", &plain)
        } else {
            CoreCurve::new("values", &pairs)
        })
    }

    /// Number of points.
    #[rhai_fn(global, name = "len", pure)]
    pub fn len(c: &mut Curve) -> INT {
        c.len() as INT
    }

    /// The steps of the points.
    #[rhai_fn(global, get = "steps", pure)]
    pub fn steps(c: &mut Curve) -> Array {
        c.steps.iter().map(|&s| Dynamic::from(s as INT)).collect()
    }

    /// The values of the points.
    #[rhai_fn(global, get = "values", pure)]
    pub fn values(c: &mut Curve) -> Array {
        c.values.iter().map(|&v| Dynamic::from(v)).collect()
    }

    /// What the values are (`loss`, `eval_loss`, …).
    #[rhai_fn(global, get = "name", pure)]
    pub fn name(c: &mut Curve) -> String {
        c.name.clone()
    }

    /// The smallest value (() when empty).
    #[rhai_fn(global, name = "min", pure)]
    pub fn min(c: &mut Curve) -> Dynamic {
        c.min().map_or(Dynamic::UNIT, |(_, v)| Dynamic::from(v))
    }

    /// The step of the smallest value (() when empty).
    #[rhai_fn(global, name = "argmin", pure)]
    pub fn argmin(c: &mut Curve) -> Dynamic {
        c.argmin()
            .map_or(Dynamic::UNIT, |s| Dynamic::from(s as INT))
    }

    /// The last value (() when empty).
    #[rhai_fn(global, name = "last", pure)]
    pub fn last(c: &mut Curve) -> Dynamic {
        c.last().map_or(Dynamic::UNIT, |(_, v)| Dynamic::from(v))
    }

    /// The points with from ≤ step ≤ to.
    #[rhai_fn(global, name = "slice", pure)]
    pub fn slice(c: &mut Curve, from: INT, to: INT) -> Curve {
        c.slice(from.max(0) as usize, to.max(0) as usize)
    }

    /// LLaMA-Factory's smoothing (weight 1.8·(sigmoid(0.05·N) − 0.5), as its loss plots).
    #[rhai_fn(global, name = "smooth", pure)]
    pub fn smoothed(c: &mut Curve) -> Curve {
        c.with_values(
            &format!("{} (smoothed)", c.name),
            smooth::llamafactory(&c.values),
        )
    }

    /// TensorBoard's debiased exponential moving average with `weight` in [0, 1).
    #[rhai_fn(global, name = "ema", return_raw, pure)]
    pub fn ema(c: &mut Curve, weight: f64) -> ScriptResult<Curve> {
        if !(0.0..1.0).contains(&weight) {
            return Err(runtime(format!("ema: weight {weight} must be in [0, 1)")));
        }
        Ok(c.with_values(
            &format!("{} (ema {weight})", c.name),
            smooth::ema(&c.values, weight),
        ))
    }

    /// Draws the curve (original faint, smoothed solid) into a `.png` or `.svg` file.
    #[rhai_fn(global, name = "plot", return_raw, pure)]
    pub fn plot_one(ctx: NativeCallContext, c: &mut Curve, path: &str) -> ScriptResult<()> {
        super::draw(&ctx, std::slice::from_ref(c), path, Map::new())
    }

    /// Draws the curve with options `title`, `labels`, `log_y`, `smooth`, `width`, `height`,
    /// `y_label`.
    #[rhai_fn(global, name = "plot", return_raw, pure)]
    pub fn plot_one_with(
        ctx: NativeCallContext,
        c: &mut Curve,
        path: &str,
        opts: Map,
    ) -> ScriptResult<()> {
        super::draw(&ctx, std::slice::from_ref(c), path, opts)
    }

    /// Draws several curves on one chart with a legend (train and eval, or several runs).
    #[rhai_fn(name = "plot", return_raw)]
    pub fn plot_many(ctx: NativeCallContext, curves: Array, path: &str) -> ScriptResult<()> {
        plot_many_with(ctx, curves, path, Map::new())
    }

    /// Draws several curves on one chart: options `labels` (legend names), `title`, `log_y`,
    /// `smooth`, `width`, `height`, `y_label`.
    #[rhai_fn(name = "plot", return_raw)]
    pub fn plot_many_with(
        ctx: NativeCallContext,
        curves: Array,
        path: &str,
        opts: Map,
    ) -> ScriptResult<()> {
        let curves = curves
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let kind = c.type_name();
                c.try_cast::<Curve>()
                    .ok_or_else(|| runtime(format!("plot: item {i} is {kind}, not a curve")))
            })
            .collect::<ScriptResult<Vec<Curve>>>()?;
        super::draw(&ctx, &curves, path, opts)
    }

    /// The verdict on a training loss curve: `#{ verdict, confidence, evidence, advice,
    /// best_step, headline }`; verdict is one of converged, converging, not_converging,
    /// overfitting, underfitting, unstable, diverged, too_short.
    #[rhai_fn(name = "diagnose")]
    pub fn diagnose_train(train: Curve) -> Map {
        super::diagnosis_map(crate::curves::diagnose(&train, None))
    }

    /// The verdict on a training loss curve read with its eval loss curve (an empty eval curve
    /// counts as none): overfitting needs the eval curve; best_step is its lowest point.
    #[rhai_fn(name = "diagnose")]
    pub fn diagnose_train_eval(train: Curve, eval: Curve) -> Map {
        let eval = (!eval.is_empty()).then_some(&eval);
        super::diagnosis_map(crate::curves::diagnose(&train, eval))
    }

    /// Name, length, first, last and minimum.
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn to_string(c: &mut Curve) -> String {
        c.to_string()
    }
}

/// A diagnosis as the script map of the DESIGN contract (+ `headline`, a one-line summary).
pub(crate) fn diagnosis_map(d: crate::curves::Diagnosis) -> Map {
    let mut m = Map::new();
    m.insert("verdict".into(), d.verdict.name().into());
    m.insert("confidence".into(), Dynamic::from(d.confidence));
    m.insert("evidence".into(), d.evidence.into());
    m.insert("advice".into(), d.advice.into());
    m.insert(
        "best_step".into(),
        d.best_step
            .map_or(Dynamic::UNIT, |s| Dynamic::from(s as rhai::INT)),
    );
    m.insert("headline".into(), d.headline.into());
    m
}

/// Draws `curves` into `path` with a script option map; warnings go to the script output.
fn draw(ctx: &NativeCallContext, curves: &[Curve], path: &str, opts: Map) -> ScriptResult<()> {
    let o = Options::new(
        "plot options",
        opts,
        &[
            "title", "labels", "log_y", "smooth", "width", "height", "y_label",
        ],
    )?;
    let defaults = PlotOptions::default();
    let size = |key: &str, default: u32| -> ScriptResult<u32> {
        match o.int(key)? {
            None => Ok(default),
            Some(n) if (100..=8000).contains(&n) => Ok(n as u32),
            Some(n) => Err(runtime(format!(
                "plot options: key \"{key}\": {n} pixels is out of range 100..8000"
            ))),
        }
    };
    let labels = o
        .array("labels")?
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.to_string())
        .collect();
    let popts = PlotOptions {
        title: o.string("title")?,
        labels,
        log_y: o.bool("log_y")?.unwrap_or(false),
        smooth: o.bool("smooth")?.unwrap_or(true),
        width: size("width", defaults.width)?,
        height: size("height", defaults.height)?,
        y_label: o.string("y_label")?,
    };
    let refs: Vec<&Curve> = curves.iter().collect();
    let warnings = plot::plot(&refs, Path::new(path), &popts).script()?;
    let out = host(ctx).output;
    for w in warnings {
        out.line(&format!("warning: {w}"));
    }
    Ok(())
}
