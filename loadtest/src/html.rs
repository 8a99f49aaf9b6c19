//! A self-contained HTML report of a run: the summary table and inline SVG plots of latency and
//! throughput over time, connections over time and connections per node. No scripts, no
//! external assets.

use crate::Report;
use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 180.0;
const PAD: f64 = 40.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A line chart of one or more series over the run's seconds.
fn chart(title: &str, unit: &str, xs: &[f64], series: &[(&str, &str, Vec<f64>)]) -> String {
    let xmax = xs.iter().cloned().fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().cloned())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |t: f64| PAD + t / xmax * (W - PAD - 10.0);
    let y = |v: f64| H - PAD / 2.0 - v / ymax * (H - PAD);
    let mut svg = format!(
        r#"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">"#,
        esc(title)
    );
    let _ = write!(
        svg,
        r##"<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="#999"/>"##,
        y(0.0),
        W - 10.0,
        y(0.0)
    );
    let _ = write!(
        svg,
        r##"<line x1="{PAD}" y1="{}" x2="{PAD}" y2="{}" stroke="#999"/>"##,
        y(0.0),
        y(ymax)
    );
    let _ = write!(
        svg,
        r##"<text x="2" y="{}" font-size="10">{:.1} {}</text>"##,
        y(ymax / 1.1) + 4.0,
        ymax / 1.1,
        esc(unit)
    );
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="10">{:.0} s</text>"##,
        W - 40.0,
        H - 4.0,
        xmax
    );
    for (i, (name, color, v)) in series.iter().enumerate() {
        let pts: Vec<String> = xs
            .iter()
            .zip(v)
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="12" font-size="11" fill="{color}">{}</text>"#,
            PAD + 8.0 + 130.0 * i as f64,
            esc(name)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// Horizontal bars of connections per node.
fn bars(per_node: &std::collections::BTreeMap<String, u64>) -> String {
    let nodes: Vec<(&String, &u64)> = per_node.iter().collect();
    let max = nodes.iter().map(|(_, n)| **n).max().unwrap_or(1).max(1) as f64;
    let h = 22.0 * nodes.len() as f64 + 10.0;
    let mut svg = format!(
        r#"<figure><figcaption>Connections per node at the end</figcaption><svg viewBox="0 0 {W} {h}" width="{W}" height="{h}">"#
    );
    for (i, (name, n)) in nodes.iter().enumerate() {
        let y = 5.0 + 22.0 * i as f64;
        let w = **n as f64 / max * (W - 260.0);
        let _ = write!(
            svg,
            r##"<text x="0" y="{}" font-size="11">{}</text><rect x="180" y="{y}" width="{w:.1}" height="16" fill="#4a7"/><text x="{}" y="{}" font-size="11">{n}</text>"##,
            y + 12.0,
            esc(name),
            185.0 + w,
            y + 12.0
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// The whole report page.
pub fn render(title: &str, r: &Report) -> String {
    let xs: Vec<f64> = r.series.iter().map(|s| s.t).collect();
    let rows = [
        ("clients", r.clients.to_string()),
        (
            "messages sent / acked / unacked / delivered",
            format!("{} / {} / {} / {}", r.sent, r.acked, r.unacked, r.delivered),
        ),
        (
            "lost / duplicated / out of order",
            format!("{} / {} / {}", r.lost, r.duplicated, r.out_of_order),
        ),
        (
            "room deliveries / pongs",
            format!("{} / {}", r.room_delivered, r.pongs),
        ),
        (
            "errors / reconnects / disconnects / connect failures",
            format!(
                "{} / {} / {} / {}",
                r.errors, r.reconnects, r.disconnects, r.connect_failures
            ),
        ),
        (
            "latency ms p50 / p90 / p99 / p99.9 / max (from intended send)",
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} / {:.2}",
                r.latency_ms_p50,
                r.latency_ms_p90,
                r.latency_ms_p99,
                r.latency_ms_p999,
                r.latency_ms_max
            ),
        ),
        (
            "service time ms p50 / p99 (from actual send)",
            format!("{:.2} / {:.2}", r.service_ms_p50, r.service_ms_p99),
        ),
        (
            "client CPU per message (user + kernel)",
            format!(
                "{:.1} µs ({:.1} + {:.1})",
                r.client_cpu_us_per_msg, r.client_user_us_per_msg, r.client_sys_us_per_msg
            ),
        ),
    ];
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font:14px system-ui,sans-serif;max-width:700px;margin:2em auto}}td{{padding:2px 8px}}figure{{margin:1.5em 0}}figcaption{{font-weight:600}}</style></head><body><h1>{t}</h1><table>",
        t = esc(title)
    );
    for (k, v) in rows {
        let _ = write!(html, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
    }
    html.push_str("</table>");
    html.push_str(&chart(
        "Latency p99 per second",
        "ms",
        &xs,
        &[("p99", "#c33", r.series.iter().map(|s| s.p99_ms).collect())],
    ));
    html.push_str(&chart(
        "Throughput per second",
        "msg/s",
        &xs,
        &[
            (
                "sent",
                "#36c",
                r.series.iter().map(|s| s.sent as f64).collect(),
            ),
            (
                "delivered",
                "#3a3",
                r.series.iter().map(|s| s.delivered as f64).collect(),
            ),
        ],
    ));
    html.push_str(&chart(
        "Connections",
        "",
        &xs,
        &[(
            "connected",
            "#862",
            r.series.iter().map(|s| s.connections as f64).collect(),
        )],
    ));
    html.push_str(&bars(&r.per_node));
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sample;

    #[test]
    fn renders_every_section_and_escapes() {
        let r = Report {
            clients: 2,
            series: (0..5)
                .map(|i| Sample {
                    t: i as f64,
                    connections: 2,
                    sent: 10,
                    delivered: 9,
                    errors: 0,
                    p99_ms: 3.0 + i as f64,
                })
                .collect(),
            per_node: [("node<1>".to_string(), 2)].into(),
            ..Default::default()
        };
        let html = render("run <1>", &r);
        for part in [
            "Latency p99 per second",
            "Throughput per second",
            "Connections per node",
            "run &lt;1&gt;",
            "node&lt;1&gt;",
            "<polyline",
        ] {
            assert!(html.contains(part), "{part}");
        }
        assert!(!html.contains("<script"), "no scripts");
    }
}
