//! The SVG chart of a run: delivery latency percentiles (top) and live sessions (bottom) per
//! second.

use crate::tally::Sample;
use plotters::prelude::*;
use std::path::Path;

/// Draws `timeline` into an SVG file at `path`.
pub fn write(path: &Path, scenario: &str, timeline: &[Sample]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let (top, bottom) = root.split_vertically(340);
    let seconds = timeline.last().map_or(1.0, |sample| sample.second).max(1.0);
    let latency_max = timeline
        .iter()
        .map(|sample| sample.p99_ms)
        .fold(1.0_f64, f64::max)
        * 1.1;
    let mut latency = ChartBuilder::on(&top)
        .caption(
            format!("{scenario}: delivery latency per second"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds, 0.0..latency_max)
        .map_err(chart_error)?;
    latency
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(chart_error)?;
    for (name, color, pick) in [
        ("p50", BLUE, (|s: &Sample| s.p50_ms) as fn(&Sample) -> f64),
        ("p99", RED, |s: &Sample| s.p99_ms),
    ] {
        latency
            .draw_series(LineSeries::new(
                timeline
                    .iter()
                    .filter(|sample| sample.deliveries > 0)
                    .map(|sample| (sample.second, pick(sample))),
                color.stroke_width(2),
            ))
            .map_err(chart_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    latency
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(chart_error)?;
    let live_max = timeline
        .iter()
        .map(|sample| sample.live)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut live = ChartBuilder::on(&bottom)
        .caption("live sessions", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds, 0.0..live_max)
        .map_err(chart_error)?;
    live.configure_mesh()
        .x_desc("seconds")
        .y_desc("sessions")
        .draw()
        .map_err(chart_error)?;
    live.draw_series(LineSeries::new(
        timeline
            .iter()
            .map(|sample| (sample.second, sample.live as f64)),
        GREEN.stroke_width(2),
    ))
    .map_err(chart_error)?;
    root.present().map_err(chart_error)?;
    println!("chart written to {}", path.display());
    Ok(())
}

fn chart_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {error}")
}

/// One point of a soak run's timeline, as scraped from the nodes' `/metrics`.
pub struct SoakPoint {
    /// Seconds since the start.
    pub second: f64,
    /// Resident memory, MiB.
    pub rss_mib: f64,
    /// Open file descriptors.
    pub open_fds: f64,
    /// Live session actors.
    pub sessions: f64,
    /// Live task and account actors.
    pub other_actors: f64,
    /// Operations queued for account actors.
    pub mailbox_depth: f64,
}

/// A line of a soak panel: its name, colour and what it plots.
type Line = (&'static str, RGBColor, fn(&SoakPoint) -> f64);

/// A soak panel: where it is drawn, its caption and its lines.
type Panel<'a, 'b> = (
    &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    &'static str,
    Vec<Line>,
);

/// Draws a soak run: resident memory and open descriptors (top), live actors and queue depth
/// (bottom), over time.
pub fn write_soak(path: &Path, points: &[SoakPoint]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let (top, bottom) = root.split_vertically(320);
    let seconds = points.last().map_or(1.0, |point| point.second).max(1.0);
    let panels: [Panel<'_, '_>; 2] = [
        (
            &top,
            "soak: resident memory (MiB) and open descriptors",
            vec![
                ("RSS MiB", BLUE, |p: &SoakPoint| p.rss_mib),
                ("open fds", RED, |p: &SoakPoint| p.open_fds),
            ],
        ),
        (
            &bottom,
            "soak: live actors and queue depth",
            vec![
                ("sessions", GREEN, |p: &SoakPoint| p.sessions),
                ("task + account actors", MAGENTA, |p: &SoakPoint| {
                    p.other_actors
                }),
                ("ledger mailbox depth", BLACK, |p: &SoakPoint| {
                    p.mailbox_depth
                }),
            ],
        ),
    ];
    for (area, caption, series) in panels {
        let max = points
            .iter()
            .flat_map(|point| series.iter().map(move |(_, _, pick)| pick(point)))
            .fold(1.0_f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..seconds, 0.0..max)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .draw()
            .map_err(chart_error)?;
        for (name, color, pick) in series {
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|point| (point.second, pick(point))),
                    color.stroke_width(2),
                ))
                .map_err(chart_error)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(chart_error)?;
    }
    root.present().map_err(chart_error)?;
    println!("chart written to {}", path.display());
    Ok(())
}

/// A line of a ramp chart: its name, colour and value.
type Series = (&'static str, RGBColor, fn(&RampPoint) -> f64);

/// One step of a charge ramp.
#[derive(Debug, Clone)]
pub struct RampPoint {
    /// Offered charges per second.
    pub offered: f64,
    /// Accepted (2xx) per second.
    pub accepted: f64,
    /// Shed (503, 429) per second.
    pub shed: f64,
    /// Other failures (5xx, transport errors) per second.
    pub failed: f64,
    /// Latency of the accepted charges.
    pub p50_ms: f64,
    /// Latency of the accepted charges.
    pub p95_ms: f64,
    /// Latency of the accepted charges.
    pub p99_ms: f64,
}

/// The knee of a ramp: rates (top) and the accepted charges' latency (bottom) against the offered
/// rate.
pub fn write_ramp(path: &Path, points: &[RampPoint]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let (top, bottom) = root.split_vertically(320);
    let offered_max = points.iter().map(|p| p.offered).fold(1.0_f64, f64::max) * 1.05;
    let rate_max = points
        .iter()
        .map(|p| p.accepted.max(p.shed).max(p.offered))
        .fold(1.0_f64, f64::max)
        * 1.1;
    ramp_panel(
        &top,
        ("charge ramp: answers per second", "per second"),
        (offered_max, rate_max),
        points,
        [
            ("accepted", GREEN, |p| p.accepted),
            ("shed (503/429)", BLUE, |p| p.shed),
            ("failed (5xx, errors)", RED, |p| p.failed),
        ],
    )?;
    let latency_max = points.iter().map(|p| p.p99_ms).fold(1.0_f64, f64::max) * 1.1;
    ramp_panel(
        &bottom,
        ("latency of accepted charges", "ms"),
        (offered_max, latency_max),
        points,
        [
            ("p50", BLUE, |p| p.p50_ms),
            ("p95", MAGENTA, |p| p.p95_ms),
            ("p99", RED, |p| p.p99_ms),
        ],
    )?;
    root.present().map_err(chart_error)?;
    println!("chart written to {}", path.display());
    Ok(())
}

/// One panel of the ramp chart: `series` against the offered rate.
fn ramp_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    (caption, y_desc): (&str, &str),
    (x_max, y_max): (f64, f64),
    points: &[RampPoint],
    series: [Series; 3],
) -> anyhow::Result<()> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("offered charges/s")
        .y_desc(y_desc)
        .draw()
        .map_err(chart_error)?;
    for (name, color, pick) in series {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.offered, pick(p))),
                color.stroke_width(2),
            ))
            .map_err(chart_error)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(chart_error)
}
