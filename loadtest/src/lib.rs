//! The load-test client and its ledger: clients resolve and connect like real ones, send on an
//! open-loop schedule, follow `move` and reconnect with their resume offset, and every message
//! is accounted for (sent, acked, delivered, lost, duplicated). Latency is measured from the
//! *intended* send time, so a stalled client cannot hide queueing (coordinated omission); service
//! time, from the actual send, is kept beside it.

pub mod threshold;

use rtc_devkit::client::{Client, Endpoints};
use serde::Serialize;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What the clients are doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Sending on schedule.
    Sending,
    /// Still receiving, not sending.
    Quiet,
    /// Stop.
    Done,
}

/// Whom each message goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// To a peer chosen round-robin from the other clients.
    Direct,
    /// To oneself (one slot, one node: measures a node's own path).
    SelfSend,
}

/// Every message and delivery of a run.
#[derive(Default)]
pub struct Ledger {
    /// (sender, id) → recipient.
    pub sent: HashMap<(String, String), String>,
    pub acked: HashSet<(String, String)>,
    pub errors: usize,
    /// (recipient, sender, id) → times delivered.
    pub delivered: HashMap<(String, String, String), usize>,
    pub reconnects: usize,
    pub connect_failures: usize,
    /// Client → node it ended on.
    pub final_node: HashMap<String, String>,
    /// Delivery latency from the intended send time, microseconds.
    pub latency_us: Option<hdrhistogram::Histogram<u64>>,
    /// Delivery latency from the actual send, microseconds.
    pub service_us: Option<hdrhistogram::Histogram<u64>>,
    /// Clients connected right now.
    pub connected: usize,
    /// Counters since the last progress line: delivered, sent, errors.
    pub window: (u64, u64, u64),
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub clients: usize,
    pub sent: usize,
    pub acked: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub errors: usize,
    pub reconnects: usize,
    pub connect_failures: usize,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub service_ms_p50: f64,
    pub service_ms_p99: f64,
    pub per_node: HashMap<String, usize>,
}

