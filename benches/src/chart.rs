//! PNG charts of the report (plotters' bitmap backend). Text is drawn with
//! the DejaVu Sans font committed in `benches/assets/` through plotters'
//! `ab_glyph` backend, so no system font and no fontconfig are needed.
#![forbid(unsafe_code)]

use std::error::Error;
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::echo::Result;
use crate::report::{Case, Group, bytes_per_s, order, rate_label, size_label, time_label};

/// DejaVu Sans (Bitstream Vera license, `benches/assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 600);
/// Width of the legend on the right.
const LEGEND: u32 = 210;

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| "the committed font file is not a valid font".into());
    });
    result
}

/// Series of one chart: (contender, points (size, value)).
type Series = Vec<(String, Vec<(f64, f64)>)>;

/// Round-trip time (p50 of the HDR histogram) by message size, one line per
/// contender; `false` if `placement` has no results.
pub fn latency(g: &Group, placement: &str, title: &str, path: &Path) -> Result<bool> {
    draw(
        path,
        &format!("Round trip by message size, {title} (lower is better)"),
        "round trip (p50)",
        &series(g, placement, Case::typical_ns),
        &g.sizes(placement),
        &|v| time_label(v),
    )
}

/// Throughput (payload bytes/s at criterion's median) by message size.
pub fn throughput(g: &Group, placement: &str, title: &str, path: &Path) -> Result<bool> {
    draw(
        path,
        &format!("One-way throughput by message size, {title} (higher is better)"),
        "payload bytes/s (median)",
        &series(g, placement, bytes_per_s),
        &g.sizes(placement),
        &|v| rate_label(v),
    )
}

/// One line per contender of `placement`: (size index, `value`).
fn series(g: &Group, placement: &str, value: fn(&Case) -> f64) -> Series {
    let sizes = g.sizes(placement);
    g.contenders(placement)
        .into_iter()
        .map(|c| {
            let pts = sizes
                .iter()
                .enumerate()
                .filter_map(|(i, &s)| Some((i as f64, value(g.get(placement, &c, s)?))))
                .collect();
            (c, pts)
        })
        .collect()
}

fn draw(
    path: &Path,
    caption: &str,
    y_desc: &str,
    series: &Series,
    sizes: &[u64],
    y_label: &dyn Fn(f64) -> String,
) -> Result<bool> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if all.is_empty() {
        return Ok(false);
    }
    register_font()?;
    if let Err(e) = plot(path, caption, y_desc, series, sizes, &all, y_label) {
        return Err(format!("drawing {}: {e}", path.display()).into());
    }
    Ok(true)
}

fn plot(
    path: &Path,
    caption: &str,
    y_desc: &str,
    series: &Series,
    sizes: &[u64],
    all: &[(f64, f64)],
    y_label: &dyn Fn(f64) -> String,
) -> std::result::Result<(), Box<dyn Error>> {
    let min = |f: fn(&(f64, f64)) -> f64| all.iter().map(f).fold(f64::INFINITY, f64::min);
    let max = |f: fn(&(f64, f64)) -> f64| all.iter().map(f).fold(0.0, f64::max);
    // Sizes are evenly spaced powers of two: one tick each, by index.
    let (x0, x1) = (-0.3, sizes.len() as f64 - 0.7);
    let (y0, y1) = (min(|p| p.1) / 2.0, max(|p| p.1) * 2.0);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot_area, legend) = root.split_horizontally(SIZE.0 - LEGEND);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(caption, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(85)
        .build_cartesian_2d(x0..x1, (y0..y1).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("message size")
        .y_desc(y_desc)
        .x_labels(sizes.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            match sizes.get(i as usize) {
                Some(&s) if (x - i).abs() < 0.01 && i >= 0.0 => size_label(s),
                _ => String::new(),
            }
        })
        .y_label_formatter(&|y| y_label(*y))
        .label_style((FAMILY, 13))
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        // The same colour for a contender in every chart.
        let color = Palette99::pick(order(name)).to_rgba();
        let width = if name.starts_with("shm-") || name.starts_with("gen-") {
            3
        } else {
            1
        };
        chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        let y = 40 + 24 * i as i32;
        legend.draw(&PathElement::new(
            vec![(10, y), (40, y)],
            color.stroke_width(width),
        ))?;
        legend.draw(&Circle::new((25, y), 4, color.filled()))?;
        legend.draw(&Text::new(name.clone(), (48, y - 8), (FAMILY, 14)))?;
    }
    root.present()?;
    Ok(())
}
