//! Plotting curves to PNG or SVG (by the file's extension) with plotters, the way LLaMA-Factory
//! draws a loss (specs/llamafactory.md §5): each curve's original points faint (alpha 0.4), its
//! smoothed line (LLaMA-Factory's `smooth()`) solid in the same colour, x = step. Several curves
//! share one chart with a legend (train and eval, or several runs); a curve whose name says it is
//! an evaluation loss (`eval_loss`, `eval_…_loss`) gets a marker at its best (lowest) point.
//!
//! Files are rendered in memory and written atomically. Non-finite points are not drawn (a
//! warning says how many). Text uses the bundled or located fonts of [`super::fonts`].

use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::fonts;
use super::smooth;
use super::Curve;
use crate::error::{Error, Result};
use crate::fsutil;

/// How a chart is drawn.
#[derive(Debug, Clone)]
pub struct PlotOptions {
    /// Chart title; none draws no title.
    pub title: Option<String>,
    /// Legend name per curve, in order; missing ones use the curve's name.
    pub labels: Vec<String>,
    /// Logarithmic y axis (every drawn value must be positive).
    pub log_y: bool,
    /// Draw the smoothed line over the faint original (LLaMA-Factory's look); off draws the
    /// original only, solid.
    pub smooth: bool,
    /// Image size in pixels.
    pub width: u32,
    pub height: u32,
    /// y-axis label; none uses the curves' name when they share one, "loss" when every name is
    /// a loss (`loss`, `eval_loss`), else the names joined.
    pub y_label: Option<String>,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            title: None,
            labels: Vec::new(),
            log_y: false,
            smooth: true,
            width: 1200,
            height: 800,
            y_label: None,
        }
    }
}

/// matplotlib's default colour cycle ("tab10"), the colours LLaMA-Factory's plots use.
pub const COLOURS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// Opacity of the original points under the smoothed line (LLaMA-Factory: alpha=0.4).
const ORIGINAL_ALPHA: f64 = 0.4;
/// Curves with at most this many points also get a dot per point (sparse evaluations).
const DOTS_UP_TO: usize = 40;

/// Whether a curve (by name or legend label) is an evaluation loss, whose lowest point is "the
/// best checkpoint": `eval_loss`, `eval_alpaca_loss`, `B: eval_loss`.
pub fn is_eval_loss(name: &str) -> bool {
    name.contains("eval") && name.ends_with("loss")
}

/// One curve, ready to draw.
struct Series {
    label: String,
    colour: RGBColor,
    original: Vec<(f64, f64)>,
    smoothed: Vec<(f64, f64)>,
    /// The best point and its legend text (value in the curve's own units).
    best: Option<((f64, f64), String)>,
}

/// Everything the renderer needs, computed and checked before any drawing.
struct Chart {
    title: Option<String>,
    y_label: String,
    series: Vec<Series>,
    x_range: (f64, f64),
    y_range: (f64, f64),
    /// Families for the title, axis labels and legend (see [`fonts::family_for`]).
    title_family: &'static str,
    label_family: &'static str,
    legend_family: &'static str,
    log_y: bool,
    smooth: bool,
}

/// Draws `curves` into `path` (`.png` or `.svg`); returns warnings (points not drawn, fonts).
pub fn plot(curves: &[&Curve], path: &Path, opts: &PlotOptions) -> Result<Vec<String>> {
    ImageFormat::of(path)?;
    let mut warnings = Vec::new();
    let chart = Chart::new(curves, opts, &mut warnings)
        .map_err(|message| Error::Msg(format!("plot {}: {message}", path.display())))?;
    render_file(&chart, path, opts.width, opts.height)?;
    Ok(warnings)
}

/// A chart that can draw itself on any plotters backend (PNG bitmap or SVG).
pub trait Drawable {
    fn draw_on<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> std::result::Result<(), String>;
}

