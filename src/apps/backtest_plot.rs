//! The backtest's picture: the actual series over the evaluated span, each window's forecast
//! with its 95 % interval, and the actual spikes marked. A PNG drawn by plotters with an
//! embedded font (DejaVu Sans Mono, assets/fonts), so no system font is needed.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::forecast::backtest::Report;
use crate::forecast::series::Series;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing {path}: {message}")]
    Draw { path: String, message: String },
}

/// Draws `report` over `series` into a `width`×`height` PNG at `path`.
pub fn plot(series: &Series, report: &Report, path: &Path, width: u32, height: u32) -> Result<(), PlotError> {
    let p = path.display().to_string();
    let err = |e: &dyn std::fmt::Display| PlotError::Draw { path: p.clone(), message: e.to_string() };
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| err(&"the embedded font is not a font"))?;
    let (Some(first), Some(last)) = (report.per_window.first(), report.per_window.last()) else {
        return Err(err(&"the report has no windows"));
    };
    let step = series.step_ms;
    let per_day = (86_400_000 / step.max(1)).max(1) as usize;
    // A day of context before the first cutoff, to the end of the last horizon.
    let from = first.origin.saturating_sub(per_day);
    let to = (last.origin + last.actual.len()).min(series.values.len());
    let hours = |i: usize| (i as i64 - from as i64) as f64 * step as f64 / 3_600_000.0;
    let top = series.values[from..to].iter().copied().chain(report.per_window.iter().flat_map(|w| w.bands.iter().map(|b| b[3]))).fold(1.0f64, f64::max) * 1.08;
    let t0 = series.time_of(from);

    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "{} backtest: {} windows, {}-step horizon at {} (MAE {:.1}, 95 % coverage {:.0} %)",
        report.family,
        report.windows,
        report.horizon_steps,
        report.resolution,
        report.model.mae,
        report.coverage_95 * 100.0
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..hours(to), 0.0..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(format!("hours from {}", &t0.to_string()[..16]))
        .y_desc(format!("requests per {}", report.resolution))
        .x_label_formatter(&|h| format!("{h:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;

    let band = RGBColor(70, 130, 220).mix(0.18);
    for w in &report.per_window {
        let upper: Vec<(f64, f64)> = w.bands.iter().enumerate().map(|(k, b)| (hours(w.origin + k), b[3])).collect();
        let lower: Vec<(f64, f64)> = w.bands.iter().enumerate().rev().map(|(k, b)| (hours(w.origin + k), b[2])).collect();
        chart.draw_series(std::iter::once(Polygon::new(upper.into_iter().chain(lower).collect::<Vec<_>>(), band.filled()))).map_err(|e| err(&e))?;
    }
    chart
        .draw_series(LineSeries::new((from..to).map(|i| (hours(i), series.values[i])), BLACK.stroke_width(1)))
        .map_err(|e| err(&e))?
        .label("actual")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    let blue = RGBColor(30, 90, 200);
    for (i, w) in report.per_window.iter().enumerate() {
        let s = chart
            .draw_series(LineSeries::new(w.predicted.iter().enumerate().map(|(k, p)| (hours(w.origin + k), *p)), blue.stroke_width(2)))
            .map_err(|e| err(&e))?;
        if i == 0 {
            s.label("forecast (95 % interval shaded)").legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], blue.stroke_width(2)));
        }
    }
    let spikes: Vec<(f64, f64)> = report
        .per_window
        .iter()
        .filter(|w| w.spike)
        .map(|w| {
            let k = w.actual.iter().position(|a| *a > report.spikes.threshold * w.baseline).unwrap_or(0);
            (hours(w.origin + k), w.actual[k])
        })
        .collect();
    if !spikes.is_empty() {
        chart
            .draw_series(spikes.into_iter().map(|p| TriangleMarker::new(p, 7, RED.filled())))
            .map_err(|e| err(&e))?
            .label("actual spike")
            .legend(|(x, y)| TriangleMarker::new((x + 8, y), 6, RED.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
