//! rtc-socket: holds client WebSockets, relays messages through Kafka, keeps heartbeats and
//! sessions in Redis, resumes clients from an offset, and drains.

pub mod config;
pub mod conn;
pub mod drain;
pub mod heartbeat;
pub mod history;
pub mod metrics;
pub mod node;
pub mod producer;
pub mod readback;
pub mod relay;
pub mod rooms;
pub mod session;
pub mod slot;
pub mod ws;

use anyhow::Context;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use config::Config;
use node::Node;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A built socket node, listening but not yet serving.
pub struct Socket {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    listener: TcpListener,
    sessions_rx: tokio::sync::mpsc::Receiver<session::SessionEvent>,
}

/// Binds the listener and creates the Kafka producer.
pub async fn build(cfg: Config) -> anyhow::Result<Socket> {
    cfg.validate()?;
    let id = cfg
        .node_id
        .clone()
        .unwrap_or_else(|| format!("socket-{:08x}", rand::random::<u32>()));
    let listener = TcpListener::bind(&cfg.listen_addr)
        .await
        .with_context(|| format!("binding LISTEN_ADDR {}", cfg.listen_addr))?;
    let addr = listener.local_addr()?;
    let producer =
        producer::Producer::build(&cfg.shared.kafka_bootstrap, cfg.kafka_send_timeout())?;
    let (tx, sessions_rx) = session::session_channel();
    let node = Arc::new(Node::new(cfg, id, producer, tx, CancellationToken::new()));
    Ok(Socket {
        node,
        addr,
        listener,
        sessions_rx,
    })
}

fn router(node: Arc<Node>) -> axum::Router {
    axum::Router::new()
        .route("/ws/{node_id}/connect", get(ws::connect))
        .route("/drain", post(drain::post_drain).get(drain::get_drain))
        .route("/drain/status", get(drain::get_status))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node)
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.ready() {
        "ready".into_response()
    } else {
        let why = if node.draining.load(Ordering::Relaxed) {
            "draining"
        } else if !node.serving() {
            "starting: no ring yet or rooms reader not placed"
        } else {
            "Redis unreachable"
        };
        (http::StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
        .into_response()
}

impl Socket {
    /// Serves until `cancel`.
    ///
    /// Shutdown order, and why: stop accepting first (no new work); then cancel the node so every
    /// connection gets a 1001 close frame and clients reconnect elsewhere; wait for the
    /// connection tasks so their close frames are written; flush the producer so every acked
    /// message is in Kafka (acks were only sent after Kafka confirmed, so this covers in-flight
    /// sends whose acks the client will not see — they are still delivered); delete the
    /// heartbeat last so the balancer moves our slots as soon as we are gone. All of it within
    /// one SHUTDOWN_GRACE_SECS.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let Socket {
            node,
            addr,
            listener,
            sessions_rx,
        } = self;
        let advertise = node
            .cfg
            .advertise_addr
            .clone()
            .unwrap_or_else(|| addr.to_string());
        tracing::info!(node = %node.id, %addr, %advertise, "socket node listening");
        let http_cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let bootstrap = node.cfg.shared.kafka_bootstrap.clone();
        let bg = node.cancel.clone();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(rtc_serverkit::http::serve(
            listener,
            router(node.clone()),
            http_cancel.clone(),
            tracker.clone(),
        ));
        {
            let (node, bootstrap, bg) = (node.clone(), bootstrap.clone(), bg.clone());
            tasks.spawn(async move {
                log_end("deliver", relay::run_deliver(node, bootstrap, bg).await)
            });
        }
        {
            let (node, bootstrap, bg) = (node.clone(), bootstrap.clone(), bg.clone());
            tasks.spawn(
                async move { log_end("rooms", relay::run_rooms(node, bootstrap, bg).await) },
            );
        }
        {
            let (node, bootstrap, bg) = (node.clone(), bootstrap.clone(), bg.clone());
            tasks.spawn(async move {
                log_end("control", relay::run_control(node, bootstrap, bg).await)
            });
        }
        tasks.spawn(drain::run_mover(node.clone(), bg.clone()));
        let hb = {
            let (node, bg) = (node.clone(), bg.clone());
            tokio::spawn(async move {
                let Some(redis) = heartbeat::connect_redis(&node.cfg.shared.redis_url, &bg).await
                else {
                    return;
                };
                let sweep = Duration::from_millis(node.cfg.heartbeat_interval_ms * 2);
                tokio::spawn(session::run_sessions(
                    node.clone(),
                    redis.clone(),
                    sessions_rx,
                    sweep,
                ));
                heartbeat::run_heartbeat(node, redis, advertise, bg).await;
            })
        };

        cancel.cancelled().await;
        tracing::info!(
            connections = node.connections.load(Ordering::Relaxed),
            "socket node shutting down"
        );
        http_cancel.cancel();
        node.cancel.cancel();
        let grace = tokio::time::Instant::now() + Duration::from_secs(node.cfg.shutdown_grace_secs);
        node.connections_tracker.close();
        let _ = tokio::time::timeout_at(grace, node.connections_tracker.wait()).await;
        node.flush_producer(grace.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        let _ = tokio::time::timeout_at(grace, hb).await;
        tasks.shutdown().await;
        tracker.close();
        let _ = tokio::time::timeout_at(grace, tracker.wait()).await;
        Ok(())
    }
}

fn log_end(what: &str, r: anyhow::Result<()>) {
    if let Err(e) = r {
        tracing::error!(task = what, error = %e, "task failed");
    }
}