impl Ledger {
    pub fn new() -> Self {
        let h = || hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).ok();
        Ledger {
            latency_us: h(),
            service_us: h(),
            ..Default::default()
        }
    }

    /// Acked messages that have not reached their recipient.
    pub fn lost(&self) -> Vec<(String, String)> {
        self.acked
            .iter()
            .filter(|(from, id)| {
                !self.delivered.contains_key(&(
                    self.sent[&(from.clone(), id.clone())].clone(),
                    from.clone(),
                    id.clone(),
                ))
            })
            .cloned()
            .collect()
    }

    pub fn report(&self) -> Report {
        let at = |h: &Option<hdrhistogram::Histogram<u64>>, p: f64| {
            h.as_ref()
                .map_or(0.0, |h| h.value_at_quantile(p) as f64 / 1000.0)
        };
        let q = |p: f64| at(&self.latency_us, p);
        let mut per_node = HashMap::new();
        for n in self.final_node.values() {
            *per_node.entry(n.clone()).or_insert(0) += 1;
        }
        Report {
            clients: self.final_node.len(),
            sent: self.sent.len(),
            acked: self.acked.len(),
            delivered: self.delivered.len(),
            lost: self.lost().len(),
            duplicated: self.delivered.values().filter(|&&n| n > 1).count(),
            errors: self.errors,
            reconnects: self.reconnects,
            connect_failures: self.connect_failures,
            latency_ms_p50: q(0.5),
            latency_ms_p90: q(0.9),
            latency_ms_p99: q(0.99),
            latency_ms_p999: q(0.999),
            latency_ms_max: self
                .latency_us
                .as_ref()
                .map_or(0.0, |h| h.max() as f64 / 1000.0),
            service_ms_p50: at(&self.service_us, 0.5),
            service_ms_p99: at(&self.service_us, 0.99),
            per_node,
        }
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One client's whole life: connect, wait for `start`, send every `interval` while sending,
/// account for everything received, follow moves; ends on `Phase::Done`.
#[allow(clippy::too_many_arguments)]
pub async fn run_client(
    ep: Endpoints,
    me: String,
    peers: Arc<Vec<String>>,
    pattern: Pattern,
    interval: Duration,
    mut phase: watch::Receiver<Phase>,
    ledger: Arc<Mutex<Ledger>>,
    start: Arc<tokio::sync::Barrier>,
) {
    let deadline = Duration::from_secs(30);
    let mut c = match Client::connect(&ep, &me, None, deadline).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(client = %me, error = %e, "could not connect");
            ledger.lock().expect("ledger lock").connect_failures += 1;
            start.wait().await;
            return;
        }
    };
    start.wait().await;
    let mut seq = 0u64;
    // Spread clients over the interval so sends do not come in bursts.
    let offset = Duration::from_micros(
        u64::from(rtc_common::slot::murmur2(me.as_bytes()) as u32)
            % interval.as_micros().max(1) as u64,
    );
    // Open loop: ticks that fall due while the client is busy (reconnecting, blocked on a full
    // socket) fire late, back to back, and carry their intended time — so the wait counts.
    let (base_at, base_us) = (tokio::time::Instant::now(), now_us());
    let mut tick = tokio::time::interval_at(base_at + offset, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    ledger.lock().expect("ledger lock").connected += 1;
    loop {
        let sending = *phase.borrow() == Phase::Sending;
        tokio::select! {
            _ = phase.changed() => {
                if *phase.borrow() == Phase::Done { break; }
            }
            due = tick.tick(), if sending => {
                let intended = base_us + due.duration_since(base_at).as_micros() as u64;
                seq += 1;
                let id = seq.to_string();
                let to = match pattern {
                    Pattern::Direct => peers[(seq as usize * 7 + me.len()) % peers.len()].clone(),
                    Pattern::SelfSend => me.clone(),
                };
                {
                    let mut l = ledger.lock().expect("ledger lock");
                    l.sent.insert((me.clone(), id.clone()), to.clone());
                    l.window.1 += 1;
                }
                if c.send(&id, &to, json!({"seq": seq, "at": intended, "ts": now_us()})).await.is_err() && !reconnect(&mut c, &ledger).await {
                    break;
                }
            }
            f = c.next(Duration::from_secs(3600)) => {
                let reconnect_needed = match f {
                    Ok(Some(f)) => handle(&me, &f, &ledger),
                    _ => true,
                };
                if reconnect_needed {
                    if c.moved {
                        tokio::time::sleep(Duration::from_millis(c.move_delay_ms)).await;
                    }
                    if !reconnect(&mut c, &ledger).await { break; }
                }
            }
        }
    }
    let mut l = ledger.lock().expect("ledger lock");
    l.connected -= 1;
    l.final_node.insert(me, c.node.clone());
}

/// Books one frame; true when the client must reconnect (a `move` or a close).
fn handle(me: &str, f: &serde_json::Value, ledger: &Mutex<Ledger>) -> bool {
    let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
    let mut l = ledger.lock().expect("ledger lock");
    match f["type"].as_str() {
        Some("ack") => {
            l.acked.insert((me.to_string(), s("id")));
        }
        Some("error") => {
            l.errors += 1;
            l.window.2 += 1;
        }
        Some("msg") => {
            *l.delivered
                .entry((me.to_string(), s("from"), s("id")))
                .or_default() += 1;
            l.window.0 += 1;
            let now = now_us();
            if let (Some(t), Some(h)) = (f["data"]["at"].as_u64(), l.latency_us.as_mut()) {
                let _ = h.record(now.saturating_sub(t).max(1));
            }
            if let (Some(t), Some(h)) = (f["data"]["ts"].as_u64(), l.service_us.as_mut()) {
                let _ = h.record(now.saturating_sub(t).max(1));
            }
        }
        Some("move") | Some("close") => return true,
        _ => {}
    }
    false
}

async fn reconnect(c: &mut Client, ledger: &Mutex<Ledger>) -> bool {
    ledger.lock().expect("ledger lock").connected -= 1;
    let r = c.reconnect(Duration::from_secs(30)).await;
    let mut l = ledger.lock().expect("ledger lock");
    match r {
        Ok(()) => {
            l.reconnects += 1;
            l.connected += 1;
            true
        }
        Err(e) => {
            tracing::warn!(client = %c.client_id, error = %e, "could not reconnect");
            l.connect_failures += 1;
            l.connected += 1; // balanced by the decrement when the task ends
            false
        }
    }
}
