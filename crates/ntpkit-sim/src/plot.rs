//! Plots of true offset versus time, one line per node, as SVG or PNG (plotters).
//!
//! The offset axis fits the statistics window (samples from the scenario's `stats-start` on),
//! not the whole run: a start-up transient (an initial offset of 100 ms, say) would otherwise
//! flatten everything after it into a line. The start-up stays visible, shaded and with its
//! lines cut at the edge of the chart. Long runs have their time axis in minutes, hours or days.
//!
//! Text needs a TrueType font: DejaVu Sans (Debian's fonts-dejavu-core) or Liberation Sans is
//! loaded from the usual system paths and registered with plotters' ab_glyph renderer.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The file name ends in neither `.svg` nor `.png`.
    #[error("plot file {0} must end in .svg or .png")]
    Format(String),
    /// No TrueType font was found for the labels.
    #[error("no TrueType font found for plot labels (tried {0}); install fonts-dejavu-core")]
    NoFont(String),
    /// Drawing or encoding failed.
    #[error("drawing the plot: {0}")]
    Draw(String),
    /// The file could not be written.
    #[error("cannot write plot file {path}")]
    Write {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The file formats a plot can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotFormat {
    /// Scalable vector graphics.
    Svg,
    /// Portable network graphics (RGB, 8 bits per channel).
    Png,
}

impl PlotFormat {
    /// The format a file name asks for by its extension (`.svg` or `.png`, any case).
    pub fn of(path: &Path) -> Result<PlotFormat, PlotError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => Ok(PlotFormat::Svg),
            Some("png") => Ok(PlotFormat::Png),
            _ => Err(PlotError::Format(path.display().to_string())),
        }
    }
}

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Loads a font for the labels, once; fails if none is installed. [`render`] calls it; call
/// it early to find out before any work is done.
pub fn check_font() -> Result<(), PlotError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::NoFont(FONT_PATHS.join(", ")))
    }
}

/// What to draw.
#[derive(Debug)]
pub struct PlotInput<'a> {
    /// Title.
    pub title: &'a str,
    /// Per line: node name and (time s, true offset s) points.
    pub lines: Vec<(&'a str, &'a [(f64, f64)])>,
    /// Plot |offset| on a logarithmic axis.
    pub log_scale: bool,
    /// Start of the statistics window, s: the offset axis fits the samples from here on, and
    /// the time before it is shaded.
    pub stats_start: f64,
}

/// Size of the image, pixels.
const SIZE: (u32, u32) = (1400, 800);
const TITLE_FONT: u32 = 30;
const DESC_FONT: u32 = 24;
const TICK_FONT: u32 = 19;
const LEGEND_FONT: u32 = 20;

/// Line colours, distinguishable on white (Tableau 10, then black and dark gold); the
/// thirteenth line takes the first colour again.
const PALETTE: [RGBColor; 12] = [
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
    RGBColor(0x00, 0x00, 0x00),
    RGBColor(0xb8, 0x86, 0x0b),
];

