//! `surelink demo --plot FILE.svg`: the latency timeline of the demo's
//! streams (one point per delivered message) with a vertical marker, named,
//! at every event of the story (cut, failover, crash, restart).
//!
//! [`super::run`] collects the points and markers (seconds since the demo
//! started) and calls [`write_svg`] once at the end.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// A named moment of the story.
#[derive(Debug, Clone)]
pub(super) struct Marker {
    /// Seconds since the demo started.
    pub at_s: f64,
    /// What happened (`cut`, `failover`, `crash`, `restart`).
    pub label: String,
}

/// Writes the timeline: `points` are (seconds since start, latency ms).
pub(super) fn write_svg(
    path: &Path,
    points: &[(f64, f64)],
    markers: &[Marker],
) -> anyhow::Result<()> {
    let end = points
        .iter()
        .map(|p| p.0)
        .chain(markers.iter().map(|m| m.at_s))
        .fold(1.0_f64, f64::max);
    let top = points.iter().map(|p| p.1).fold(1.0_f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("surelink demo: message latency", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end * 1.02, 0.0..top)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| draw(&e))?;
    chart
        .draw_series(
            points
                .iter()
                .map(|&(t, ms)| Circle::new((t, ms), 1, BLUE.mix(0.5).filled())),
        )
        .map_err(|e| draw(&e))?;
    for (i, marker) in markers.iter().enumerate() {
        chart
            .draw_series(LineSeries::new(
                [(marker.at_s, 0.0), (marker.at_s, top)],
                RED.stroke_width(1),
            ))
            .map_err(|e| draw(&e))?;
        // Stagger the labels so that close events stay readable.
        let y = top * (0.95 - 0.07 * (i % 4) as f64);
        chart
            .draw_series(std::iter::once(Text::new(
                marker.label.clone(),
                (marker.at_s, y),
                ("sans-serif", 13).into_font().color(&RED),
            )))
            .map_err(|e| draw(&e))?;
    }
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}
