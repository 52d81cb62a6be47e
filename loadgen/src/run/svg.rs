//! A dependency-free SVG line chart of a run: p50 and p99 latency on the left axis,
//! verdicts and Busy replies per second on the right axis, seconds on the x axis.
//!
//! Counts are drawn as rates over each interval's real length: the last interval of a run is
//! usually shorter than a second, and its raw count would draw a drop to zero that never
//! happened. A last interval shorter than `MIN_INTERVAL_S` is left out (too short to give
//! a rate).

use std::fmt::Write as _;

use super::report::{Report, SecondStats};

const W: f64 = 960.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// The shortest interval drawn as a rate.
const MIN_INTERVAL_S: f64 = 0.25;

/// One interval as drawn: its end, per-second rates and latencies.
struct Point {
    t: f64,
    verdicts_per_s: f64,
    busy_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The intervals as rates over their real lengths.
fn points(per_second: &[SecondStats]) -> Vec<Point> {
    let mut out = Vec::with_capacity(per_second.len());
    let mut start = 0.0;
    for p in per_second {
        let len = p.t - start;
        start = p.t;
        if !(len >= MIN_INTERVAL_S && len.is_finite()) {
            continue;
        }
        out.push(Point {
            t: p.t,
            verdicts_per_s: p.verdicts as f64 / len,
            busy_per_s: p.busy as f64 / len,
            p50_ms: p.p50_ms,
            p99_ms: p.p99_ms,
        });
    }
    out
}

/// The chart as an SVG document.
pub(crate) fn plot(r: &Report) -> String {
    let pts = points(&r.per_second);
    let t_max = pts.iter().map(|p| p.t).fold(1.0, f64::max);
    let lat_max = nice_ceiling(
        pts.iter()
            .map(|p| p.p99_ms.max(p.p50_ms))
            .fold(1.0, f64::max),
    );
    let eps_max = nice_ceiling(
        pts.iter()
            .map(|p| p.verdicts_per_s.max(p.busy_per_s))
            .fold(1.0, f64::max),
    );
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |t: f64| LEFT + pw * t / t_max;
    let y_lat = |v: f64| TOP + ph * (1.0 - v / lat_max);
    let y_eps = |v: f64| TOP + ph * (1.0 - v / eps_max);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let title = format!(
        "gatewarden: {} gates, {} profile, peak {} ev/s; p99 {:.1} ms, {} lost, {} false admits",
        r.config.gates,
        r.config.profile,
        r.config.rate,
        r.latency_ms.p99,
        r.lost,
        r.accuracy.false_admit
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(&title)
    );
    // Grid and axis labels.
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let y = TOP + ph * (1.0 - f);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(lat_max * f)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            W - RIGHT + 6.0,
            y + 4.0,
            fmt_num(eps_max * f)
        );
        let t = t_max * f;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(t),
            H - BOTTOM + 18.0,
            fmt_num(t)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds</text>"#,
        LEFT + pw / 2.0,
        H - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">latency (ms)</text>"#,
        TOP + ph / 2.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{0}" y="{1}" text-anchor="middle" transform="rotate(90 {0} {1})">replies per second</text>"#,
        W - 18.0,
        TOP + ph / 2.0
    );
    let series = [
        ("verdicts/s", "#2a9d8f"),
        ("busy/s", "#f4a261"),
        ("p50", "#457b9d"),
        ("p99", "#e63946"),
    ];
    for (i, (name, colour)) in series.iter().enumerate() {
        let y = |p: &Point| match i {
            0 => y_eps(p.verdicts_per_s),
            1 => y_eps(p.busy_per_s),
            2 => y_lat(p.p50_ms),
            _ => y_lat(p.p99_ms),
        };
        if !pts.is_empty() {
            let points: Vec<String> = pts
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.t), y(p)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
        }
        let lx = LEFT + 10.0 + 120.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{0}" x2="{1}" y2="{0}" stroke="{colour}" stroke-width="3"/><text x="{2}" y="{3}">{name}</text>"#,
            TOP + 14.0,
            lx + 24.0,
            lx + 30.0,
            TOP + 18.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The next "round" number at or above `v` (1, 2, 5 × 10^k).
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// `s` escaped for SVG text and attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_is_well_formed_enough() {
        let mut r = Report::default();
        r.config.profile = "rush <&>".into();
        r.per_second = (1..=30u32)
            .map(|t| SecondStats {
                t: f64::from(t),
                sent: 100,
                verdicts: 100 + u64::from(t),
                busy: 0,
                p50_ms: 2.0,
                p99_ms: 9.5,
                gates_connected: 1,
                gates_lost: 0,
            })
            .collect();
        let svg = r.plot_svg();
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains(">busy/s</text>"));
        assert!(svg.contains("rush &lt;&amp;&gt;"));
        // Every opened element closes: count tags that are neither self-closing nor closing.
        let opens = svg.matches("<text").count() + svg.matches("<svg").count();
        let closes = svg.matches("</text>").count() + svg.matches("</svg>").count();
        assert_eq!(opens, closes);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // An empty run still renders.
        assert!(Report::default().plot_svg().ends_with("</svg>\n"));
    }

    #[test]
    fn busy_is_drawn_and_a_partial_last_second_is_a_rate_not_a_drop() {
        let second = |t: f64, verdicts: u64, busy: u64| SecondStats {
            t,
            sent: verdicts + busy,
            verdicts,
            busy,
            p50_ms: 2.0,
            p99_ms: 9.0,
            gates_connected: 1,
            gates_lost: 0,
        };
        // 1,000 verdicts/s throughout; the run ends 0.5 s into its third second, and a last
        // sliver of 0.1 s follows.
        let per_second = vec![
            second(1.0, 1000, 0),
            second(2.0, 1000, 300),
            second(2.5, 500, 0),
            second(2.6, 3, 0),
        ];
        let pts = points(&per_second);
        assert_eq!(pts.len(), 3, "the 0.1 s sliver is left out");
        assert!(pts.iter().all(|p| (p.verdicts_per_s - 1000.0).abs() < 1e-9));
        assert_eq!(pts[1].busy_per_s, 300.0);
        let r = Report {
            per_second,
            ..Report::default()
        };
        let svg = r.plot_svg();
        // The verdict line is flat: every point at the same height.
        let line = svg
            .lines()
            .find(|l| l.contains("#2a9d8f") && l.starts_with("<polyline"))
            .unwrap();
        let ys: Vec<&str> = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches("\"/>")
            .split(' ')
            .map(|p| p.split(',').nth(1).unwrap())
            .collect();
        assert_eq!(ys.len(), 3);
        assert!(ys.iter().all(|y| *y == ys[0]), "{ys:?}");
        // The Busy line rises where Busy replies came.
        let busy = svg
            .lines()
            .find(|l| l.contains("#f4a261") && l.starts_with("<polyline"))
            .unwrap();
        assert!(busy.contains("points="), "{busy}");
    }

    #[test]
    fn nice_ceiling_rounds_up() {
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(1.5), 2.0);
        assert_eq!(nice_ceiling(420.0), 500.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
