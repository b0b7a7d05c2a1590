//! The size–quality trade-off of quantization presets as a chart: x = bits per weight, y =
//! perplexity (or any other figure of a report), one labelled dot per preset, and the
//! unquantized reference as a dashed line. PNG or SVG by the file's extension,
//! rendered and written as the loss plots are ([`crate::curves::plot::render_file`]).

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::curves::fonts;
use crate::curves::plot::{chart_frame, render_file, Drawable, COLOURS};
use crate::error::{Error, Result};

/// One preset on the chart.
#[derive(Debug, Clone)]
pub struct TradeoffPoint {
    pub label: String,
    pub bits_per_weight: f64,
    pub value: f64,
}

/// How the chart is drawn.
#[derive(Debug, Clone)]
pub struct TradeoffOptions {
    pub title: Option<String>,
    /// What y is (`perplexity`, `KL divergence`).
    pub y_label: String,
    /// The unquantized model's value, drawn as a dashed line.
    pub reference: Option<f64>,
    pub width: u32,
    pub height: u32,
}

impl Default for TradeoffOptions {
    fn default() -> Self {
        TradeoffOptions {
            title: None,
            y_label: "perplexity".into(),
            reference: None,
            width: 1200,
            height: 800,
        }
    }
}

struct Tradeoff<'a> {
    points: Vec<TradeoffPoint>,
    opts: &'a TradeoffOptions,
    x: (f64, f64),
    y: (f64, f64),
    family: &'static str,
}

/// Draws `points` into `path`.
pub fn plot_tradeoff(points: &[TradeoffPoint], path: &Path, opts: &TradeoffOptions) -> Result<()> {
    let fail = |m: String| Error::msg(format!("plot {}: {m}", path.display()));
    let points: Vec<TradeoffPoint> = points
        .iter()
        .filter(|p| p.bits_per_weight.is_finite() && p.value.is_finite())
        .cloned()
        .collect();
    if points.is_empty() {
        return Err(fail(
            "no points with finite bits/weight and value to draw".into(),
        ));
    }
    let span = |v: &mut dyn Iterator<Item = f64>| {
        v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
    };
    let (x0, x1) = span(&mut points.iter().map(|p| p.bits_per_weight));
    let (y0, y1) = span(&mut points.iter().map(|p| p.value).chain(opts.reference));
    let pad = |lo: f64, hi: f64, frac: f64| {
        let d = ((hi - lo) * frac).max(hi.abs() * 0.01).max(1e-9);
        (lo - d, hi + d)
    };
    let labels: String = points.iter().map(|p| p.label.as_str()).collect();
    let chart = Tradeoff {
        x: pad(x0, x1, 0.08),
        y: pad(y0, y1, 0.12),
        family: fonts::family_for(&labels).map_err(fail)?,
        points,
        opts,
    };
    render_file(&chart, path, opts.width, opts.height)
}

impl Drawable for Tradeoff<'_> {
    fn draw_on<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> std::result::Result<(), String> {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let mut builder = chart_frame(root, self.opts.title.as_deref(), self.family)?;
        let mut ctx = builder
            .build_cartesian_2d(
                RangedCoordf64::from(self.x.0..self.x.1),
                RangedCoordf64::from(self.y.0..self.y.1),
            )
            .map_err(err)?;
        ctx.configure_mesh()
            .x_desc("bits per weight")
            .y_desc(self.opts.y_label.as_str())
            .axis_desc_style((fonts::SANS, 26))
            .label_style((fonts::SANS, 20))
            .light_line_style(RGBColor(0xf2, 0xf2, 0xf2))
            .max_light_lines(4)
            .draw()
            .map_err(err)?;
        let colour = COLOURS[0];
        if let Some(r) = self.opts.reference {
            ctx.draw_series(DashedLineSeries::new(
                [(self.x.0, r), (self.x.1, r)],
                10,
                6,
                COLOURS[7].stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("unquantized: {r:.4}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], COLOURS[7].stroke_width(2)));
        }
        let xy = |p: &TradeoffPoint| (p.bits_per_weight, p.value);
        let label_style = (self.family, 20).into_font().color(&BLACK);
        ctx.draw_series(self.points.iter().map(|p| {
            EmptyElement::at(xy(p))
                + Circle::new((0, 0), 6, colour.filled())
                + Text::new(p.label.clone(), (9, -24), label_style.clone())
        }))
        .map_err(err)?
        .label("presets")
        .legend(move |(x, y)| Circle::new((x + 12, y), 6, colour.filled()));
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(0xcc, 0xcc, 0xcc))
            .label_font((fonts::SANS, 20))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_png_and_svg_and_refuses_nothing_to_draw() {
        let dir = tempfile::tempdir().unwrap();
        let points = vec![
            TradeoffPoint {
                label: "Q8_0".into(),
                bits_per_weight: 8.5,
                value: 18.3,
            },
            TradeoffPoint {
                label: "Q4_0".into(),
                bits_per_weight: 4.5,
                value: 22.8,
            },
        ];
        let opts = TradeoffOptions {
            reference: Some(18.2),
            ..Default::default()
        };
        for name in ["t.png", "t.svg"] {
            let path = dir.path().join(name);
            plot_tradeoff(&points, &path, &opts).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() > 1000);
        }
        let svg = std::fs::read_to_string(dir.path().join("t.svg")).unwrap();
        assert!(svg.contains("Q4_0") && svg.contains("bits per weight"));
        let e = plot_tradeoff(&[], &dir.path().join("x.png"), &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no points"), "{e}");
    }
}