/// Draws `input` into `path` (.svg or .png).
pub fn plot(path: &Path, input: &PlotInput<'_>) -> Result<(), PlotError> {
    let bytes = render(PlotFormat::of(path)?, input)?;
    std::fs::write(path, bytes).map_err(|source| PlotError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Draws `input` and returns the file's bytes.
pub fn render(format: PlotFormat, input: &PlotInput<'_>) -> Result<Vec<u8>, PlotError> {
    check_font()?;
    match format {
        PlotFormat::Svg => {
            let mut text = String::new();
            {
                let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
                draw(&root, input).map_err(PlotError::Draw)?;
                root.present().map_err(|e| PlotError::Draw(e.to_string()))?;
            }
            Ok(text.into_bytes())
        }
        PlotFormat::Png => {
            let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                draw(&root, input).map_err(PlotError::Draw)?;
                root.present().map_err(|e| PlotError::Draw(e.to_string()))?;
            }
            let mut png = Vec::new();
            let mut encoder = png::Encoder::new(&mut png, SIZE.0, SIZE.1);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder.set_compression(png::Compression::Best);
            encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
            let encode = |e: png::EncodingError| PlotError::Draw(e.to_string());
            let mut writer = encoder.write_header().map_err(encode)?;
            writer.write_image_data(&rgb).map_err(encode)?;
            writer.finish().map_err(encode)?;
            Ok(png)
        }
    }
}

/// The unit an axis of seconds is labelled in, for values up to `max`: (seconds per unit,
/// name).
fn offset_unit(max: f64) -> (f64, &'static str) {
    if max >= 1.0 {
        (1.0, "s")
    } else if max >= 1e-3 {
        (1e-3, "ms")
    } else if max >= 1e-6 {
        (1e-6, "µs")
    } else {
        (1e-9, "ns")
    }
}

/// The unit of the time axis for a run of `t_max` seconds: seconds up to 10 minutes, minutes
/// up to 3 hours, hours up to 3 days, days beyond.
fn time_unit(t_max: f64) -> (f64, &'static str) {
    if t_max > 3.0 * 86_400.0 {
        (86_400.0, "d")
    } else if t_max > 3.0 * 3600.0 {
        (3600.0, "h")
    } else if t_max > 600.0 {
        (60.0, "min")
    } else {
        (1.0, "s")
    }
}

/// A tick label: at most four decimals, no trailing zeros ("2000", "12.5", "0").
fn tick(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// A duration in seconds with its unit ("10 µs", "1 s"), for the logarithmic axis.
fn with_unit(v: f64) -> String {
    let (per, unit) = offset_unit(v * 1.000_001);
    format!("{} {unit}", tick(v / per))
}

/// The offset range (s) the chart shows: the samples from `stats_start` on, with a margin.
/// Linear: from the lowest to the highest offset, zero always included. Logarithmic (of
/// |offset|): up to twice the largest, down to half the 1st percentile (dips through zero
/// reach arbitrarily far down), at most eight decades.
fn y_range(lines: &[(&str, &[(f64, f64)])], stats_start: f64, log: bool) -> (f64, f64) {
    let window = |from: f64| {
        lines
            .iter()
            .flat_map(move |(_, p)| p.iter().filter(move |x| x.0 >= from).map(|x| x.1))
            .filter(|v| v.is_finite())
    };
    // A run always samples its last instant, which is in the window; fall back to all
    // samples should a series end earlier.
    let from = if window(stats_start).next().is_some() {
        stats_start
    } else {
        f64::NEG_INFINITY
    };
    if log {
        let mut abs: Vec<f64> = window(from).map(f64::abs).filter(|&v| v > 0.0).collect();
        if abs.is_empty() {
            return (1e-9, 1e-6);
        }
        abs.sort_by(f64::total_cmp);
        let hi = abs[abs.len() - 1] * 2.0;
        let lo = (abs[abs.len() / 100] / 2.0).max(hi * 1e-8);
        (lo, hi)
    } else {
        let (lo, hi) = window(from).fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let span = (hi - lo).max(1e-9);
        (lo - 0.08 * span, hi + 0.08 * span)
    }
}

/// Cuts a polyline at the horizontal band `lo..=hi`: the pieces inside it, each crossing of
/// an edge ending or starting a piece exactly on the edge.
fn clip(points: &[(f64, f64)], lo: f64, hi: f64) -> Vec<Vec<(f64, f64)>> {
    let inside = |y: f64| (lo..=hi).contains(&y);
    let mut pieces = Vec::new();
    let mut piece: Vec<(f64, f64)> = Vec::new();
    if let [p] = points {
        if inside(p.1) {
            pieces.push(vec![*p]);
        }
        return pieces;
    }
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let clipped = if a.1 == b.1 {
            inside(a.1).then_some((a, b))
        } else {
            // Where the segment a + t·(b − a) meets y = lo and y = hi.
            let t_lo = (lo - a.1) / (b.1 - a.1);
            let t_hi = (hi - a.1) / (b.1 - a.1);
            let enter = t_lo.min(t_hi).max(0.0);
            let exit = t_lo.max(t_hi).min(1.0);
            let at = |t: f64| {
                if t <= 0.0 {
                    a
                } else if t >= 1.0 {
                    b
                } else {
                    (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))
                }
            };
            (enter <= exit).then(|| (at(enter), at(exit)))
        };
        match clipped {
            Some((from, to)) => {
                if piece.last() != Some(&from) {
                    if !piece.is_empty() {
                        pieces.push(std::mem::take(&mut piece));
                    }
                    piece.push(from);
                }
                piece.push(to);
            }
            None => {
                if !piece.is_empty() {
                    pieces.push(std::mem::take(&mut piece));
                }
            }
        }
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
}

/// Seconds as a short duration ("10 min", "2 h", "35 s").
fn human(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{} h", tick(secs / 3600.0))
    } else if secs >= 60.0 {
        format!("{} min", tick(secs / 60.0))
    } else {
        format!("{} s", tick(secs))
    }
}

