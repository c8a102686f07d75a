//! The SVG chart: delivered messages/s (log) against p99 latency (log), one line per
//! system and scenario, with the latency bound drawn (hand-written SVG).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{colour, fmt_rate, order, P99_BOUND_MS};
use crate::load::RunResult;

/// The chart: delivered msgs/s (x, log) against p99 latency (y, log), one line per
/// system and scenario, with the 50 ms bound drawn.
pub fn svg(runs: &[RunResult]) -> String {
    let (w, h) = (900.0, 540.0);
    let (left, right, top, bottom) = (80.0, 260.0, 40.0, 60.0);
    let (x0, x1) = (2.0f64, 7.0f64); // 100 … 10M msgs/s
    let (y0, y1) = (-1.0f64, 4.0f64); // 0.1 ms … 10 s
    let px = |rate: f64| left + (rate.max(1.0).log10().clamp(x0, x1) - x0) / (x1 - x0) * (w - left - right);
    let py =
        |ms: f64| h - bottom - (ms.max(0.01).log10().clamp(y0, y1) - y0) / (y1 - y0) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">Delivered messages/s vs p99 end-to-end latency (loopback, 2 cores)</text>"#,
        (w - right + left) / 2.0
    );
    for e in (x0 as i32)..=(x1 as i32) {
        let x = px(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#ddd"/>"##,
            h - bottom
        );
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
            h - bottom + 18.0,
            fmt_rate(10f64.powi(e))
        );
    }
    for e in (y0 as i32)..=(y1 as i32) {
        let y = py(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            w - right
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{} ms</text>"#,
            left - 6.0,
            y + 4.0,
            10f64.powi(e)
        );
    }
    let bound = py(P99_BOUND_MS);
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{bound}" x2="{}" y2="{bound}" stroke="#000" stroke-dasharray="2,3"/><text x="{}" y="{}" >p99 = 50 ms</text>"##,
        w - right,
        left + 4.0,
        bound - 4.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">delivered messages/s (log)</text>"#,
        (w - right + left) / 2.0,
        h - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">p99 latency (log)</text>"#,
        (h - bottom + top) / 2.0,
        (h - bottom + top) / 2.0
    );
    let mut legend_y = top + 10.0;
    let mut series: BTreeMap<(usize, String), &RunResult> = BTreeMap::new();
    for r in runs.iter().filter(|r| !r.steps.is_empty()) {
        series.insert((order(&r.target), r.scenario.clone()), r);
    }
    for r in series.values() {
        let colour = colour(&r.target);
        let dash = if r.scenario.ends_with('b') {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let points: Vec<String> = r
            .steps
            .iter()
            .filter(|st| st.latency.count > 0)
            .map(|st| format!("{:.1},{:.1}", px(st.delivered_per_sec), py(st.latency.p99_ms)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
            points.join(" ")
        );
        for p in &points {
            let (x, y) = p.split_once(',').expect("formatted as x,y");
            let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
        }
        let lx = w - right + 12.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}" font-size="11">{} ({})</text>"#,
            lx + 24.0,
            lx + 30.0,
            legend_y + 4.0,
            r.target,
            r.scenario
        );
        legend_y += 18.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="10">solid: (a) 1 chat × 1,000; dashed: (b) 1,000 chats × 10</text>"#,
        w - right + 12.0,
        legend_y + 10.0
    );
    s.push_str("</svg>\n");
    s
}
