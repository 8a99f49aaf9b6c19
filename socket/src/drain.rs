//! Drain and the pacing of `move` frames: clients of slots that left this node, or all clients
//! while draining, are told to move in jittered batches spread over MOVE_PACE_SECS or
//! DRAIN_DURATION. A drain starts with `POST /drain` (answers at once), `GET /drain` (the form a
//! Kubernetes preStop `httpGet` hook sends: answers once the drain is over, so the kubelet sends
//! SIGTERM only then) or SIGTERM (drain, then stop).

use crate::node::Node;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(100);
/// Time a moved client has, on top of its jitter, before the server closes it.
const MOVE_GRACE: Duration = Duration::from_secs(10);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    /// `serving`, `draining`, or `drained` (draining with no connection left).
    pub state: &'static str,
    pub remaining_connections: usize,
    pub elapsed_seconds: f64,
    pub duration_seconds: u64,
}

pub fn status_of(node: &Node) -> DrainStatus {
    let started = *node
        .drain_started
        .lock()
        .expect("drain lock is never poisoned");
    let remaining = node.connections.load(Ordering::Relaxed);
    DrainStatus {
        state: match started {
            None => "serving",
            Some(_) if remaining == 0 => "drained",
            Some(_) => "draining",
        },
        remaining_connections: remaining,
        elapsed_seconds: started.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        duration_seconds: node.cfg.drain_duration_secs,
    }
}

/// Starts a drain (idempotent): readiness fails, new connections are refused, the heartbeat
/// says draining so the leader moves our slots, and the mover starts telling clients to move.
pub fn start(node: &Node) {
    let mut started = node
        .drain_started
        .lock()
        .expect("drain lock is never poisoned");
    if started.is_none() {
        *started = Some(Instant::now());
        node.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            connections = node.connections.load(Ordering::Relaxed),
            duration_s = node.cfg.drain_duration_secs,
            "drain started"
        );
    }
}

pub async fn post_drain(State(node): State<Arc<Node>>) -> Response {
    start(&node);
    (http::StatusCode::ACCEPTED, axum::Json(status_of(&node))).into_response()
}

/// `GET /drain`: starts the drain and answers once it is over (see `wait_drained`).
pub async fn get_drain(State(node): State<Arc<Node>>) -> Response {
    start(&node);
    wait_drained(&node).await;
    axum::Json(status_of(&node)).into_response()
}

/// Waits until no connection is left, or DRAIN_DURATION (plus a second for the last closes) has
/// passed since the drain started.
pub async fn wait_drained(node: &Node) {
    let started = node
        .drain_started
        .lock()
        .expect("drain lock is never poisoned")
        .unwrap_or_else(Instant::now);
    let until = tokio::time::Instant::from_std(started)
        + Duration::from_secs(node.cfg.drain_duration_secs)
        + Duration::from_secs(1);
    loop {
        // Register before checking, so a close between the check and the wait is not missed.
        let emptied = node.emptied.notified();
        if node.connections.load(Ordering::Relaxed) == 0 {
            return;
        }
        tokio::select! {
            _ = emptied => {}
            _ = tokio::time::sleep_until(until) => return,
        }
    }
}

/// The node's signals: SIGTERM drains (readiness fails at once, clients are moved away) and then
/// stops; a second SIGTERM, or SIGINT (Ctrl-C), stops at once (clients get 1001). Returns the
/// token cancelled when the node should stop.
pub fn on_signals(node: Arc<Node>) -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        let mut draining = false;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => {
                    if draining {
                        break;
                    }
                    draining = true;
                    tracing::info!("SIGTERM: draining before stopping");
                    start(&node);
                    let (node, stop) = (node.clone(), stop.clone());
                    tokio::spawn(async move {
                        wait_drained(&node).await;
                        stop.cancel();
                    });
                }
                _ = stop.cancelled() => return,
            }
        }
        tracing::info!("stopping now");
        stop.cancel();
    });
    token
}

pub async fn get_status(State(node): State<Arc<Node>>) -> Response {
    axum::Json(status_of(&node)).into_response()
}

/// Moves clients in paced batches until `cancel`.
pub async fn run_mover(node: Arc<Node>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let drain = Duration::from_secs(node.cfg.drain_duration_secs);
    // While draining, wait this long for the ring to take our slots before moving clients of
    // slots we still own (they would only be refused and retry).
    let ring_grace = (drain / 4).min(Duration::from_secs(5));
    let jitter = node.cfg.move_jitter_ms;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (pending, released_at) = node.pending_moves();
        let started = *node
            .drain_started
            .lock()
            .expect("drain lock is never poisoned");
        let window = match started {
            // Leave a fifth of the drain for the last clients to reconnect.
            Some(t) => (drain.mul_f64(0.8)).saturating_sub(t.elapsed()),
            None => Duration::from_secs(node.cfg.move_pace_secs)
                .saturating_sub(released_at.map_or(Duration::ZERO, |t| t.elapsed())),
        };
        let ticks_left = (window.as_millis() / TICK.as_millis()).max(1) as usize;
        let batch = pending.div_ceil(ticks_left);
        node.move_step(
            batch,
            ring_grace,
            MOVE_GRACE + Duration::from_millis(jitter),
            jitter,
        );
        if let Some(t) = started {
            node.metrics
                .drain_remaining
                .set(node.connections.load(Ordering::Relaxed) as i64);
            node.metrics.drain_time.set(t.elapsed().as_secs_f64());
        }
    }
}
