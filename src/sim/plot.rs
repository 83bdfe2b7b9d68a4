//! The comparison as an SVG chart, written by hand: three stacked panels over
//! a shared time axis (offered load, replicas per policy, p95 latency per
//! policy on a log scale with the SLO marked), with a legend.

use std::fmt::Write as _;

use super::report::Series;

const WIDTH: f64 = 960.0;
const PANEL_H: f64 = 200.0;
const GAP: f64 = 56.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 48.0;
/// Colour per policy in the order given; the load line is grey.
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// One policy's series under its name.
pub struct Line<'a> {
    pub policy: &'a str,
    pub series: &'a Series,
}

/// Renders the chart. `title` heads it; `slo_s` draws a dashed line on the
/// latency panel.
pub fn svg(title: &str, lines: &[Line<'_>], slo_s: f64) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let height = TOP + 3.0 * PANEL_H + 2.0 * GAP + 56.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let Some(first) = lines.first() else {
        out.push_str("</svg>\n");
        return out;
    };
    let bin_s = first.series.bin_s;
    let points = first.series.offered_rps.len();
    let span_h = (points as f64 * bin_s / 3600.0).max(1e-9);
    let x = |i: usize| LEFT + plot_w * ((i as f64 + 0.5) * bin_s / 3600.0) / span_h;

    // Panel 1: offered load (the same for every policy).
    let top1 = TOP;
    let max_rps = nice_max(first.series.offered_rps.iter().copied().fold(0.0, f64::max));
    let y1 = |v: f64| top1 + PANEL_H * (1.0 - v / max_rps);
    frame(&mut out, top1, "offered load (requests/s)", span_h, plot_w);
    y_ticks_linear(&mut out, max_rps, &y1);
    polyline(
        &mut out,
        first
            .series
            .offered_rps
            .iter()
            .enumerate()
            .map(|(i, v)| (x(i), y1(*v))),
        "#555555",
    );
    legend_entry(&mut out, 0, "offered load", "#555555", top1);

    // Panel 2: replicas per policy.
    let top2 = TOP + PANEL_H + GAP;
    let max_rep = nice_max(
        lines
            .iter()
            .flat_map(|l| l.series.replicas.iter().copied())
            .fold(1.0, f64::max),
    );
    let y2 = |v: f64| top2 + PANEL_H * (1.0 - v / max_rep);
    frame(
        &mut out,
        top2,
        "replicas (starting, ready or draining)",
        span_h,
        plot_w,
    );
    y_ticks_linear(&mut out, max_rep, &y2);
    for (k, l) in lines.iter().enumerate() {
        let c = COLOURS[k % COLOURS.len()];
        polyline(
            &mut out,
            l.series
                .replicas
                .iter()
                .enumerate()
                .map(|(i, v)| (x(i), y2(*v))),
            c,
        );
        legend_entry(&mut out, k, l.policy, c, top2);
    }

    // Panel 3: p95 latency per policy, log scale.
    let top3 = TOP + 2.0 * (PANEL_H + GAP);
    let all = lines
        .iter()
        .flat_map(|l| l.series.p95_s.iter().flatten().copied())
        .chain([slo_s]);
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let lo_exp = lo.max(1e-3).log10().floor();
    let hi_exp = hi.max(lo.max(1e-3) * 10.0).log10().ceil().max(lo_exp + 1.0);
    let y3 = |v: f64| {
        let f = (v.max(1e-3).log10() - lo_exp) / (hi_exp - lo_exp);
        top3 + PANEL_H * (1.0 - f.clamp(0.0, 1.0))
    };
    frame(
        &mut out,
        top3,
        "p95 latency (s, log scale) of requests arriving then",
        span_h,
        plot_w,
    );
    let mut e = lo_exp;
    while e <= hi_exp {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(e);
            if v > 10f64.powf(hi_exp) * 1.0001 {
                break;
            }
            tick_label(&mut out, y3(v), &trim_number(v));
        }
        e += 1.0;
    }
    let ys = y3(slo_s);
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" x2="{:.1}" y1="{ys:.1}" y2="{ys:.1}" stroke="#000" stroke-dasharray="5,4"/><text x="{:.1}" y="{:.1}" font-size="11">SLO {}s</text>"##,
        LEFT + plot_w,
        LEFT + plot_w + 6.0,
        ys + 4.0,
        trim_number(slo_s)
    );
    for (k, l) in lines.iter().enumerate() {
        let c = COLOURS[k % COLOURS.len()];
        // A bin without completions breaks the line rather than inventing a value.
        let mut run: Vec<(f64, f64)> = Vec::new();
        for (i, v) in l.series.p95_s.iter().enumerate() {
            match v {
                Some(v) => run.push((x(i), y3(*v))),
                None => polyline(&mut out, std::mem::take(&mut run).into_iter(), c),
            }
        }
        polyline(&mut out, run.into_iter(), c);
        legend_entry(&mut out, k, l.policy, c, top3);
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since the start of the trace (hours)</text>"#,
        LEFT + plot_w / 2.0,
        top3 + PANEL_H + 40.0
    );
    out.push_str("</svg>\n");
    out
}

