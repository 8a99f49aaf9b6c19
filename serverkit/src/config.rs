//! Settings every service shares. Each is a CLI flag and an env var with a laptop default.

use rtc_protocol::slot::DEFAULT_SLOTS;

pub const DEFAULT_KAFKA_BOOTSTRAP: &str = "127.0.0.1:9092";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Only for local runs: every deployment must set its own RING_SECRET.
pub const DEFAULT_RING_SECRET: &str = "local-dev-ring-secret";
/// KAFKA_FETCH_WAIT_MS for a real broker.
pub const DEFAULT_KAFKA_FETCH_WAIT_MS: u32 = 500;
/// KAFKA_FETCH_WAIT_MS for librdkafka's embedded mock cluster, which holds every fetch this long.
pub const MOCK_KAFKA_FETCH_WAIT_MS: u32 = 10;

#[derive(clap::Args, Debug, Clone)]
pub struct Shared {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = DEFAULT_KAFKA_BOOTSTRAP)]
    pub kafka_bootstrap: String,
    /// Redis URL for heartbeats, sessions and the ring mirror.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// HMAC key for connection tokens; balancers and socket nodes must share it.
    #[arg(long, env = "RING_SECRET", default_value = DEFAULT_RING_SECRET, hide_env_values = true)]
    pub ring_secret: String,
    /// Number of slots, equal to the partitions of `rtc.deliver`.
    #[arg(long, env = "SLOTS", default_value_t = DEFAULT_SLOTS)]
    pub slots: u32,
    /// Longest time (ms) a consumer's fetch may wait at the broker when there is no data. A
    /// real broker answers as soon as a record arrives, so this only bounds idle polling (500,
    /// Kafka's own default: an idle node fetches twice a second per consumer); the embedded mock
    /// cluster always waits it out, so there it adds up to this much latency and the local
    /// stack and the tests set 10.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MS", default_value_t = DEFAULT_KAFKA_FETCH_WAIT_MS)]
    pub kafka_fetch_wait_ms: u32,
}

impl Shared {
    /// Checks the values once at start; the message names the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=4096).contains(&self.slots),
            "SLOTS must be 1..=4096, got {}",
            self.slots
        );
        anyhow::ensure!(
            !self.ring_secret.is_empty(),
            "RING_SECRET must not be empty"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.kafka_fetch_wait_ms),
            "KAFKA_FETCH_WAIT_MS must be 1..=10000, got {}",
            self.kafka_fetch_wait_ms
        );
        anyhow::ensure!(
            !self.kafka_bootstrap.is_empty(),
            "KAFKA_BOOTSTRAP must not be empty"
        );
        redis::Client::open(self.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("REDIS_URL is invalid: {e}"))?;
        Ok(())
    }
}