/// A legend entry's mark: a line of a colour, or the shading of the start-up.
#[derive(Clone, Copy)]
enum Swatch {
    Line(RGBColor),
    Shade,
}

const LINE_WIDTH: u32 = 2;
/// The shading of the time before the statistics window.
const SHADE: RGBAColor = RGBAColor(0, 0, 0, 0.09);
/// Height of a legend row, pixels.
const LEGEND_ROW: i32 = 30;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    input: &PlotInput<'_>,
) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let area = root
        .margin(12, 0, 0, 0)
        .titled(input.title, ("sans-serif", TITLE_FONT))
        .map_err(e)?;

    // The legend has a column of its own on the right, so that it never hides a line.
    let mut entries: Vec<(String, Swatch)> = input
        .lines
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.to_string(), Swatch::Line(PALETTE[i % PALETTE.len()])))
        .collect();
    if input.stats_start > 0.0 {
        entries.push((
            format!("start-up: first {}", human(input.stats_start)),
            Swatch::Shade,
        ));
    }
    let (_, height) = area.dim_in_pixel();
    let fits = ((height as i32 - 40) / LEGEND_ROW).max(2) as usize;
    if entries.len() > fits {
        let more = entries.len() - (fits - 1);
        entries.truncate(fits - 1);
        entries.push((format!("… {more} more"), Swatch::Line(WHITE)));
    }
    let font = TextStyle::from(("sans-serif", LEGEND_FONT).into_font());
    let mut text_width = 0;
    for (text, _) in &entries {
        text_width = text_width.max(area.estimate_text_size(text, &font).map_err(e)?.0);
    }
    // The estimate runs a little short of the drawn text: a tenth more, and a margin.
    let legend_width = (46 + text_width * 11 / 10 + 20).min(SIZE.0 / 3);
    let (chart_area, legend_area) = area.split_horizontally(SIZE.0 - legend_width);

    if input.log_scale {
        draw_log(&chart_area, input).map_err(e)?;
    } else {
        draw_linear(&chart_area, input).map_err(e)?;
    }

    let font = font.pos(Pos::new(HPos::Left, VPos::Center));
    for (row, (text, swatch)) in entries.iter().enumerate() {
        let y = 30 + row as i32 * LEGEND_ROW;
        match *swatch {
            Swatch::Line(c) => legend_area
                .draw(&PathElement::new(
                    vec![(8, y), (36, y)],
                    c.stroke_width(LINE_WIDTH + 1),
                ))
                .map_err(e)?,
            Swatch::Shade => legend_area
                .draw(&Rectangle::new([(8, y - 9), (36, y + 9)], SHADE.filled()))
                .map_err(e)?,
        }
        legend_area
            .draw(&Text::new(text.as_str(), (46, y), font.clone()))
            .map_err(e)?;
    }
    Ok(())
}

