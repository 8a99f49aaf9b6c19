//! rtc-gateway: the Pingora proxy that is the only public entry. Resolve goes round-robin to
//! healthy balancers; WebSockets go to the one node discovery knows, through our own splice
//! (see `tunnel.rs` for why); an admin listener reports health, readiness, routes and metrics.

pub mod accept;
pub mod admin;
pub mod config;
pub mod discovery;
pub mod fastpath;
pub mod proxy;
pub mod resolver;
pub mod route;
pub mod tls;
pub mod tunnel;

use async_trait::async_trait;
use config::Config;
use pingora::lb::{health_check::TcpHealthCheck, selection::RoundRobin, LoadBalancer};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use prometheus::{
    register_int_counter_vec_with_registry, register_int_gauge_with_registry, IntCounterVec,
    IntGauge, Registry,
};
use route::Routes;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct Metrics {
    registry: Registry,
    pub active: IntGauge,
    pub upgrades: IntCounterVec,
    pub refused: IntCounterVec,
    pub requests: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    /// Resolves answered in the gateway by result, and those proxied to a balancer (`proxied`).
    pub resolves: IntCounterVec,
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        Metrics {
            active: register_int_gauge_with_registry!(
                "rtc_gateway_active_websockets",
                "Proxied WebSockets open now",
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            upgrades: register_int_counter_vec_with_registry!(
                "rtc_gateway_upgrades_total",
                "WebSocket upgrades by result",
                &["result"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            refused: register_int_counter_vec_with_registry!(
                "rtc_gateway_refused_total",
                "Requests refused by the gateway, by code",
                &["code"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            requests: register_int_counter_vec_with_registry!(
                "rtc_gateway_requests_total",
                "Requests by route",
                &["route"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            resolves: register_int_counter_vec_with_registry!(
                "rtc_gateway_resolve_total",
                "Resolves answered in the gateway, by result; `proxied`: sent to a balancer",
                &["result"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            tls_reloads: register_int_counter_vec_with_registry!(
                "rtc_gateway_tls_reloads_total",
                "Certificate reloads after the files changed, by result (ok, failed)",
                &["result"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            registry,
        }
    }

    pub fn render(&self) -> String {
        rtc_serverkit::telemetry::render(&self.registry)
    }
}

/// State shared by the proxy, the admin listener and the shutdown sequence.
pub struct Gateway {
    pub cfg: Config,
    pub routes: Arc<Routes>,
    pub balancers: Arc<LoadBalancer<RoundRobin>>,
    /// Open WebSocket tunnels.
    pub active: AtomicUsize,
    /// False once shutdown began: /readyz fails and new upgrades are refused.
    pub ready: AtomicBool,
    /// Set to true to close every tunnel with 1001.
    pub going_away: tokio_util::sync::CancellationToken,
    /// Every tunnel task, so shutdown can wait for their close frames.
    pub tunnels: tokio_util::task::TaskTracker,
    pub metrics: Metrics,
    /// RING_SECRET, for the tokens of resolves answered here.
    pub secret: Vec<u8>,
    /// JWT identity at resolve, when configured.
    pub jwt: Option<rtc_serverkit::auth::Verifier>,
    /// The ring and the agreement with the balancers (`resolver.rs`).
    pub local: resolver::LocalResolve,
}

/// Keeps the route table fresh, inside Pingora's service lifecycle.
struct DiscoveryService {
    discovery: Arc<dyn discovery::Discovery>,
    routes: Arc<Routes>,
    interval: Duration,
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, shutdown: ShutdownWatch) {
        discovery::run(
            self.discovery.clone(),
            self.routes.clone(),
            self.interval,
            shutdown,
        )
        .await;
    }
}

/// What starts the shutdown sequence: OS signals, or a test's trigger.
pub enum Trigger {
    Signals,
    Manual(watch::Receiver<bool>),
}

/// The shutdown sequence, run before Pingora closes its listeners (which would otherwise close
/// readiness and reset every WebSocket at once):
/// 1. readiness fails and new upgrades are refused, so load balancers stop sending clients;
/// 2. after SHUTDOWN_DELAY_SECS every tunnel gets a 1001 close frame at a frame boundary;
/// 3. we wait up to SHUTDOWN_GRACE_SECS for tunnels to finish, then let Pingora stop.
struct Shutdown {
    gw: Arc<Gateway>,
    trigger: tokio::sync::Mutex<Trigger>,
}

#[async_trait]
impl ShutdownSignalWatch for Shutdown {
    async fn recv(&self) -> ShutdownSignal {
        match &mut *self.trigger.lock().await {
            Trigger::Signals => {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler installs");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Trigger::Manual(rx) => {
                let _ = rx.wait_for(|v| *v).await;
            }
        }
        let gw = &self.gw;
        gw.ready.store(false, Ordering::Relaxed);
        tracing::info!(
            websockets = gw.active.load(Ordering::Relaxed),
            "gateway shutting down: readiness off"
        );
        tokio::time::sleep(Duration::from_secs(gw.cfg.shutdown_delay_secs)).await;
        gw.going_away.cancel();
        gw.tunnels.close();
        let grace = Duration::from_secs(gw.cfg.shutdown_grace_secs);
        let _ = tokio::time::timeout(grace, gw.tunnels.wait()).await;
        tracing::info!(
            left = gw.active.load(Ordering::Relaxed),
            "gateway WebSockets closed"
        );
        ShutdownSignal::GracefulTerminate
    }
}

/// A gateway ready to run (blocking) on its own thread.
pub struct Built {
    server: Server,
    pub gw: Arc<Gateway>,
    trigger: Trigger,
}

pub fn build(cfg: Config, trigger: Trigger) -> anyhow::Result<Built> {
    cfg.validate()?;
    let conf = ServerConf {
        threads: cfg.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(2),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut lb =
        LoadBalancer::<RoundRobin>::try_from_iter(cfg.balancer_addrs.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("BALANCER_ADDRS: {e}"))?;
    lb.set_health_check(TcpHealthCheck::new());
    lb.health_check_frequency = Some(Duration::from_secs(1));
    let lb_service = background_service("balancer health", lb);
    let balancers = lb_service.task();

    let jwt = rtc_serverkit::auth::Verifier::from_config(&cfg.jwt)?;
    let gw = Arc::new(Gateway {
        secret: cfg.ring_secret.as_bytes().to_vec(),
        jwt,
        local: resolver::LocalResolve::new(),
        routes: Arc::new(Routes::default()),
        balancers,
        active: AtomicUsize::new(0),
        ready: AtomicBool::new(true),
        going_away: tokio_util::sync::CancellationToken::new(),
        tunnels: tokio_util::task::TaskTracker::new(),
        metrics: Metrics::new(),
        cfg,
    });
    let source: Arc<dyn discovery::Discovery> = match gw.cfg.discovery.as_str() {
        "kube" => Arc::new(discovery::Kube::new(
            &gw.cfg.kubernetes_namespace,
            &gw.cfg.socket_service_name,
            gw.cfg.kubeconfig.clone(),
        )),
        _ => Arc::new(discovery::Local::new(
            &gw.cfg.redis_url,
            Duration::from_secs(gw.cfg.redis_loss_grace_secs),
        )),
    };
    let disc = background_service(
        "discovery",
        DiscoveryService {
            discovery: source,
            routes: gw.routes.clone(),
            interval: Duration::from_millis(gw.cfg.discovery_interval_ms),
        },
    );

    // Unbuffered reads on TLS client sockets: Pingora's default 64 KiB L4 read buffer would stay
    // allocated for every open WebSocket (plain TCP ones are `accept::ClientConn`s).
    let l4 = pingora::protocols::l4::stream::L4BufferSettings::new(
        0,
        pingora::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE,
    );
    // Validation made the three TLS settings all-or-nothing.
    let tls = match (
        &gw.cfg.tls_listen_addr,
        &gw.cfg.tls_cert_file,
        &gw.cfg.tls_key_file,
    ) {
        (Some(addr), Some(cert), Some(key)) => {
            Some((addr.clone(), tls::Certs::open(cert.clone(), key.clone())?))
        }
        _ => None,
    };
    // Plain TCP: our own accept loops, one per thread (`accept.rs`). TLS: Pingora's listening
    // service, which does the handshakes.
    let app = {
        let mut app = pingora::proxy::HttpProxy::new(
            proxy::Proxy { gw: gw.clone() },
            server.configuration.clone(),
        );
        app.handle_init_modules();
        Arc::new(app)
    };
    let acceptors: Vec<_> = accept::bind(&gw.cfg.listen_addr, gw.cfg.threads)?
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let name = format!("accept-{i}");
            background_service(
                &name,
                accept::Acceptor::new(name.clone(), socket, app.clone()),
            )
        })
        .collect();
    let mut tls_proxy = None;
    let mut reloader = None;
    if let Some((addr, certs)) = tls {
        let mut proxy = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            proxy::Proxy { gw: gw.clone() },
            "tls",
        );
        proxy.add_listener(
            pingora::listeners::ListenerConfig::tcp(addr)
                .l4_buffer(l4)
                .tls(tls::settings(certs.clone())?),
        );
        tls_proxy = Some(proxy);
        for r in ["ok", "failed"] {
            gw.metrics.tls_reloads.with_label_values(&[r]);
        }
        reloader = Some(background_service(
            "tls-reload",
            tls::Reloader {
                certs,
                every: Duration::from_secs(gw.cfg.tls_reload_secs),
                metrics: gw.metrics.tls_reloads.clone(),
            },
        ));
    }
    let mut admin = pingora::services::listening::Service::new(
        "admin".to_string(),
        admin::Admin { gw: gw.clone() },
    );
    admin.add_tcp(&gw.cfg.admin_addr);
    admin.threads = Some(1);

    let lb_handle = server.add_service(lb_service);
    server.add_service(disc);
    if gw.cfg.resolve_in_gateway {
        server.add_service(background_service(
            "ring follower",
            resolver::Follower { gw: gw.clone() },
        ));
    }
    if let Some(r) = reloader {
        server.add_service(r);
    }
    for a in acceptors {
        server.add_service(a).add_dependency(&lb_handle);
    }
    if let Some(proxy) = tls_proxy {
        server.add_service(proxy).add_dependency(&lb_handle);
    }
    server.add_service(admin);
    Ok(Built {
        server,
        gw,
        trigger,
    })
}

impl Built {
    /// Runs until the trigger fires and the shutdown sequence ends. Blocks the thread; call it
    /// outside any Tokio runtime.
    pub fn run(self) {
        let Built {
            server,
            gw,
            trigger,
        } = self;
        tracing::info!(listen = %gw.cfg.listen_addr, admin = %gw.cfg.admin_addr, "gateway listening");
        server.run(RunArgs {
            shutdown_signal: Box::new(Shutdown {
                gw,
                trigger: tokio::sync::Mutex::new(trigger),
            }),
        });
    }
}