/// Panel box, its title, and the hour ticks along its bottom.
fn frame(out: &mut String, top: f64, label: &str, span_h: f64, plot_w: f64) {
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/><text x="{LEFT}" y="{:.1}" font-weight="bold">{}</text>"##,
        top - 8.0,
        escape(label)
    );
    let step = [0.25, 0.5, 1.0, 2.0, 3.0, 6.0, 12.0, 24.0, 48.0, 168.0]
        .into_iter()
        .find(|s| span_h / s <= 12.0)
        .unwrap_or(336.0);
    let mut h = 0.0;
    while h <= span_h + 1e-9 {
        let xx = LEFT + plot_w * h / span_h;
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"##,
            top + PANEL_H,
            top + PANEL_H + 5.0,
            top + PANEL_H + 18.0,
            trim_number(h)
        );
        h += step;
    }
}

fn y_ticks_linear(out: &mut String, max: f64, y: &impl Fn(f64) -> f64) {
    for k in 0..=4 {
        let v = max * f64::from(k) / 4.0;
        tick_label(out, y(v), &trim_number(v));
    }
}

fn tick_label(out: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        out,
        r##"<line x1="{:.1}" x2="{LEFT}" y1="{y:.1}" y2="{y:.1}" stroke="#999"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{label}</text>"##,
        LEFT - 5.0,
        LEFT - 8.0,
        y + 4.0
    );
}

fn polyline(out: &mut String, points: impl Iterator<Item = (f64, f64)>, colour: &str) {
    let mut pts = String::new();
    let mut n = 0;
    for (x, y) in points {
        let _ = write!(pts, "{x:.1},{y:.1} ");
        n += 1;
    }
    if n == 0 {
        return;
    }
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
        pts.trim_end()
    );
}

fn legend_entry(out: &mut String, k: usize, name: &str, colour: &str, top: f64) {
    let lx = WIDTH - RIGHT + 14.0;
    let ly = top + 14.0 + 18.0 * k as f64;
    let _ = writeln!(
        out,
        r#"<line x1="{lx:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
        lx + 20.0,
        lx + 26.0,
        ly + 4.0,
        escape(name)
    );
}

/// The axis top: the next of 1, 2, 2.5, 5 × 10^k at or above `v`.
fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * mag)
}

fn trim_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round())
    } else if v >= 0.1 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize, rep: f64) -> Series {
        Series {
            bin_s: 300.0,
            offered_rps: (0..n).map(|i| i as f64).collect(),
            replicas: vec![rep; n],
            p95_s: (0..n)
                .map(|i| if i == 2 { None } else { Some(4.0 + i as f64) })
                .collect(),
        }
    }

    #[test]
    fn draws_each_policy_with_a_legend_and_labelled_axes() {
        let a = series(12, 2.0);
        let b = series(12, 5.0);
        let svg = svg(
            "gpufleet simulate <demo>",
            &[
                Line {
                    policy: "gpufleet",
                    series: &a,
                },
                Line {
                    policy: "hpa",
                    series: &b,
                },
            ],
            10.0,
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&lt;demo&gt;"), "titles are escaped");
        for label in [
            "offered load (requests/s)",
            "replicas (starting, ready or draining)",
            "p95 latency",
            "time since the start of the trace (hours)",
            "SLO 10s",
            ">gpufleet<",
            ">hpa<",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
        // Load once, replicas twice, and the gap at bin 2 splits each p95 line.
        assert_eq!(svg.matches("<polyline").count(), 1 + 2 + 4);
    }

    #[test]
    fn nice_axis_tops() {
        assert_eq!(nice_max(37.0), 50.0);
        assert_eq!(nice_max(2.1), 2.5);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(100.0), 100.0);
    }
}