impl Drawable for Chart {
    fn draw_on<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> std::result::Result<(), String> {
        draw(self, root)
    }
}

/// Renders `chart` into `path`, a `.png` or `.svg` by its extension, written atomically (its
/// folder is created).
pub fn render_file(chart: &impl Drawable, path: &Path, width: u32, height: u32) -> Result<()> {
    let bytes = match ImageFormat::of(path)? {
        ImageFormat::Png => render_png(chart, width, height),
        ImageFormat::Svg => render_svg(chart, width, height),
    }
    .map_err(|message| Error::Msg(format!("plot {}: {message}", path.display())))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    fsutil::write_atomic(path, &bytes)
}

#[derive(Clone, Copy)]
enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    fn of(path: &Path) -> Result<ImageFormat> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => Ok(ImageFormat::Png),
            Some("svg") => Ok(ImageFormat::Svg),
            _ => Err(Error::Msg(format!(
                "plot {}: unknown image type; name the file .png or .svg",
                path.display()
            ))),
        }
    }
}

impl Chart {
    fn new(
        curves: &[&Curve],
        opts: &PlotOptions,
        warnings: &mut Vec<String>,
    ) -> std::result::Result<Chart, String> {
        if curves.is_empty() {
            return Err("no curves to draw".into());
        }
        let mut series = Vec::new();
        for (i, curve) in curves.iter().enumerate() {
            let label = opts
                .labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| curve.name.clone());
            series.push(Series::new(
                curve,
                label,
                COLOURS[i % COLOURS.len()],
                opts,
                warnings,
            )?);
        }
        let all = || series.iter().flat_map(|s| s.original.iter());
        if all().next().is_none() {
            return Err("the curves have no finite points to draw".into());
        }
        let x_range = span(all().map(|p| p.0));
        let (lo, hi) = span(all().map(|p| p.1));
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else if opts.log_y {
            0.05
        } else {
            lo.abs().max(1.0) * 0.1
        };
        let y_range = (lo - pad, hi + pad);
        let x_range = if x_range.1 > x_range.0 {
            x_range
        } else {
            (x_range.0 - 1.0, x_range.1 + 1.0)
        };
        let y_label = opts
            .y_label
            .clone()
            .unwrap_or_else(|| default_y_label(curves.iter().map(|c| c.name.as_str())));
        let mut family = |text: &str| match fonts::family_for(text) {
            Ok(f) => f,
            Err(message) => {
                warnings.push(message);
                fonts::SANS
            }
        };
        let legend_text: String = series.iter().map(|s| s.label.as_str()).collect();
        Ok(Chart {
            title_family: family(opts.title.as_deref().unwrap_or("")),
            label_family: family(&y_label),
            legend_family: family(&legend_text),
            title: opts.title.clone(),
            y_label,
            series,
            x_range,
            y_range,
            log_y: opts.log_y,
            smooth: opts.smooth,
        })
    }
}

