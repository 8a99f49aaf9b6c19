//! The node's heartbeat in Redis: load, readiness and owned slots every interval with a short
//! TTL (a dead node vanishes by itself), and the ring mirror read back as a fallback to
//! `rtc.control`. Redis being away never touches connected clients: the node only reports itself
//! unready until a heartbeat succeeds again.

use crate::node::Node;
use redis::aio::ConnectionManager;
use rtc_serverkit::store::{self, Heartbeat};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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
    let (mut cpu_prev, _) = rtc_serverkit::telemetry::process_usage();
    let mut at_prev = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (cpu_now, mem) = rtc_serverkit::telemetry::process_usage();
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
        node.metrics.serving_slots.set(node.serving_slots() as i64);
        let hb = Heartbeat {
            node_id: node.id.clone(),
            addr: addr.clone(),
            connections: node.connections.load(Ordering::Relaxed) as u64,
            msgs_per_sec: delivered / secs,
            p95_ms: p95 as f64 / 1000.0,
            cpu,
            mem_bytes: mem,
            kafka_lag: node.kafka_lag.load(Ordering::Relaxed),
            draining,
            ready: !draining && node.serving(),
            slots: node.owned().into_iter().collect(),
            epoch: node.ring().epoch,
            ts_ms: rtc_serverkit::telemetry::now_ms(),
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
