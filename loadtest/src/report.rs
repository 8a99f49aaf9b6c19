//! The outcome of a run (or of one worker process), mergeable across workers, and how it is
//! printed.

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One second of a run, for the progress line and the HTML report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub t: f64,
    pub connections: usize,
    pub sent: u64,
    pub delivered: u64,
    pub errors: u64,
    pub p99_ms: f64,
}

/// A latency histogram in microseconds, up to 10 minutes, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

/// The outcome of a run (or of one worker), mergeable across workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub clients: usize,
    pub sent: u64,
    pub acked: usize,
    /// Sent, neither acked nor refused by the end (the connection closed first, or the run
    /// ended before the answer): not accepted as far as the sender knows.
    pub unacked: usize,
    pub delivered: usize,
    /// Acked and never delivered to a connected recipient: what the system promised and did
    /// not do.
    pub lost: usize,
    /// Acked, not delivered, recipient without a connection at the end (kept in Kafka for it).
    pub undeliverable: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    pub room_delivered: u64,
    pub pongs: u64,
    /// Direct messages received from senders outside this run (not booked).
    pub foreign: u64,
    /// Direct messages sent again (same id) after a reconnect, their answer not yet received.
    pub resent: u64,
    /// Why connections ended before the run did ("move", close code, "eof", "error: …") → count.
    pub closes: BTreeMap<String, u64>,
    pub errors: usize,
    pub reconnects: usize,
    pub disconnects: usize,
    pub connect_failures: usize,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub service_ms_p50: f64,
    pub service_ms_p99: f64,
    pub per_node: BTreeMap<String, u64>,
    /// Client process CPU while sending, seconds: user space and kernel.
    pub cpu_user_secs: f64,
    pub cpu_sys_secs: f64,
    /// Client process CPU per message received (delivery or pong), microseconds: in all, in
    /// user space (the tool's own work) and in the kernel (TCP; on loopback a send also pays for
    /// the receiving side's TCP input).
    pub client_cpu_us_per_msg: f64,
    pub client_user_us_per_msg: f64,
    pub client_sys_us_per_msg: f64,
    pub series: Vec<Sample>,
    /// The latency histograms, V2-serialized and base64-encoded, for merging workers.
    pub latency_hist: String,
    pub service_hist: String,
}

/// Adds `other`'s counts into `into`, key by key.
fn add_counts(into: &mut BTreeMap<String, u64>, other: &BTreeMap<String, u64>) {
    for (k, v) in other {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn encode(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    let _ = V2Serializer::new().serialize(h, &mut buf);
    base64::engine::general_purpose::STANDARD.encode(buf)
}

fn decode(s: &str) -> Option<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).ok()
}

impl Report {
    /// Fills the quantiles from the histograms.
    pub(crate) fn set_quantiles(&mut self, lat: &Histogram<u64>, svc: &Histogram<u64>) {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        self.latency_ms_p50 = ms(lat, 0.5);
        self.latency_ms_p90 = ms(lat, 0.9);
        self.latency_ms_p99 = ms(lat, 0.99);
        self.latency_ms_p999 = ms(lat, 0.999);
        self.latency_ms_max = lat.max() as f64 / 1000.0;
        self.service_ms_p50 = ms(svc, 0.5);
        self.service_ms_p99 = ms(svc, 0.99);
        self.latency_hist = encode(lat);
        self.service_hist = encode(svc);
    }

    /// Adds another worker's report: counts summed, histograms merged, series summed by second.
    pub fn merge(&mut self, o: &Report) {
        let mut lat = decode(&self.latency_hist).unwrap_or_else(histogram);
        let mut svc = decode(&self.service_hist).unwrap_or_else(histogram);
        if let Some(h) = decode(&o.latency_hist) {
            let _ = lat.add(&h);
        }
        if let Some(h) = decode(&o.service_hist) {
            let _ = svc.add(&h);
        }
        self.cpu_user_secs += o.cpu_user_secs;
        self.cpu_sys_secs += o.cpu_sys_secs;
        self.clients += o.clients;
        self.sent += o.sent;
        self.acked += o.acked;
        self.unacked += o.unacked;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.undeliverable += o.undeliverable;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.room_delivered += o.room_delivered;
        self.foreign += o.foreign;
        self.resent += o.resent;
        add_counts(&mut self.closes, &o.closes);
        self.pongs += o.pongs;
        self.errors += o.errors;
        self.reconnects += o.reconnects;
        self.disconnects += o.disconnects;
        self.connect_failures += o.connect_failures;
        add_counts(&mut self.per_node, &o.per_node);
        for (i, s) in o.series.iter().enumerate() {
            if i >= self.series.len() {
                self.series.push(Sample {
                    t: s.t,
                    ..Default::default()
                });
            }
            let d = &mut self.series[i];
            d.connections += s.connections;
            d.sent += s.sent;
            d.delivered += s.delivered;
            d.errors += s.errors;
            d.p99_ms = d.p99_ms.max(s.p99_ms);
        }
        self.set_quantiles(&lat, &svc);
        self.set_cpu();
    }

