//! The SVG chart of `omnirelay bench --svg`: durable-publish throughput
//! against batch size, ours beside the raw baseline.

use std::fmt::Write as _;

use crate::BenchRecord;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;

/// The `durable-publish-N` records as (N, baseline, candidate, ratio), by N.
fn batch_points(records: &[BenchRecord]) -> Vec<(u64, f64, f64, f64)> {
    let mut points: Vec<(u64, f64, f64, f64)> = records
        .iter()
        .filter_map(|r| {
            let size = r.name.strip_prefix("durable-publish-")?.parse().ok()?;
            Some((size, r.baseline, r.candidate, r.ratio))
        })
        .filter(|(_, b, c, _)| *b > 0.0 && *c > 0.0)
        .collect();
    points.sort_by_key(|p| p.0);
    points
}

/// `1.2M`, `350k`, `900`.
fn short(value: f64) -> String {
    if value >= 1e6 {
        format!("{}M", trim(value / 1e6))
    } else if value >= 1e3 {
        format!("{}k", trim(value / 1e3))
    } else {
        trim(value)
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.1}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// An SVG chart (log–log) of events per second against batch size for the
/// `durable-publish-N` scenarios: the raw baseline and ours, each of ours
/// labelled with the scenario's ratio (the median of the per-round ratios,
/// as in the table); `None` when fewer than two batch sizes ran.
pub fn render_batch_chart(records: &[BenchRecord]) -> Option<String> {
    let points = batch_points(records);
    if points.len() < 2 {
        return None;
    }
    let sizes: Vec<f64> = points.iter().map(|p| (p.0.max(1) as f64).log2()).collect();
    let (x_min, x_max) = (sizes[0], sizes[sizes.len() - 1]);
    let values = points.iter().flat_map(|p| [p.1, p.2]);
    let low = values.clone().fold(f64::INFINITY, f64::min).log10().floor();
    let high = values.fold(0.0_f64, f64::max).log10().ceil().max(low + 1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |log2: f64| LEFT + (log2 - x_min) / (x_max - x_min).max(1e-9) * plot_w;
    let y = |value: f64| TOP + (high - value.log10()) / (high - low) * plot_h;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{LEFT}" y="22" font-size="14" font-weight="bold">Durable publish (fsync): events/s by batch size</text>
"##
    );
    // Horizontal grid at each power of ten.
    let mut decade = low;
    while decade <= high {
        let value = 10f64.powf(decade);
        let at = y(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            at + 4.0,
            short(value)
        );
        decade += 1.0;
    }
    for (point, log2) in points.iter().zip(&sizes) {
        let at = x(*log2);
        let _ = writeln!(
            svg,
            r##"<line x1="{at:.1}" y1="{TOP}" x2="{at:.1}" y2="{:.1}" stroke="#eeeeee"/><text x="{at:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0,
            point.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">events per batch (log scale)</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let series = [
        ("raw write + fdatasync", "#888888", 1usize),
        ("omnirelay", "#1f6feb", 2usize),
    ];
    for (index, (label, colour, column)) in series.iter().enumerate() {
        let coordinates: Vec<(f64, f64)> = points
            .iter()
            .zip(&sizes)
            .map(|(p, log2)| (x(*log2), y(if *column == 1 { p.1 } else { p.2 })))
            .collect();
        let line: Vec<String> = coordinates
            .iter()
            .map(|(px, py)| format!("{px:.1},{py:.1}"))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline class="{}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
            if *column == 1 {
                "baseline"
            } else {
                "candidate"
            },
            line.join(" ")
        );
        for (px, py) in &coordinates {
            let _ = writeln!(
                svg,
                r##"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{colour}"/>"##
            );
        }
        let legend_y = TOP + 10.0 + index as f64 * 20.0;
        let legend_x = LEFT + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{legend_x:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{label}</text>"##,
            legend_x + 18.0,
            legend_x + 24.0,
            legend_y + 4.0
        );
    }
    for (point, log2) in points.iter().zip(&sizes) {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#1f6feb">×{:.2}</text>"##,
            x(*log2),
            y(point.2) + 18.0,
            point.3
        );
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, baseline: f64, candidate: f64) -> BenchRecord {
        BenchRecord {
            name: name.to_owned(),
            unit: "events/s".to_owned(),
            baseline,
            candidate,
            ratio: candidate / baseline,
            target: 0.7,
            met: candidate / baseline >= 0.7,
        }
    }

    /// The (x, y) points of the polyline of class `class`.
    fn polyline(svg: &str, class: &str) -> Vec<(f64, f64)> {
        let start = svg.find(&format!("class=\"{class}\"")).unwrap();
        let points = &svg[start..];
        let points = &points[points.find("points=\"").unwrap() + 8..];
        points[..points.find('"').unwrap()]
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn batch_sizes_rise_left_to_right_and_faster_is_higher() {
        let records = [
            record("durable-publish-512", 400_000.0, 300_000.0),
            record("json-encode", 9e6, 9e6),
            record("durable-publish-1", 4_000.0, 3_500.0),
            record("durable-publish-4096", 900_000.0, 700_000.0),
            record("durable-publish-64", 100_000.0, 80_000.0),
        ];
        let svg = render_batch_chart(&records).unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        let baseline = polyline(&svg, "baseline");
        let candidate = polyline(&svg, "candidate");
        assert_eq!((baseline.len(), candidate.len()), (4, 4), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 8);
        assert!(
            baseline.windows(2).all(|w| w[0].0 < w[1].0),
            "by batch size"
        );
        assert!(
            baseline.windows(2).all(|w| w[0].1 > w[1].1),
            "more throughput is drawn higher (smaller y)"
        );
        for (b, c) in baseline.iter().zip(&candidate) {
            assert_eq!(b.0, c.0);
            assert!(b.1 < c.1, "the faster baseline is above");
        }
        for label in [">1<", ">64<", ">512<", ">4096<", ">1k<", ">1M<", "×0.75"] {
            assert!(svg.contains(label), "{label} in {svg}");
        }
    }

    #[test]
    fn no_chart_without_two_batch_sizes() {
        assert!(render_batch_chart(&[record("durable-publish-64", 1.0, 1.0)]).is_none());
        assert!(render_batch_chart(&[record("json-encode", 1.0, 1.0)]).is_none());
    }
}
