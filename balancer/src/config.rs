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
    /// Namespace of the Lease and of the socket Deployment.
    #[arg(long, env = "KUBERNETES_NAMESPACE", default_value = "rtc")]
    pub kubernetes_namespace: String,
    /// A kubeconfig file; unset: the in-cluster service account (or the usual kubeconfig lookup).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Name of the leader Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "load-balancer-leader")]
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name through the downward API); default:
    /// host name and process id.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// How long a Lease holds without renewal before another replica may take it, seconds.
    #[arg(long, env = "LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// A leader that has not renewed for this long stops writing, seconds.
    #[arg(long, env = "LEASE_RENEW_DEADLINE_SECS", default_value_t = 10)]
    pub lease_renew_deadline_secs: u64,
    /// How often the Lease is tried and renewed, seconds.
    #[arg(long, env = "LEASE_RETRY_PERIOD_SECS", default_value_t = 2)]
    pub lease_retry_period_secs: u64,
    /// The socket Deployment the leader scales.
    #[arg(long, env = "SOCKET_WORKLOAD_NAME", default_value = "socket")]
    pub socket_workload_name: String,
    /// Fewest socket replicas the leader keeps.
    #[arg(long, env = "SOCKET_MIN_REPLICAS", default_value_t = 2)]
    pub socket_min_replicas: u32,
    /// Most socket replicas the leader runs.
    #[arg(long, env = "SOCKET_MAX_REPLICAS", default_value_t = 50)]
    pub socket_max_replicas: u32,
    /// Scale the socket Deployment (leader only, with leader election); false: the ring only.
    #[arg(long, env = "ENABLE_SCALER", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_scaler: bool,
    /// How often the leader takes a scaling decision, seconds.
    #[arg(long, env = "SCALE_INTERVAL_SECS", default_value_t = 15)]
    pub scale_interval_secs: u64,
    /// No scale-in within this long after a scale-out, seconds.
    #[arg(long, env = "SCALE_IN_COOLDOWN_SECS", default_value_t = 300)]
    pub scale_in_cooldown_secs: u64,
    /// Scale in only if the remaining pods would stay under this fraction of their capacity.
    #[arg(long, env = "SCALE_IN_HEADROOM", default_value_t = 0.9)]
    pub scale_in_headroom: f64,
    /// Memory one socket node is sized for, MiB (its memory limit).
    #[arg(long, env = "MEM_PER_POD_MIB", default_value_t = 1024)]
    pub mem_per_pod_mib: u64,
    /// A scale-in must fit the peak load of this many seconds on one pod fewer.
    #[arg(long, env = "SCALE_IN_WINDOW_SECS", default_value_t = 600)]
    pub scale_in_window_secs: u64,
    /// Kafka lag (records behind, summed over a node's partitions) one socket node is sized for.
    #[arg(long, env = "LAG_PER_POD", default_value_t = 10000)]
    pub lag_per_pod: u64,
    /// Name of a backup HorizontalPodAutoscaler (KEDA's) on the socket Deployment; the leader never
    /// scales below its desired replicas. Empty: none.
    #[arg(long, env = "BACKUP_HPA_NAME", default_value = "keda-hpa-socket")]
    pub backup_hpa_name: String,
    #[command(flatten)]
    pub jwt: rtc_serverkit::auth::JwtArgs,
    /// API keys of the publish API, `name:key,name:key` (keys at least 16 bytes; the name is
    /// the default `from`). Unset: POST /api/v1/publish answers 401.
    #[arg(long, env = "PUBLISH_API_KEYS", hide_env_values = true)]
    pub publish_api_keys: Option<String>,
    /// Largest `data` one published message may carry, bytes.
    #[arg(long, env = "PUBLISH_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub publish_max_message_bytes: usize,
    /// How long a publish waits for Kafka before answering kafka_unavailable, ms.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,
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
            self.lease_duration_secs > self.lease_renew_deadline_secs
                && self.lease_renew_deadline_secs as f64 > 1.2 * self.lease_retry_period_secs as f64
                && self.lease_retry_period_secs > 0,
            "need LEASE_DURATION_SECS > LEASE_RENEW_DEADLINE_SECS > 1.2 x LEASE_RETRY_PERIOD_SECS > 0"
        );
        anyhow::ensure!(
            1 <= self.socket_min_replicas && self.socket_min_replicas <= self.socket_max_replicas,
            "need 1 <= SOCKET_MIN_REPLICAS <= SOCKET_MAX_REPLICAS"
        );
        anyhow::ensure!(
            self.scale_in_headroom > 0.0 && self.scale_in_headroom < 1.0,
            "SCALE_IN_HEADROOM must be in (0, 1)"
        );
        anyhow::ensure!(
            self.scale_interval_secs > 0 && self.lag_per_pod > 0 && self.mem_per_pod_mib > 0,
            "SCALE_INTERVAL_SECS, LAG_PER_POD and MEM_PER_POD_MIB must be positive"
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

    /// What one socket node is sized for, as the scaler sees it.
    pub fn pod_capacity(&self) -> crate::scaler::PodCapacity {
        crate::scaler::PodCapacity {
            conns: self.conn_per_pod as f64,
            mps: self.mps_per_pod as f64,
            cpu: self.cpu_per_pod,
            mem_bytes: self.mem_per_pod_mib as f64 * 1024.0 * 1024.0,
            lag: self.lag_per_pod as f64,
            slo_ms: self.l_slo_ms as f64,
        }
    }

    /// The scaler's policy.
    pub fn scale_policy(&self) -> crate::scaler::Policy {
        crate::scaler::Policy {
            min: self.socket_min_replicas,
            max: self.socket_max_replicas,
            headroom: self.scale_in_headroom,
            cooldown_secs: self.scale_in_cooldown_secs as f64,
            in_window_secs: self.scale_in_window_secs as f64,
        }
    }

    /// This replica's identity in the Lease.
    pub fn identity(&self) -> String {
        self.pod_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "balancer".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// Defaults plus the given endpoints, on an ephemeral port.
    pub fn for_tests(kafka: &str, redis: &str) -> Self {
        let mut c = Config::parse_from(["rtc-balancer"]);
        c.shared.kafka_bootstrap = kafka.into();
        c.shared.kafka_fetch_wait_ms = rtc_serverkit::config::MOCK_KAFKA_FETCH_WAIT_MS;
        c.shared.redis_url = redis.into();
        c.listen_addr = "127.0.0.1:0".into();
        c.ring_interval_ms = 200;
        c
    }
}
