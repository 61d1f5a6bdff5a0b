//! The device-cost plot, written as plain SVG (no font or C dependency):
//! the conventional approach's device cost divided by veil's, against the
//! number of inferences per session on a log axis, for time and bytes,
//! one pair of curves per model.

use crate::report::DeviceReport;
use std::fmt::Write;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 470.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 58.0;
/// Inferences per session on the x axis: 10^0 .. 10^4.
const X_DECADES: (i32, i32) = (0, 4);
/// Points `(inferences, ratio)` of one curve.
type Curve = Vec<(f64, f64)>;

const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn superscript(exp: i32) -> String {
    let digits = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
    let mut out = String::new();
    if exp < 0 {
        out.push('⁻');
    }
    for c in exp.unsigned_abs().to_string().chars() {
        if let Some(d) = c.to_digit(10) {
            out.push(digits[d as usize]);
        }
    }
    out
}

/// The plot for one or more models (each report is one model's run).
pub fn device_overhead_svg(reports: &[DeviceReport]) -> String {
    let samples: Vec<f64> = (0..=200)
        .map(|i| {
            let span = f64::from(X_DECADES.1 - X_DECADES.0);
            10f64.powf(f64::from(X_DECADES.0) + span * f64::from(i) / 200.0)
        })
        .collect();
    let curves: Vec<(Curve, Curve)> = reports
        .iter()
        .map(|r| {
            let pts: Vec<(f64, (f64, f64))> =
                samples.iter().map(|n| (*n, r.amortized_at(*n))).collect();
            (
                pts.iter().map(|(n, (t, _))| (*n, *t)).collect(),
                pts.iter().map(|(n, (_, b))| (*n, *b)).collect(),
            )
        })
        .collect();
    let finite = curves
        .iter()
        .flat_map(|(t, b)| t.iter().chain(b.iter()))
        .map(|(_, y)| *y)
        .filter(|y| y.is_finite() && *y > 0.0);
    let (lo, hi) = finite.fold((f64::INFINITY, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    // The published factors (30x bytes, 2000x time) are drawn for reference.
    let lo = lo.min(30.0);
    let hi = hi.max(2000.0);
    let y_min = if lo.is_finite() {
        lo.log10().floor() as i32
    } else {
        0
    };
    let y_max = (hi.log10().ceil() as i32).max(y_min + 1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |n: f64| {
        LEFT + plot_w * (n.log10() - f64::from(X_DECADES.0)) / f64::from(X_DECADES.1 - X_DECADES.0)
    };
    let y_of = |v: f64| {
        let v = v.max(10f64.powi(y_min));
        TOP + plot_h * (1.0 - (v.log10() - f64::from(y_min)) / f64::from(y_max - y_min))
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">Device cost, conventional HE ÷ veil, vs inferences per session</text>"#,
        LEFT + plot_w / 2.0
    );
    // Grid and ticks.
    for d in X_DECADES.0..=X_DECADES.1 {
        let x = x_of(10f64.powi(d));
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">10{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            superscript(d)
        );
    }
    for d in y_min..=y_max {
        let y = y_of(10f64.powi(d));
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">10{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            superscript(d)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">inferences per session (set-up amortized over them)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">conventional ÷ veil (device)</text>"#,
        TOP + plot_h / 2.0
    );
    // The published factors.
    for (value, label) in [
        (2000.0, "published: time 2000×"),
        (30.0, "published: bytes 30×"),
    ] {
        let y = y_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#888" stroke-dasharray="2,3"/><text x="{:.1}" y="{:.1}" fill="#666" font-size="10" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT + plot_w - 4.0,
            y - 5.0
        );
    }
    let path = |points: &[(f64, f64)]| -> String {
        points
            .iter()
            .filter(|(_, y)| y.is_finite())
            .enumerate()
            .map(|(i, (n, y))| {
                format!(
                    "{}{:.1},{:.1}",
                    if i == 0 { "M" } else { " L" },
                    x_of(*n),
                    y_of(*y)
                )
            })
            .collect()
    };
    let mut legend_y = TOP + 6.0;
    for (k, (report, (time, bytes))) in reports.iter().zip(&curves).enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let _ = writeln!(
            svg,
            r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path(time)
        );
        let _ = writeln!(
            svg,
            r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="7,4"/>"#,
            path(bytes)
        );
        for n in [1.0, 10.0, 100.0, 1000.0] {
            let (t, b) = report.amortized_at(n);
            for (v, filled) in [(t, true), (b, false)] {
                if v.is_finite() {
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}" stroke="{colour}" stroke-width="1.5"/>"#,
                        x_of(n),
                        y_of(v),
                        if filled { colour } else { "white" }
                    );
                }
            }
        }
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r#"<text x="{lx:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
            legend_y + 4.0,
            escape(&report.model)
        );
        let entries = [
            (format!("time ({:.0}× steady)", report.time_ratio), ""),
            (
                format!("bytes ({:.0}× steady)", report.bytes_ratio),
                r#" stroke-dasharray="7,4""#,
            ),
        ];
        for (i, (label, dash)) in entries.iter().enumerate() {
            let y = legend_y + 20.0 + 17.0 * i as f64;
            let _ = writeln!(
                svg,
                r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                y,
                lx + 26.0,
                y,
                lx + 32.0,
                y + 4.0,
                escape(label)
            );
        }
        legend_y += 68.0;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ApproachReport, FrameCost, ServerCost, SetupCost};

    #[test]
    fn the_plot_is_well_formed_svg_with_one_curve_pair_per_model() {
        let approach = |setup: f64, cpu: f64, bytes: u64| {
            ApproachReport::from_frames(
                SetupCost {
                    cpu_ms: setup,
                    cpu_ms_samples: vec![setup],
                    wall_ms: setup,
                    bytes_sent: 500,
                    bytes_received: 0,
                    ..SetupCost::default()
                },
                vec![FrameCost {
                    cpu_us: cpu,
                    capture_cpu_us: cpu / 2.0,
                    wall_ms: 1.0,
                    bytes_sent: bytes,
                    bytes_received: 0,
                    class: 0,
                }],
                ServerCost::default(),
            )
        };
        let mut reports = Vec::new();
        for name in ["a<b", "c"] {
            let mut r = DeviceReport {
                model: name.into(),
                conventional: approach(900.0, 400_000.0, 400_000),
                veil: approach(12.0, 30.0, 6_000),
                ..DeviceReport::default()
            };
            r.compute_ratios();
            reports.push(r);
        }
        let svg = device_overhead_svg(&reports);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<path").count(), 4);
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        assert!(!svg.contains("NaN") && !svg.contains("=\"inf") && !svg.contains(",inf"));
        // Four markers per curve pair and model.
        assert_eq!(svg.matches("<circle").count(), 16);
    }
}
