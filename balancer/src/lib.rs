//! rtc-balancer: answers resolve and owns the slot ring. With ENABLE_LEADER_ELECTION=false one
//! balancer is the only ring writer (the local stack); Kubernetes leader election comes later.

pub mod config;
pub mod liveness;
pub mod resolve;
pub mod ring;
pub mod weights;

use anyhow::Context;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use config::Config;
use prometheus::{
    register_int_counter_vec_with_registry, register_int_gauge_with_registry, IntCounterVec,
    IntGauge, Registry,
};
use rtc_protocol::ring::Ring;
use rtc_serverkit::store::Heartbeat;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Metrics {
    registry: Registry,
    pub ring_nodes: IntGauge,
    pub is_leader: IntGauge,
    pub epoch: IntGauge,
    pub resolves: IntCounterVec,
    pub moves: IntCounterVec,
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        Metrics {
            ring_nodes: register_int_gauge_with_registry!(
                "rtc_lb_ring_nodes",
                "Nodes owning slots in the current ring",
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            is_leader: register_int_gauge_with_registry!(
                "rtc_lb_is_leader",
                "1 when this balancer writes the ring",
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            epoch: register_int_gauge_with_registry!(
                "rtc_lb_ring_epoch",
                "Current ring epoch",
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            resolves: register_int_counter_vec_with_registry!(
                "rtc_lb_resolve_total",
                "Resolve requests by result",
                &["result"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            moves: register_int_counter_vec_with_registry!(
                "rtc_lb_slot_moves_total",
                "Slots moved, by reason",
                &["reason"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            registry,
        }
    }
}

pub struct Balancer {
    pub cfg: Config,
    pub secret: Vec<u8>,
    ring: RwLock<Arc<Ring>>,
    live: RwLock<HashSet<String>>,
    pub metrics: Metrics,
}

impl Balancer {
    pub fn ring(&self) -> Arc<Ring> {
        self.ring
            .read()
            .expect("ring lock is never poisoned")
            .clone()
    }

    fn set_ring(&self, ring: Ring) {
        self.metrics.epoch.set(ring.epoch as i64);
        self.metrics.ring_nodes.set(ring.counts().len() as i64);
        *self.ring.write().expect("ring lock is never poisoned") = Arc::new(ring);
    }

    fn set_nodes(&self, hbs: &[Heartbeat]) {
        *self.live.write().expect("live lock is never poisoned") =
            ring::live(hbs).map(|h| h.node_id.clone()).collect();
    }

    /// Whether `node` heartbeats and is not draining.
    pub fn is_live(&self, node: &str) -> bool {
        self.live
            .read()
            .expect("live lock is never poisoned")
            .contains(node)
    }
}

pub struct Server {
    pub bal: Arc<Balancer>,
    pub addr: SocketAddr,
    listener: TcpListener,
}

pub async fn build(cfg: Config) -> anyhow::Result<Server> {
    cfg.validate()?;
    let listener = TcpListener::bind(&cfg.listen_addr)
        .await
        .with_context(|| format!("binding LISTEN_ADDR {}", cfg.listen_addr))?;
    let addr = listener.local_addr()?;
    let bal = Arc::new(Balancer {
        secret: cfg.shared.ring_secret.as_bytes().to_vec(),
        ring: RwLock::new(Arc::new(Ring::empty(cfg.shared.slots))),
        live: RwLock::new(HashSet::new()),
        metrics: Metrics::new(),
        cfg,
    });
    Ok(Server {
        bal,
        addr,
        listener,
    })
}

fn router(bal: Arc<Balancer>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/resolve", get(resolve::resolve))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/ring", get(ring_json))
        .with_state(bal)
}

async fn readyz(State(bal): State<Arc<Balancer>>) -> Response {
    if bal.ring().epoch > 0 {
        "ready".into_response()
    } else {
        (http::StatusCode::SERVICE_UNAVAILABLE, "no ring yet").into_response()
    }
}

async fn metrics(State(bal): State<Arc<Balancer>>) -> Response {
    let body = rtc_serverkit::telemetry::render(&bal.metrics.registry);
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response()
}

async fn ring_json(State(bal): State<Arc<Balancer>>) -> Response {
    axum::Json(bal.ring().as_ref().clone()).into_response()
}

impl Server {
    /// Serves until `cancel`. Shutdown: stop the ring loop first (no half-published epoch is
    /// possible: an epoch is applied locally only after Kafka confirmed it), then the listener.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let Server {
            bal,
            addr,
            listener,
        } = self;
        tracing::info!(%addr, "balancer listening");
        let tracker = TaskTracker::new();
        let http_cancel = CancellationToken::new();
        let http = tokio::spawn(rtc_serverkit::http::serve(
            listener,
            router(bal.clone()),
            http_cancel.clone(),
            tracker.clone(),
        ));
        let (redis, producer) = loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    http_cancel.cancel();
                    let _ = http.await;
                    return Ok(());
                }
                r = setup(&bal) => match r {
                    Ok(x) => break x,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "balancer set-up failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        };
        bal.metrics.is_leader.set(1);
        ring::run(bal.clone(), redis, producer, cancel.clone()).await;
        http_cancel.cancel();
        let _ = http.await;
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
        Ok(())
    }
}

/// Topics, Redis and the producer; the mirrored ring if there is one, so epochs keep rising
/// across restarts.
async fn setup(
    bal: &Balancer,
) -> anyhow::Result<(
    redis::aio::ConnectionManager,
    rdkafka::producer::FutureProducer,
)> {
    let cfg = &bal.cfg;
    rtc_serverkit::kafka::ensure_topics(
        &cfg.shared.kafka_bootstrap,
        cfg.shared.slots,
        Duration::from_secs(10),
    )
    .await?;
    let mut redis = rtc_serverkit::store::connect(&cfg.shared.redis_url).await?;
    if let Some(ring) = rtc_serverkit::store::get_ring(&mut redis).await? {
        if ring.slots() == cfg.shared.slots && ring.epoch > bal.ring().epoch {
            tracing::info!(epoch = ring.epoch, "starting from the mirrored ring");
            bal.set_ring(ring);
        }
    }
    let producer =
        rtc_serverkit::kafka::producer_config(&cfg.shared.kafka_bootstrap, Duration::from_secs(5))
            .create()
            .context("creating the Kafka producer")?;
    Ok((redis, producer))
}