/// Time axis: (seconds per unit, unit, end of the axis, end of the start-up) in that unit.
fn time_axis(input: &PlotInput<'_>) -> (f64, &'static str, f64, f64) {
    let t_max = input
        .lines
        .iter()
        .flat_map(|(_, p)| p.last().map(|x| x.0))
        .fold(1.0, f64::max);
    let (per, unit) = time_unit(t_max);
    (per, unit, t_max / per, input.stats_start / per)
}

fn draw_linear<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    input: &PlotInput<'_>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (t_per, t_unit, x_end, stats_x) = time_axis(input);
    let (lo, hi) = y_range(&input.lines, input.stats_start, false);
    let (per, unit) = offset_unit(lo.abs().max(hi.abs()));
    let (lo, hi) = (lo / per, hi / per);
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(110)
        .build_cartesian_2d(0.0..x_end, lo..hi)?;
    let fmt = |v: &f64| tick(*v);
    chart
        .configure_mesh()
        .x_desc(format!("time ({t_unit})"))
        .y_desc(format!("true offset ({unit})"))
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .axis_desc_style(("sans-serif", DESC_FONT))
        .label_style(("sans-serif", TICK_FONT))
        .draw()?;
    if stats_x > 0.0 {
        chart.draw_series([Rectangle::new([(0.0, lo), (stats_x, hi)], SHADE.filled())])?;
    }
    for (i, (_, pts)) in input.lines.iter().enumerate() {
        let style = PALETTE[i % PALETTE.len()].stroke_width(LINE_WIDTH);
        let scaled: Vec<(f64, f64)> = pts.iter().map(|&(t, y)| (t / t_per, y / per)).collect();
        for piece in clip(&scaled, lo, hi) {
            chart.draw_series(LineSeries::new(piece, style))?;
        }
    }
    Ok(())
}

