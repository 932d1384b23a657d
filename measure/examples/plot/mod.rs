//! The picture of `restarts.rs --plot PATH.svg`: requests answered and lost
//! per 100 ms over a run's restarts, one panel per server, restarts marked.
//! SVG only, with plotters' own text layout: no system fonts, no C.

use std::{error::Error, path::Path, time::Duration};

use plotters::prelude::*;

/// One panel: the requests of one row of the run, over time.
pub(crate) struct Panel {
    pub(crate) title: String,
    /// When each request ended, from the start of the load, and whether it
    /// was answered 200.
    pub(crate) requests: Vec<(Duration, bool)>,
    /// When each old server was told to stop, from the start of the load.
    pub(crate) restarts: Vec<Duration>,
    /// When the load was told to stop, from its start.
    pub(crate) until: Duration,
}

/// The width of a bin.
const BIN: Duration = Duration::from_millis(100);
const FONT: &str = "sans-serif";

/// Requests answered and lost in each bin.
struct Bins {
    answered: Vec<u32>,
    lost: Vec<u32>,
}

impl Bins {
    /// `panel`'s requests in the whole bins before the load was told to
    /// stop: a bin cut short would show a drop that did not happen.
    fn of(panel: &Panel) -> Self {
        let index = |at: &Duration| (at.as_nanos() / BIN.as_nanos()) as usize;
        let len = index(&panel.until);
        let mut bins = Bins {
            answered: vec![0; len],
            lost: vec![0; len],
        };
        for (at, served) in &panel.requests {
            let bins = if *served {
                &mut bins.answered
            } else {
                &mut bins.lost
            };
            if let Some(bin) = bins.get_mut(index(at)) {
                *bin += 1;
            }
        }
        bins
    }

    /// The start of bin `i`, in seconds.
    fn start(i: usize) -> f64 {
        i as f64 * BIN.as_secs_f64()
    }
}

/// The axes every panel shares, so that the panels compare at a glance.
struct Axes {
    seconds: f64,
    answered: f64,
    lost: f64,
    /// How high the restart marks go: above the data, below the legend.
    marks: f64,
}

impl Axes {
    fn of(bins: &[Bins]) -> Self {
        let most = |f: fn(&Bins) -> &Vec<u32>| {
            let max = bins.iter().flat_map(f).copied().max().unwrap_or(0);
            f64::from(max)
        };
        let bins_long = bins.iter().map(|b| b.answered.len()).max().unwrap_or(0);
        let answered = most(|b| &b.answered).max(10.0);
        // The top third of each axis is left to the legend.
        Axes {
            seconds: Bins::start(bins_long).max(1.0),
            answered: answered * 1.6,
            lost: (most(|b| &b.lost) * 1.6).ceil().max(5.0),
            marks: answered * 1.1,
        }
    }
}

/// Draws `panels`, one above the other, under `caption`, as an SVG file at
/// `path`.
pub(crate) fn draw(path: &Path, caption: &str, panels: &[Panel]) -> Result<(), Box<dyn Error>> {
    let bins: Vec<Bins> = panels.iter().map(Bins::of).collect();
    let axes = Axes::of(&bins);
    let height = 40 + 340 * u32::try_from(panels.len())?;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(caption, (FONT, 20))?;
    let areas = root.split_evenly((panels.len(), 1));
    for ((area, panel), bins) in areas.iter().zip(panels).zip(&bins) {
        draw_panel(area, panel, bins, &axes)?;
    }
    root.present()?;
    Ok(())
}

/// One panel: answered 200 as a blue line (left axis), lost as red bars
/// (right axis), restarts as orange vertical lines.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    bins: &Bins,
    axes: &Axes,
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let per_bin = format!("per {} ms", BIN.as_millis());
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..axes.seconds, 0.0..axes.answered)?
        .set_secondary_coord(0.0..axes.seconds, 0.0..axes.lost);
    let whole = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_desc("seconds since the load started")
        .y_desc(format!("answered 200 {per_bin}"))
        .y_label_formatter(&whole)
        .label_style((FONT, 12))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc(format!("lost {per_bin}"))
        // Whole numbers: one label per request while they fit.
        .y_labels((axes.lost as usize + 1).min(11))
        .y_label_formatter(&whole)
        .label_style((FONT, 12))
        .draw()?;

    let restart = RGBColor(230, 120, 0).stroke_width(2);
    let top = axes.marks;
    chart
        .draw_series(panel.restarts.iter().map(|at| {
            let x = at.as_secs_f64();
            PathElement::new([(x, 0.0), (x, top)], restart)
        }))?
        .label("restart: the old server is told to stop")
        .legend(move |(x, y)| PathElement::new([(x + 10, y - 6), (x + 10, y + 6)], restart));

    let answered = bins.answered.iter().enumerate();
    chart
        .draw_series(LineSeries::new(
            answered.map(|(i, &n)| (Bins::start(i) + BIN.as_secs_f64() / 2.0, f64::from(n))),
            BLUE.stroke_width(2),
        ))?
        .label(format!("answered 200 {per_bin} (left axis)"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));

    let lost = bins.lost.iter().enumerate().filter(|(_, &n)| n > 0);
    chart
        .draw_secondary_series(lost.map(|(i, &n)| {
            let bar = [(Bins::start(i), 0.0), (Bins::start(i + 1), f64::from(n))];
            Rectangle::new(bar, RED.filled())
        }))?
        .label(format!("lost {per_bin}: 502, 503, failed (right axis)"))
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], RED.filled()));

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