impl Series {
    fn new(
        curve: &Curve,
        label: String,
        colour: RGBColor,
        opts: &PlotOptions,
        warnings: &mut Vec<String>,
    ) -> std::result::Result<Series, String> {
        let points: Vec<(f64, f64)> = curve
            .steps
            .iter()
            .zip(&curve.values)
            .map(|(&s, &v)| (s as f64, v))
            .collect();
        let original: Vec<(f64, f64)> =
            points.iter().copied().filter(|p| p.1.is_finite()).collect();
        if original.len() < points.len() {
            let first = points.iter().find(|p| !p.1.is_finite()).map(|p| p.0);
            warnings.push(format!(
                "curve {label}: {} non-finite point(s) not drawn (the first at step {})",
                points.len() - original.len(),
                first.unwrap_or_default()
            ));
        }
        if opts.log_y {
            if let Some(p) = original.iter().find(|p| p.1 <= 0.0) {
                return Err(format!(
                    "curve {label} has the value {} at step {}, which a logarithmic axis cannot \
                     show; drop log_y or slice the curve",
                    p.1, p.0
                ));
            }
        }
        let values: Vec<f64> = original.iter().map(|p| p.1).collect();
        let smoothed: Vec<(f64, f64)> = original
            .iter()
            .zip(smooth::llamafactory(&values))
            .map(|(p, s)| (p.0, s))
            .collect();
        let best = if (is_eval_loss(&curve.name) || is_eval_loss(&label)) && original.len() >= 2 {
            original
                .iter()
                .copied()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|p| (p, format!("best {label}: {:.4} at step {}", p.1, p.0)))
        } else {
            None
        };
        // A logarithmic axis is drawn as a linear axis over log10 of the values, with ticks at
        // round values (plotters' own log axis labels nothing inside a single decade).
        let y = |p: (f64, f64)| if opts.log_y { (p.0, p.1.log10()) } else { p };
        let original = original.into_iter().map(y).collect();
        let smoothed = smoothed.into_iter().map(y).collect();
        let best = best.map(|(p, text)| (y(p), text));
        Ok(Series {
            label,
            colour,
            original,
            smoothed,
            best,
        })
    }
}

/// The (min, max) of some numbers.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

fn render_png(
    chart: &impl Drawable,
    width: u32,
    height: u32,
) -> std::result::Result<Vec<u8>, String> {
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        chart.draw_on(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Charts are mostly flat colour: adaptive filtering + best compression make them ~10× smaller.
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(bytes)
}

fn render_svg(
    chart: &impl Drawable,
    width: u32,
    height: u32,
) -> std::result::Result<Vec<u8>, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        chart.draw_on(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg.into_bytes())
}

fn draw<DB: DrawingBackend>(
    chart: &Chart,
    root: &DrawingArea<DB, plotters::coord::Shift>,
) -> std::result::Result<(), String> {
    let (lo, hi) = chart.y_range;
    if chart.log_y {
        let axis = YAxis {
            linear: RangedCoordf64::from(lo..hi),
            ticks: Some(log_ticks(lo, hi)),
        };
        draw_with(chart, root, axis, &|v| tick_text(10f64.powf(*v)))
    } else {
        let axis = YAxis {
            linear: RangedCoordf64::from(lo..hi),
            ticks: None,
        };
        draw_with(chart, root, axis, &|v| tick_text(*v))
    }
}

/// The corner whose legend-sized box (40% of the width, 30% of the height) covers the fewest
/// points, preferring the upper right (matplotlib's `loc="best"` in spirit).
fn legend_corner(chart: &Chart) -> SeriesLabelPosition {
    let (x0, x1) = chart.x_range;
    let (y0, y1) = chart.y_range;
    let points = chart
        .series
        .iter()
        .flat_map(|s| s.original.iter().chain(&s.smoothed))
        .map(|&(x, y)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)));
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let mut counts = [0usize; 4];
    for (x, y) in points {
        for (i, &(_, right, upper)) in corners.iter().enumerate() {
            let in_x = if right { x > 0.6 } else { x < 0.4 };
            let in_y = if upper { y > 0.7 } else { y < 0.3 };
            counts[i] += usize::from(in_x && in_y);
        }
    }
    let best = (0..4).min_by_key(|&i| (counts[i], i)).unwrap_or(0);
    corners[best].0.clone()
}

/// The y axis: linear with plotters' ticks, or with ticks at chosen positions (the log axis,
/// drawn over log10 values).
struct YAxis {
    linear: RangedCoordf64,
    ticks: Option<Vec<f64>>,
}

impl Ranged for YAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        match &self.ticks {
            Some(ticks) => ticks.clone(),
            None => self.linear.key_points(hint),
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.linear.range()
    }
}