fn draw_log<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    input: &PlotInput<'_>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (t_per, t_unit, x_end, stats_x) = time_axis(input);
    let (lo, hi) = y_range(&input.lines, input.stats_start, true);
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(110)
        .build_cartesian_2d(0.0..x_end, (lo..hi).log_scale())?;
    let x_fmt = |v: &f64| tick(*v);
    let y_fmt = |v: &f64| with_unit(*v);
    chart
        .configure_mesh()
        .x_desc(format!("time ({t_unit})"))
        .y_desc("|true offset|")
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .axis_desc_style(("sans-serif", DESC_FONT))
        .label_style(("sans-serif", TICK_FONT))
        .draw()?;
    if stats_x > 0.0 {
        chart.draw_series([Rectangle::new([(0.0, lo), (stats_x, hi)], SHADE.filled())])?;
    }
    // Cut in log10 space, where the axis is straight.
    let (log_lo, log_hi) = (lo.log10(), hi.log10());
    for (i, (_, pts)) in input.lines.iter().enumerate() {
        let style = PALETTE[i % PALETTE.len()].stroke_width(LINE_WIDTH);
        let logged: Vec<(f64, f64)> = pts
            .iter()
            .map(|&(t, y)| (t / t_per, y.abs().max(1e-300).log10()))
            .collect();
        for piece in clip(&logged, log_lo, log_hi) {
            chart.draw_series(LineSeries::new(
                piece.into_iter().map(|(t, l)| (t, 10f64.powf(l))),
                style,
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 h run sampled every 10 s: 100 ms off at the start, settling within 10 min to a
    /// ±20 µs wobble.
    fn settling() -> Vec<(f64, f64)> {
        (0..=1440)
            .map(|k| {
                let t = k as f64 * 10.0;
                let start = 0.1 * (-t / 60.0).exp();
                (t, start + 20e-6 * (t / 300.0).sin())
            })
            .collect()
    }

    #[test]
    fn offset_axis_fits_the_statistics_window() {
        let pts = settling();
        let lines = [("a", pts.as_slice())];
        let (lo, hi) = y_range(&lines, 600.0, false);
        assert!(lo < -19e-6 && hi > 19e-6, "{lo} {hi}");
        assert!(lo > -30e-6 && hi < 30e-6, "{lo} {hi}");
        let (lo, hi) = y_range(&lines, 600.0, true);
        assert!(hi > 19e-6 && hi < 100e-6, "{hi}");
        assert!(lo > 0.0 && lo < 1e-6, "{lo}");
        // No statistics window: the whole run.
        let (_, hi) = y_range(&lines, 0.0, false);
        assert!(hi > 0.1, "{hi}");
    }

    #[test]
    fn long_runs_are_labelled_in_hours() {
        assert_eq!(time_unit(35.0).1, "s");
        assert_eq!(time_unit(600.0).1, "s");
        assert_eq!(time_unit(3600.0).1, "min");
        assert_eq!(time_unit(4.0 * 3600.0).1, "h");
        assert_eq!(time_unit(86_400.0).1, "h");
        assert_eq!(time_unit(10.0 * 86_400.0).1, "d");
        assert_eq!(human(600.0), "10 min");
        assert_eq!(human(7200.0), "2 h");
        assert_eq!(tick(2000.0), "2000");
        assert_eq!(tick(-0.5), "-0.5");
        assert_eq!(tick(-0.00001), "0");
        assert_eq!(with_unit(1e-5), "10 µs");
        assert_eq!(with_unit(1e-9), "1 ns");
    }

    #[test]
    fn lines_are_cut_at_the_edges_of_the_band() {
        let pts = [(0.0, 5.0), (1.0, 0.0), (2.0, 0.5), (3.0, -5.0), (4.0, -4.0)];
        let pieces = clip(&pts, -1.0, 1.0);
        assert_eq!(pieces.len(), 1, "{pieces:?}");
        let p = &pieces[0];
        assert_eq!(p.first(), Some(&(0.8, 1.0)));
        assert_eq!(p[1..3], [(1.0, 0.0), (2.0, 0.5)]);
        assert_eq!(p.last(), Some(&(2.2727272727272725, -1.0)));
        // In and out and in again: two pieces; wholly outside: none.
        let pts = [(0.0, 0.0), (1.0, 3.0), (2.0, 0.0)];
        assert_eq!(clip(&pts, -1.0, 1.0).len(), 2);
        assert!(clip(&[(0.0, 3.0), (1.0, 4.0)], -1.0, 1.0).is_empty());
        assert_eq!(clip(&[(0.0, 0.5)], -1.0, 1.0), vec![vec![(0.0, 0.5)]]);
    }

    #[test]
    fn plot_of_a_long_settling_run_reads_well() {
        let pts = settling();
        let input = PlotInput {
            title: "settling",
            lines: vec![("a", pts.as_slice()), ("b", pts.as_slice())],
            log_scale: false,
            stats_start: 600.0,
        };
        let svg = String::from_utf8(render(PlotFormat::Svg, &input).unwrap()).unwrap();
        for needle in [
            "time (h)",
            "true offset (µs)",
            "start-up: first 10 min",
            "#1F77B4",
            "#FF7F0E",
        ] {
            assert!(svg.contains(needle), "{needle} missing");
        }
        let log = PlotInput {
            log_scale: true,
            ..input
        };
        let png = render(PlotFormat::Png, &log).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let svg = String::from_utf8(render(PlotFormat::Svg, &log).unwrap()).unwrap();
        assert!(svg.contains("10 µs"), "decades labelled with their unit");
    }

    #[test]
    fn plot_format_comes_from_the_extension() {
        assert_eq!(
            PlotFormat::of(Path::new("a/b.SVG")).unwrap(),
            PlotFormat::Svg
        );
        assert_eq!(PlotFormat::of(Path::new("b.png")).unwrap(), PlotFormat::Png);
        assert!(matches!(
            PlotFormat::of(Path::new("b.pdf")),
            Err(PlotError::Format(_))
        ));
        assert!(PlotFormat::of(Path::new("png")).is_err());
    }
}
