//! Redis on a socket node: the heartbeat (load, readiness, owned slots) every interval with a
//! short TTL, the ring mirror as a fallback to `rtc.control`, and client sessions written off the
//! connection path. Redis being away never touches connected clients: the node only reports
//! itself unready until a heartbeat succeeds again.

use crate::node::Node;
use redis::aio::ConnectionManager;
use rtc_common::store::{self, Heartbeat};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A change to a client's session record.
#[derive(Debug)]
pub enum SessionEvent {
    Connected { client_id: Box<str>, at_ms: u64 },
    Disconnected { client_id: Box<str> },
}

/// Queue of session writes; bounded, and dropping a write only loses debugging data.
pub fn session_channel() -> (mpsc::Sender<SessionEvent>, mpsc::Receiver<SessionEvent>) {
    mpsc::channel(16_384)
}

/// CPU seconds used by this process so far, and its resident bytes (Linux /proc).
fn process_usage() -> (f64, u64) {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    let rss_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    (ticks as f64 / 100.0, rss_pages * 4096)
}

/// Sends a heartbeat every interval until `cancel`, then deletes it.
pub async fn run_heartbeat(
    node: Arc<Node>,
    mut redis: ConnectionManager,
    addr: String,
    cancel: CancellationToken,
) {
    let interval = Duration::from_millis(node.cfg.heartbeat_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut cpu_prev, _) = process_usage();
    let mut at_prev = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (cpu_now, mem) = process_usage();
        let secs = at_prev.elapsed().as_secs_f64().max(0.001);
        let cpu = (cpu_now - cpu_prev) / secs;
        (cpu_prev, at_prev) = (cpu_now, Instant::now());
        let delivered = node.delivered_window.swap(0, Ordering::Relaxed) as f64;
        let (p50, p95, p99) = {
            let mut h = node
                .latency_us
                .lock()
                .expect("latency lock is never poisoned");
            let q = (
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.95),
                h.value_at_quantile(0.99),
            );
            h.reset();
            q
        };
        for (label, v) in [("0.5", p50), ("0.95", p95), ("0.99", p99)] {
            node.metrics
                .latency
                .with_label_values(&[label])
                .set(v as f64 / 1e6);
        }
        let draining = node.draining.load(Ordering::Relaxed);
        let hb = Heartbeat {
            node_id: node.id.clone(),
            addr: addr.clone(),
            connections: node.connections.load(Ordering::Relaxed) as u64,
            msgs_per_sec: delivered / secs,
            p95_ms: p95 as f64 / 1000.0,
            cpu,
            mem_bytes: mem,
            draining,
            ready: !draining && node.serving(),
            slots: node.owned().into_iter().collect(),
            epoch: node.ring().epoch,
            ts_ms: rtc_common::telemetry::now_ms(),
        };
        let ttl = node.cfg.heartbeat_ttl_secs;
        let ok = tokio::time::timeout(interval, store::put_heartbeat(&mut redis, &hb, ttl))
            .await
            .is_ok_and(|r| r.is_ok());
        if ok != node.redis_ok.swap(ok, Ordering::Relaxed) {
            if ok {
                tracing::info!("heartbeats reach Redis; ready");
            } else {
                tracing::warn!("cannot write heartbeats to Redis; reporting not ready");
            }
        }
        if ok {
            if let Ok(Ok(Some(ring))) =
                tokio::time::timeout(interval, store::get_ring(&mut redis)).await
            {
                node.apply_ring(ring);
            }
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        store::delete_heartbeat(&mut redis, &node.id),
    )
    .await;
}

/// Writes session records as events arrive, batching what is queued.
pub async fn run_sessions(
    node_id: String,
    mut redis: ConnectionManager,
    mut rx: mpsc::Receiver<SessionEvent>,
) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        for ev in batch.drain(..) {
            match ev {
                SessionEvent::Connected { client_id, at_ms } => {
                    let key = format!("{}{client_id}", store::SESSION_PREFIX);
                    pipe.hset_multiple(
                        &key,
                        &[
                            ("node", node_id.clone()),
                            ("connectedAt", at_ms.to_string()),
                        ],
                    )
                    .ignore();
                    pipe.expire(&key, 86_400).ignore();
                }
                SessionEvent::Disconnected { client_id } => {
                    // Only remove the record if it still names this node (the client may have
                    // connected elsewhere already).
                    let key = format!("{}{client_id}", store::SESSION_PREFIX);
                    pipe.cmd("EVAL")
                        .arg("if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
                        .arg(1)
                        .arg(&key)
                        .arg(&node_id)
                        .ignore();
                }
            }
        }
        if let Err(e) = pipe.query_async::<()>(&mut redis).await {
            tracing::debug!(error = %e, "session write failed");
        }
    }
}

/// Reconnects to Redis until it answers or `cancel`.
pub async fn connect_redis(url: &str, cancel: &CancellationToken) -> Option<ConnectionManager> {
    let mut delay = Duration::from_millis(100);
    loop {
        match store::connect(url).await {
            Ok(c) => return Some(c),
            Err(e) => tracing::warn!(error = %e, "Redis not reachable yet"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