    /// Fills the per-message CPU figures from the CPU totals and the messages received.
    pub(crate) fn set_cpu(&mut self) {
        let msgs = (self.delivered as u64 + self.pongs + self.room_delivered) as f64;
        let per = |secs: f64| if msgs > 0.0 { secs * 1e6 / msgs } else { 0.0 };
        self.client_user_us_per_msg = per(self.cpu_user_secs);
        self.client_sys_us_per_msg = per(self.cpu_sys_secs);
        self.client_cpu_us_per_msg = per(self.cpu_user_secs + self.cpu_sys_secs);
    }
}

impl Report {
    /// The human summary: a few lines a person reads after a run.
    pub fn print_summary(&self, workers: usize, duration: u64) {
        let r = self;
        let peak = r.series.iter().map(|s| s.connections).max().unwrap_or(0);
        println!(
        "connections: {} clients ({} worker processes); peak connected {}; connect failures {}, disconnects {}, reconnects {}",
        r.clients, workers, peak, r.connect_failures, r.disconnects, r.reconnects
    );
        if !r.closes.is_empty() {
            println!("closed by:   {:?}", r.closes);
        }
        let received = r.delivered as u64 + r.room_delivered + r.pongs;
        println!(
        "messages:    sent {} ({:.0}/s, {} resent after a reconnect), acked {} (unacked {}), received {} ({:.0}/s); lost {}, duplicated {}, out of order {}, errors {}",
        r.sent,
        r.sent as f64 / duration.max(1) as f64,
        r.resent,
        r.acked,
        r.unacked,
        received,
        received as f64 / duration.max(1) as f64,
        r.lost,
        r.duplicated,
        r.out_of_order,
        r.errors
    );
        println!(
        "latency ms:  p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} (from intended send); service p50 {:.2} p99 {:.2}",
        r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p99, r.latency_ms_p999, r.latency_ms_max, r.service_ms_p50, r.service_ms_p99
    );
        let nodes: Vec<_> = r.per_node.iter().collect();
        println!(
            "per node:    {nodes:?}; client CPU {:.1} µs per message ({:.1} user, {:.1} kernel)",
            r.client_cpu_us_per_msg, r.client_user_us_per_msg, r.client_sys_us_per_msg
        );
    }

    /// The JSON summary printed with `--json` (what scripts and CI read).
    pub fn summary_json(&self, workers: usize) -> serde_json::Value {
        let r = self;
        serde_json::json!({
            "clients": r.clients, "sent": r.sent, "acked": r.acked, "unacked": r.unacked, "delivered": r.delivered,
            "lost": r.lost, "undeliverable": r.undeliverable, "duplicated": r.duplicated, "out_of_order": r.out_of_order,
            "room_delivered": r.room_delivered, "pongs": r.pongs, "foreign": r.foreign, "resent": r.resent, "closes": r.closes, "errors": r.errors,
            "reconnects": r.reconnects, "disconnects": r.disconnects, "connect_failures": r.connect_failures,
            "latency_ms": {"p50": r.latency_ms_p50, "p90": r.latency_ms_p90, "p99": r.latency_ms_p99, "p999": r.latency_ms_p999, "max": r.latency_ms_max},
            "service_ms": {"p50": r.service_ms_p50, "p99": r.service_ms_p99},
            "client_cpu_us_per_msg": r.client_cpu_us_per_msg,
            "client_user_us_per_msg": r.client_user_us_per_msg, "client_sys_us_per_msg": r.client_sys_us_per_msg,
            "per_node": r.per_node, "workers": workers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_sums_counts_and_merges_histograms() {
        let mut a = histogram();
        a.record(1_000).unwrap();
        let mut b = histogram();
        b.record(9_000_000).unwrap();
        let mut one = Report {
            sent: 2,
            lost: 1,
            closes: [("move".to_string(), 1)].into(),
            series: vec![Sample {
                t: 1.0,
                sent: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        one.set_quantiles(&a, &a);
        let mut two = Report {
            sent: 3,
            closes: [("move".to_string(), 2), ("eof".to_string(), 1)].into(),
            series: vec![
                Sample {
                    t: 1.0,
                    sent: 3,
                    ..Default::default()
                },
                Sample {
                    t: 2.0,
                    sent: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        two.set_quantiles(&b, &b);
        one.merge(&two);
        assert_eq!((one.sent, one.lost), (5, 1));
        assert_eq!(one.closes["move"], 3);
        assert_eq!(one.closes["eof"], 1);
        assert_eq!(
            one.series.iter().map(|s| s.sent).collect::<Vec<_>>(),
            vec![5, 1]
        );
        assert!(one.latency_ms_max >= 9_000.0, "{}", one.latency_ms_max);
        assert!(one.latency_ms_p50 <= 1.01, "{}", one.latency_ms_p50);
    }
}