/// Tick positions (log10 values) for a log axis spanning log10 values `lo..hi`: the 1-2-5
/// series of each decade, or every integer multiple when that gives too few ticks.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let pick = |mantissas: &[f64]| -> Vec<f64> {
        (lo.floor() as i32..=hi.ceil() as i32)
            .flat_map(|e| mantissas.iter().map(move |m| (m * 10f64.powi(e)).log10()))
            .filter(|t| (lo..=hi).contains(t))
            .collect()
    };
    let coarse = pick(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 4 {
        coarse
    } else {
        pick(&[1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

/// A tick label: at most 4 significant digits, no trailing zeros.
fn tick_text(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 8) as usize;
    let text = format!("{v:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A white drawing area with every tunelab chart's margins and label areas, and `title` above
/// (in font `family`), ready for the axes.
pub fn chart_frame<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, plotters::coord::Shift>,
    title: Option<&'b str>,
    family: &'b str,
) -> std::result::Result<ChartBuilder<'a, 'b, DB>, String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut builder = ChartBuilder::on(root);
    builder
        .margin(24)
        .x_label_area_size(70)
        .y_label_area_size(100);
    if let Some(title) = title {
        builder.caption(title, (family, 34));
    }
    Ok(builder)
}

/// Draws the chart on a linear or logarithmic y axis.
fn draw_with<DB: DrawingBackend>(
    chart: &Chart,
    root: &DrawingArea<DB, plotters::coord::Shift>,
    y_axis: YAxis,
    y_text: &dyn Fn(&f64) -> String,
) -> std::result::Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut builder = chart_frame(root, chart.title.as_deref(), chart.title_family)?;
    let (x0, x1) = chart.x_range;
    let mut ctx = builder
        .build_cartesian_2d(RangedCoordf64::from(x0..x1), y_axis)
        .map_err(err)?;
    ctx.configure_mesh()
        .x_desc("step")
        .y_desc(chart.y_label.as_str())
        .axis_desc_style((chart.label_family, 26))
        .label_style((fonts::SANS, 20))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(y_text)
        .light_line_style(RGBColor(0xf2, 0xf2, 0xf2))
        .max_light_lines(4)
        .draw()
        .map_err(err)?;

    let single = chart.series.len() == 1;
    for s in &chart.series {
        let colour = s.colour;
        let faint = colour.mix(ORIGINAL_ALPHA);
        let original_style = if chart.smooth {
            faint.stroke_width(2)
        } else {
            colour.stroke_width(3)
        };
        let original = ctx
            .draw_series(LineSeries::new(s.original.iter().copied(), original_style))
            .map_err(err)?;
        if single {
            original.label(if chart.smooth {
                "original"
            } else {
                s.label.as_str()
            });
            original.legend(move |(x, y)| {
                PathElement::new(vec![(x - 4, y), (x + 26, y)], faint.stroke_width(3))
            });
        }
        if s.original.len() <= DOTS_UP_TO {
            ctx.draw_series(
                s.original
                    .iter()
                    .map(|&p| Circle::new(p, 4, original_style.color.filled())),
            )
            .map_err(err)?;
        }
        if chart.smooth {
            let smoothed = ctx
                .draw_series(LineSeries::new(
                    s.smoothed.iter().copied(),
                    colour.stroke_width(3),
                ))
                .map_err(err)?;
            smoothed.label(if single { "smoothed" } else { s.label.as_str() });
            smoothed.legend(move |(x, y)| {
                PathElement::new(vec![(x - 4, y), (x + 26, y)], colour.stroke_width(3))
            });
        } else if !single {
            // Without smoothing the original line is the series: it carries the legend entry.
            let line = ctx
                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                .map_err(err)?;
            line.label(s.label.as_str());
            line.legend(move |(x, y)| {
                PathElement::new(vec![(x - 4, y), (x + 26, y)], colour.stroke_width(3))
            });
        }
        if let Some((best, text)) = &s.best {
            let marker = ctx
                .draw_series(std::iter::once(Circle::new(
                    *best,
                    9,
                    BLACK.stroke_width(3),
                )))
                .map_err(err)?;
            marker.label(text.as_str());
            marker.legend(move |(x, y)| Circle::new((x + 11, y), 7, BLACK.stroke_width(3)));
        }
    }
    ctx.configure_series_labels()
        .position(legend_corner(chart))
        .legend_area_size(48)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xbb, 0xbb, 0xbb))
        .label_font((chart.legend_family, 22))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The y-axis label when none is given: the curves' shared name, "loss" when each is a loss
/// (`loss` with `eval_loss`), else their names joined (`loss, lr`); "value" only for unnamed
/// curves.
fn default_y_label<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for n in names.filter(|n| !n.is_empty()) {
        if !distinct.contains(&n) {
            distinct.push(n);
        }
    }
    match distinct.as_slice() {
        [] => "value".into(),
        [one] => one.to_string(),
        many if many.iter().all(|n| n.contains("loss")) => "loss".into(),
        many => many.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_y_axis_says_what_the_curves_are() {
        let label = |names: &[&str]| default_y_label(names.iter().copied());
        assert_eq!(label(&["loss", "eval_loss"]), "loss");
        assert_eq!(label(&["loss", "loss"]), "loss");
        assert_eq!(label(&["grad_norm"]), "grad_norm");
        assert_eq!(label(&["loss", "learning_rate"]), "loss, learning_rate");
        assert_eq!(label(&["", ""]), "value");
    }

    fn falling(name: &str, n: usize, every: usize) -> Curve {
        let points: Vec<(usize, f64)> = (1..=n)
            .map(|i| (i * every, 2.0 + 3.0 * (-(i as f64) / 10.0).exp()))
            .collect();
        Curve::new(name, &points)
    }

    #[test]
    fn png_and_svg_by_extension_and_other_names_refused() {
        let dir = tempfile::tempdir().unwrap();
        let loss = falling("loss", 60, 1);
        let eval = falling("eval_loss", 6, 10);
        let png = dir.path().join("loss.png");
        let warnings = plot(&[&loss, &eval], &png, &PlotOptions::default()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let svg = dir.path().join("loss.svg");
        plot(&[&loss], &svg, &PlotOptions::default()).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("<svg") && text.contains("smoothed"), "{text}");
        let err = plot(
            &[&loss],
            &dir.path().join("loss.jpg"),
            &PlotOptions::default(),
        );
        assert!(err.unwrap_err().to_string().contains(".png or .svg"));
    }

    #[test]
    fn log_ticks_are_round_values_inside_the_range() {
        let ticks: Vec<String> = log_ticks(1.5f64.log10(), 5.7f64.log10())
            .iter()
            .map(|t| tick_text(10f64.powf(*t)))
            .collect();
        assert_eq!(ticks, ["1.5", "2", "2.5", "3", "4", "5"]);
        let wide: Vec<String> = log_ticks(-2.1, 0.5)
            .iter()
            .map(|t| tick_text(10f64.powf(*t)))
            .collect();
        assert_eq!(
            wide,
            ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2"]
        );
    }

    #[test]
    fn log_axis_refuses_non_positive_values_naming_the_point() {
        let dir = tempfile::tempdir().unwrap();
        let curve = Curve::new("loss", &[(1, 1.0), (2, 0.0)]);
        let opts = PlotOptions {
            log_y: true,
            ..PlotOptions::default()
        };
        let err = plot(&[&curve], &dir.path().join("x.png"), &opts).unwrap_err();
        assert!(err.to_string().contains("at step 2"), "{err}");
    }

    #[test]
    fn non_finite_points_are_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let curve = Curve::new("loss", &[(1, 3.0), (2, 2.0), (3, f64::NAN), (4, 1.5)]);
        let warnings = plot(
            &[&curve],
            &dir.path().join("x.svg"),
            &PlotOptions::default(),
        )
        .unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("at step 3"), "{warnings:?}");
    }
}
