//! rtc-gateway settings: one flag and one env var each, defaults that work on a laptop.

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rtc-gateway",
    about = "Reactive RTC gateway (Pingora)",
    version
)]
pub struct Config {
    /// Public listener (clients connect here).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: String,
    /// Admin listener: /healthz, /readyz, /routes, /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: String,
    /// Balancer addresses (`host:port`, comma separated) that serve /api/v1/resolve; a host name
    /// (on Kubernetes, the balancers' ClusterIP Service) is resolved once at start.
    #[arg(
        long,
        env = "BALANCER_ADDRS",
        default_value = "127.0.0.1:8081",
        value_delimiter = ','
    )]
    pub balancer_addrs: Vec<String>,
    /// How socket nodes are found: `local` (heartbeats in Redis) or `kube` (the EndpointSlices
    /// of the socket nodes' headless Service, watched).
    #[arg(long, env = "DISCOVERY", default_value = "local")]
    pub discovery: String,
    /// Namespace of the socket nodes' Service (kube discovery).
    #[arg(long, env = "KUBERNETES_NAMESPACE", default_value = "rtc")]
    pub kubernetes_namespace: String,
    /// Name of the socket nodes' headless Service (kube discovery).
    #[arg(long, env = "SOCKET_SERVICE_NAME", default_value = "socket")]
    pub socket_service_name: String,
    /// A kubeconfig file for kube discovery; unset: in-cluster service account (or the usual
    /// kubeconfig lookup).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Redis URL, for local discovery.
    #[arg(long, env = "REDIS_URL", default_value = rtc_serverkit::config::DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// How often discovery refreshes the route table, milliseconds.
    #[arg(long, env = "DISCOVERY_INTERVAL_MS", default_value_t = 1000)]
    pub discovery_interval_ms: u64,
    /// After Redis lost its data (restart, flush, failover), how long routes that vanished with
    /// it are kept while nodes heartbeat again, seconds (local discovery).
    #[arg(long, env = "REDIS_LOSS_GRACE_SECS", default_value_t = 6)]
    pub redis_loss_grace_secs: u64,
    /// A proxied WebSocket silent this long in both directions is closed, seconds.
    #[arg(long, env = "WS_IDLE_TIMEOUT_SECS", default_value_t = 4 * 3600)]
    pub ws_idle_timeout_secs: u64,
    /// Most proxied WebSockets at once; above it upgrades get 503.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Threads of the public listener, each serving its own share of the connections.
    #[arg(long, env = "THREADS", default_value_t = 2)]
    pub threads: usize,
    /// On SIGTERM: seconds readiness fails before WebSockets are closed (so load balancers stop
    /// sending new clients first).
    #[arg(long, env = "SHUTDOWN_DELAY_SECS", default_value_t = 5)]
    pub shutdown_delay_secs: u64,
    /// On SIGTERM: seconds to wait for closed WebSockets to finish before exiting.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// HMAC key of connection tokens (the balancers' and socket nodes' RING_SECRET): with it the
    /// gateway answers resolve itself once it has checked that the balancers agree.
    #[arg(long, env = "RING_SECRET", default_value = rtc_serverkit::config::DEFAULT_RING_SECRET, hide_env_values = true)]
    pub ring_secret: String,
    /// Answer resolve in the gateway (false: always proxy it to a balancer).
    #[arg(long, env = "RESOLVE_IN_GATEWAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub resolve_in_gateway: bool,
    /// Lifetime of the connection tokens the gateway signs, seconds (as the balancers').
    #[arg(long, env = "TOKEN_TTL_SECS", default_value_t = 60)]
    pub token_ttl_secs: u64,
    #[command(flatten)]
    pub jwt: rtc_serverkit::auth::JwtArgs,
    /// Address of the `wss://` (TLS) listener; unset: plain `ws://` on LISTEN_ADDR only.
    #[arg(long, env = "TLS_LISTEN_ADDR")]
    pub tls_listen_addr: Option<String>,
    /// PEM certificate chain of the TLS listener (leaf first).
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of the TLS listener.
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// How often the certificate files are checked for a renewal, seconds.
    #[arg(long, env = "TLS_RELOAD_SECS", default_value_t = 10)]
    pub tls_reload_secs: u64,
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.balancer_addrs.is_empty(),
            "BALANCER_ADDRS must name at least one balancer"
        );
        for a in &self.balancer_addrs {
            // `ip:port` or `name:port`: a name (a Kubernetes Service) is resolved once at start.
            let port = a.rsplit_once(':').and_then(|(h, p)| {
                (!h.is_empty()).then_some(())?;
                p.parse::<u16>().ok()
            });
            anyhow::ensure!(
                port.is_some(),
                "BALANCER_ADDRS entry {a:?} is not host:port"
            );
        }
        anyhow::ensure!(
            self.discovery == "local" || self.discovery == "kube",
            "DISCOVERY must be `local` or `kube`, got {:?}",
            self.discovery
        );
        anyhow::ensure!(self.max_connections > 0, "MAX_CONNECTIONS must be positive");
        anyhow::ensure!(self.threads > 0, "THREADS must be positive");
        anyhow::ensure!(
            self.ws_idle_timeout_secs > 0,
            "WS_IDLE_TIMEOUT_SECS must be positive"
        );
        anyhow::ensure!(
            self.tls_listen_addr.is_some()
                == (self.tls_cert_file.is_some() && self.tls_key_file.is_some())
                && self.tls_cert_file.is_some() == self.tls_key_file.is_some(),
            "TLS_LISTEN_ADDR, TLS_CERT_FILE and TLS_KEY_FILE go together: set all three or none"
        );
        anyhow::ensure!(self.tls_reload_secs > 0, "TLS_RELOAD_SECS must be positive");
        anyhow::ensure!(
            !self.ring_secret.is_empty(),
            "RING_SECRET must not be empty"
        );
        anyhow::ensure!(
            self.token_ttl_secs >= 5,
            "TOKEN_TTL_SECS must be at least 5"
        );
        Ok(())
    }

    /// Defaults for tests: the given listeners and neighbours, short shutdown.
    pub fn for_tests(listen: &str, admin: &str, balancer: &str, redis: &str) -> Self {
        let mut c = Config::parse_from(["rtc-gateway"]);
        c.listen_addr = listen.into();
        c.admin_addr = admin.into();
        c.balancer_addrs = vec![balancer.into()];
        c.redis_url = redis.into();
        c.discovery_interval_ms = 200;
        c.shutdown_delay_secs = 0;
        c.shutdown_grace_secs = 3;
        c
    }
}
