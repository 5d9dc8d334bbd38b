//! Plots of true offset versus time, one line per node, as SVG or PNG (plotters).
//!
//! Text needs a TrueType font: DejaVu Sans (Debian's fonts-dejavu-core) or Liberation Sans is
//! loaded from the usual system paths and registered with plotters' ab_glyph renderer.

use plotters::coord::Shift;
use plotters::prelude::*;
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
    /// Drawing or writing failed.
    #[error("drawing {path}: {message}")]
    Draw {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> Result<(), PlotError> {
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
}

/// Draws `input` into `path` (.svg or .png).
pub fn plot(path: &Path, input: &PlotInput<'_>) -> Result<(), PlotError> {
    let name = path.display().to_string();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    register_font()?;
    let size = (1200, 700);
    let err = |e: String| PlotError::Draw {
        path: name.clone(),
        message: e,
    };
    match ext.as_deref() {
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw(&root, input).map_err(err)?;
            root.present().map_err(|e| err(e.to_string()))
        }
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw(&root, input).map_err(err)?;
            root.present().map_err(|e| err(e.to_string()))
        }
        _ => Err(PlotError::Format(name)),
    }
}

/// The unit the offset axis is labelled in, from the largest |offset|.
fn unit(max: f64) -> (f64, &'static str) {
    if max >= 1.0 {
        (1.0, "s")
    } else if max >= 1e-3 {
        (1e3, "ms")
    } else if max >= 1e-6 {
        (1e6, "µs")
    } else {
        (1e9, "ns")
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    input: &PlotInput<'_>,
) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let t_max = input
        .lines
        .iter()
        .flat_map(|(_, p)| p.last().map(|x| x.0))
        .fold(1.0, f64::max);
    let max = input
        .lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1.abs()))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9);
    let caption = (input.title, ("sans-serif", 22));
    let palette = |i: usize| Palette99::pick(i).to_rgba();
    if input.log_scale {
        let floor = 1e-9;
        let mut chart = ChartBuilder::on(root)
            .caption(caption.0, caption.1)
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..t_max, (floor..max * 2.0).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("|true offset| (s)")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(e)?;
        for (i, (name, pts)) in input.lines.iter().enumerate() {
            let color = palette(i);
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|&(t, y)| (t, y.abs().max(floor))),
                    color.stroke_width(1),
                ))
                .map_err(e)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        legend(&mut chart).map_err(e)
    } else {
        let (scale, unit) = unit(max);
        let lim = max * scale * 1.05;
        let mut chart = ChartBuilder::on(root)
            .caption(caption.0, caption.1)
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..t_max, -lim..lim)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc(format!("true offset ({unit})"))
            .draw()
            .map_err(e)?;
        for (i, (name, pts)) in input.lines.iter().enumerate() {
            let color = palette(i);
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|&(t, y)| (t, y * scale)),
                    color.stroke_width(1),
                ))
                .map_err(e)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        legend(&mut chart).map_err(e)
    }
}

fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
}
