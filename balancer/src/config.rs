//! rtc-balancer settings: one flag and one env var each, defaults that work on a laptop.

use clap::Parser;
use rtc_serverkit::config::Shared;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rtc-balancer",
    about = "Reactive RTC balancer: resolve and the slot ring",
    version
)]
pub struct Config {
    #[command(flatten)]
    pub shared: Shared,
    /// Address the HTTP listener binds.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8081")]
    pub listen_addr: String,
    /// Elect one leader through a Kubernetes Lease; false runs a single balancer without Kubernetes.
    #[arg(long, env = "ENABLE_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_leader_election: bool,
    /// Connections one socket node is sized for.
    #[arg(long, env = "CONN_PER_POD", default_value_t = 5000)]
    pub conn_per_pod: u64,
    /// Messages per second one socket node is sized for.
    #[arg(long, env = "MPS_PER_POD", default_value_t = 2500)]
    pub mps_per_pod: u64,
    /// CPU cores one socket node is sized for (its CPU limit).
    #[arg(long, env = "CPU_PER_POD", default_value_t = 1.0)]
    pub cpu_per_pod: f64,
    /// Delivery latency objective, milliseconds.
    #[arg(long, env = "L_SLO_MS", default_value_t = 500)]
    pub l_slo_ms: u64,
    /// How often the ring is recomputed from heartbeats, milliseconds.
    #[arg(long, env = "RING_INTERVAL_MS", default_value_t = 1000)]
    pub ring_interval_ms: u64,
    /// Timeout of the connection probe sent to every node each ring interval, milliseconds
    /// (refused: dead at once; three timeouts in a row: dead).
    #[arg(long, env = "NODE_PROBE_TIMEOUT_MS", default_value_t = 500)]
    pub node_probe_timeout_ms: u64,
    /// After Redis lost its data (restart, flush, failover), how long the ring and the live set
    /// are held while nodes heartbeat again, seconds.
    #[arg(long, env = "REDIS_LOSS_GRACE_SECS", default_value_t = 6)]
    pub redis_loss_grace_secs: u64,
    /// Most slots moved per interval for load reasons (dead or draining nodes' slots move at once).
    #[arg(long, env = "MAX_MOVES_PER_INTERVAL", default_value_t = 16)]
    pub max_moves_per_interval: usize,
    /// Relative weight change needed before the ring follows it (hysteresis).
    #[arg(long, env = "WEIGHT_HYSTERESIS", default_value_t = 0.25)]
    pub weight_hysteresis: f64,
    /// Lifetime of connection tokens, seconds.
    #[arg(long, env = "TOKEN_TTL_SECS", default_value_t = 60)]
    pub token_ttl_secs: u64,
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.shared.validate()?;
        anyhow::ensure!(
            !self.enable_leader_election,
            "ENABLE_LEADER_ELECTION=true needs the Kubernetes Lease support, which this build does not have yet; set it to false and run one balancer"
        );
        anyhow::ensure!(
            self.conn_per_pod > 0 && self.mps_per_pod > 0 && self.l_slo_ms > 0,
            "CONN_PER_POD, MPS_PER_POD and L_SLO_MS must be positive"
        );
        anyhow::ensure!(self.cpu_per_pod > 0.0, "CPU_PER_POD must be positive");
        anyhow::ensure!(
            self.ring_interval_ms >= 50,
            "RING_INTERVAL_MS must be at least 50"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.weight_hysteresis),
            "WEIGHT_HYSTERESIS must be in [0, 1)"
        );
        anyhow::ensure!(
            self.token_ttl_secs >= 5,
            "TOKEN_TTL_SECS must be at least 5"
        );
        Ok(())
    }

    /// Defaults plus the given endpoints, on an ephemeral port.
    pub fn for_tests(kafka: &str, redis: &str) -> Self {
        let mut c = Config::parse_from(["rtc-balancer"]);
        c.shared.kafka_bootstrap = kafka.into();
        c.shared.redis_url = redis.into();
        c.listen_addr = "127.0.0.1:0".into();
        c.ring_interval_ms = 200;
        c
    }
}
