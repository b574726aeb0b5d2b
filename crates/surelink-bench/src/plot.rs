//! The latency plot: per system, the distribution of one-way latency at
//! one loss rate, as a CDF (left) and, to show the tail, the fraction of
//! messages slower than x on a log scale (right). SVG, so no fonts or
//! system libraries are needed.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// One curve: a system's name and its latencies in µs.
pub struct Curve<'a> {
    /// Legend label.
    pub label: String,
    /// The latencies.
    pub histogram: &'a Histogram<u64>,
}

/// Quantiles at which curves are sampled: dense in the body, then
/// logarithmically towards the maximum.
fn quantiles() -> Vec<f64> {
    let mut qs: Vec<f64> = (0..=198).map(|i| f64::from(i) * 0.005).collect();
    let mut k = 2.0;
    while k <= 4.0 + 1e-9 {
        qs.push(1.0 - 10f64.powf(-k));
        k += 0.05;
    }
    qs.push(1.0);
    qs
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// Writes the plot to `path` (SVG).
pub fn latency(path: &Path, title: &str, curves: &[Curve<'_>]) -> Result<(), String> {
    let curves: Vec<_> = curves.iter().filter(|c| !c.histogram.is_empty()).collect();
    if curves.is_empty() {
        return Err("no latency samples to plot".into());
    }
    let qs = quantiles();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    // Left panel up to the largest p99.9, right panel up to the largest max.
    let x_body = curves
        .iter()
        .map(|c| ms(c.histogram, 0.999))
        .fold(1.0, f64::max)
        * 1.1;
    let x_tail = curves
        .iter()
        .map(|c| c.histogram.max() as f64 / 1000.0)
        .fold(1.0, f64::max)
        * 1.05;

    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 18))
        .map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(550);

    let mut cdf = ChartBuilder::on(&left)
        .caption("CDF of one-way latency", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x_body, 0f64..1f64)
        .map_err(|e| e.to_string())?;
    cdf.configure_mesh()
        .x_desc("one-way latency (ms)")
        .y_desc("fraction of messages ≤ x")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = qs
            .iter()
            .map(|&q| (ms(c.histogram, q).min(x_body), q))
            .collect();
        cdf.draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(c.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    cdf.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;

    let mut tail = ChartBuilder::on(&right)
        .caption("tail: fraction slower than x (log)", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_tail, (1e-4f64..1f64).log_scale())
        .map_err(|e| e.to_string())?;
    tail.configure_mesh()
        .x_desc("one-way latency (ms)")
        .y_desc("fraction of messages > x")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = qs
            .iter()
            .filter(|&&q| q < 1.0)
            .map(|&q| (ms(c.histogram, q), (1.0 - q).max(1e-4)))
            .collect();
        tail.draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
