//! rtc-balancer: answers resolve and owns the slot ring. With ENABLE_LEADER_ELECTION=false one
//! balancer is the only ring writer (the local stack); with it, replicas elect a leader through a
//! Kubernetes Lease: the leader writes the ring and scales the socket nodes, followers keep the
//! live set from heartbeats and the ring from `rtc.control`, and all answer resolve.

pub mod actuator;
pub mod config;
pub mod election;
pub mod liveness;
pub mod publish;
pub mod resolve;
pub mod ring;
pub mod scaler;
pub mod weights;

use anyhow::Context;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
    pub scale_signals: IntCounterVec,
    pub scale_in: IntCounterVec,
    pub publishes: IntCounterVec,
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
            scale_signals: register_int_counter_vec_with_registry!(
                "rtc_lb_scale_signals_total",
                "Scaling decisions carried out or attempted, by direction",
                &["direction"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            scale_in: register_int_counter_vec_with_registry!(
                "rtc_lb_scale_in_total",
                "Scale-ins by outcome: planned (the chosen pod was deleted) or unplanned",
                &["outcome"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            publishes: register_int_counter_vec_with_registry!(
                "rtc_lb_publish_total",
                "Messages through the publish API, by result",
                &["result"],
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
    /// The heartbeats of the last ring round, dead nodes left out (the scaler's input).
    heartbeats: RwLock<Vec<Heartbeat>>,
    /// JWT identity at resolve, when configured.
    pub jwt: Option<rtc_serverkit::auth::Verifier>,
    /// Keys of the publish API (empty: the API is off).
    pub api_keys: publish::ApiKeys,
    /// The Kafka producer, once set up (the publish API uses it).
    pub producer: std::sync::OnceLock<rdkafka::producer::FutureProducer>,
    /// None: the only balancer (no election), always the writer.
    pub leadership: Option<Arc<election::Leadership>>,
    pub metrics: Metrics,
}

impl Balancer {
    pub fn ring(&self) -> Arc<Ring> {
        self.ring
            .read()
            .expect("ring lock is never poisoned")
            .clone()
    }

    /// Takes `ring` if it is newer than the current one (epochs only rise; a ring of an older
    /// term is always older). Returns whether it was taken.
    fn adopt(&self, ring: Ring) -> bool {
        let mut cur = self.ring.write().expect("ring lock is never poisoned");
        if ring.epoch <= cur.epoch || ring.slots() != cur.slots() {
            return false;
        }
        self.metrics.epoch.set(ring.epoch as i64);
        self.metrics.ring_nodes.set(ring.counts().len() as i64);
        *cur = Arc::new(ring);
        true
    }

    /// The term in which this balancer may write now: the current ring's term without leader
    /// election, the valid leader term with it, None for a follower.
    pub fn writer_term(&self) -> Option<u64> {
        match &self.leadership {
            None => Some(self.ring().term()),
            Some(l) => l.term(),
        }
    }

    fn set_nodes(&self, hbs: &[Heartbeat]) {
        *self.live.write().expect("live lock is never poisoned") =
            ring::live(hbs).map(|h| h.node_id.clone()).collect();
        *self
            .heartbeats
            .write()
            .expect("heartbeats lock is never poisoned") = hbs.to_vec();
    }

    /// The heartbeats of the last ring round (dead nodes left out).
    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        self.heartbeats
            .read()
            .expect("heartbeats lock is never poisoned")
            .clone()
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
    let metrics = Metrics::new();
    // Counters with a known label set start at 0, so dashboards and alerts see them at once.
    for d in ["out", "in"] {
        metrics.scale_signals.with_label_values(&[d]);
    }
    for o in ["planned", "unplanned"] {
        metrics.scale_in.with_label_values(&[o]);
    }
    cfg.validate()?;
    let listener = TcpListener::bind(&cfg.listen_addr)
        .await
        .with_context(|| format!("binding LISTEN_ADDR {}", cfg.listen_addr))?;
    let addr = listener.local_addr()?;
    let jwt = rtc_serverkit::auth::Verifier::from_config(&cfg.jwt)?;
    let api_keys = publish::ApiKeys::parse(cfg.publish_api_keys.as_deref().unwrap_or(""))?;
    let bal = Arc::new(Balancer {
        jwt,
        api_keys,
        producer: std::sync::OnceLock::new(),
        secret: cfg.shared.ring_secret.as_bytes().to_vec(),
        ring: RwLock::new(Arc::new(Ring::empty(cfg.shared.slots))),
        live: RwLock::new(HashSet::new()),
        heartbeats: RwLock::new(Vec::new()),
        leadership: cfg
            .enable_leader_election
            .then(|| Arc::new(election::Leadership::default())),
        metrics,
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
        .route("/api/v1/publish", post(publish::publish))
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
        let _ = bal.producer.set(producer.clone());
        let tasks = TaskTracker::new();
        let follow = bal.clone();
        let bootstrap = bal.cfg.shared.kafka_bootstrap.clone();
        let fetch_wait = bal.cfg.shared.kafka_fetch_wait_ms;
        let group = format!("rtc-control-balancer-{}", bal.cfg.identity());
        let stop = cancel.clone();
        tasks.spawn(async move {
            let r = rtc_serverkit::kafka::follow_rings(
                &bootstrap,
                &group,
                fetch_wait,
                Duration::from_millis(200),
                stop,
                |ring| {
                    let epoch = ring.epoch;
                    if follow.adopt(ring) {
                        tracing::debug!(epoch, "ring taken from rtc.control");
                    }
                },
            )
            .await;
            if let Err(e) = r {
                tracing::error!(error = %format!("{e:#}"), "cannot follow rtc.control");
            }
        });
        match &bal.leadership {
            None => bal.metrics.is_leader.set(1),
            Some(leadership) => {
                let client = rtc_serverkit::kube::client(bal.cfg.kubeconfig.as_deref()).await?;
                let api = kube::Api::namespaced(client.clone(), &bal.cfg.kubernetes_namespace);
                if bal.cfg.enable_scaler {
                    tasks.spawn(actuator::run(
                        bal.clone(),
                        client,
                        producer.clone(),
                        cancel.clone(),
                    ));
                }
                let settings = election::Settings {
                    name: bal.cfg.lease_name.clone(),
                    identity: bal.cfg.identity(),
                    lease_duration: Duration::from_secs(bal.cfg.lease_duration_secs),
                    renew_deadline: Duration::from_secs(bal.cfg.lease_renew_deadline_secs),
                    retry_period: Duration::from_secs(bal.cfg.lease_retry_period_secs),
                };
                let gauge = bal.metrics.is_leader.clone();
                tasks.spawn(election::run(
                    api,
                    settings,
                    leadership.clone(),
                    move |leading| gauge.set(leading as i64),
                    cancel.clone(),
                ));
            }
        }
        ring::run(bal.clone(), redis, producer, cancel.clone()).await;
        tasks.close();
        // The election releases the Lease on cancel; bounded by its retry period.
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
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
        let epoch = ring.epoch;
        if bal.adopt(ring) {
            tracing::info!(epoch, "starting from the mirrored ring");
        }
    }
    let producer =
        rtc_serverkit::kafka::producer_config(&cfg.shared.kafka_bootstrap, Duration::from_secs(5))
            .create()
            .context("creating the Kafka producer")?;
    Ok((redis, producer))
}
