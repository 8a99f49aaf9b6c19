//! rtc-socket settings: one flag and one env var each, defaults that work on a laptop.

use clap::Parser;
use rtc_serverkit::config::Shared;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(name = "rtc-socket", about = "Reactive RTC socket node", version)]
pub struct Config {
    #[command(flatten)]
    pub shared: Shared,
    /// This node's id (the pod name on Kubernetes); random when unset.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// Address the client/admin listener binds.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8090")]
    pub listen_addr: String,
    /// `host:port` the gateway uses to reach this node; the bound address when unset.
    #[arg(long, env = "ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Connections one node is sized for (load = connections / this).
    #[arg(long, env = "CONN_PER_POD", default_value_t = 5000)]
    pub conn_per_pod: u64,
    /// Messages per second one node is sized for.
    #[arg(long, env = "MPS_PER_POD", default_value_t = 2500)]
    pub mps_per_pod: u64,
    /// Delivery latency objective, milliseconds.
    #[arg(long, env = "L_SLO_MS", default_value_t = 500)]
    pub l_slo_ms: u64,
    /// Hard cap on open client connections; above it new ones get 503.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// Largest accepted WebSocket message, bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,
    /// Bytes queued for one client before it is closed as a slow consumer.
    #[arg(long, env = "SEND_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub send_queue_bytes: usize,
    /// Sustained frames per second one client may send.
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 100)]
    pub rate_limit_per_sec: u32,
    /// Burst allowance on top of the rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,
    /// How long (ms) the broker may hold a fetch of the owned slots to gather a batch (64 KiB)
    /// while records are arriving; 0 (the default) has every fetch answered at the first record.
    /// Batching costs up to this much delivery latency and an empty fetch every this many ms on
    /// an idle node, and at moderate rates saves consumer CPU and tail latency: librdkafka walks
    /// every owned partition on each fetch, and without it each fetch carries one or two
    /// records (docs/benchmarks.md, "Batching the deliver consumer's fetches"). Bounded by
    /// KAFKA_FETCH_WAIT_MS.
    #[arg(long, env = "DELIVER_FETCH_BATCH_MS", default_value_t = 0)]
    pub deliver_fetch_batch_ms: u32,
    /// Messages kept per slot for resume.
    #[arg(long, env = "HISTORY_MAX_MESSAGES", default_value_t = 1000)]
    pub history_max_messages: usize,
    /// Age after which history is dropped, seconds.
    #[arg(long, env = "HISTORY_MAX_AGE_SECS", default_value_t = 300)]
    pub history_max_age_secs: u64,
    /// Room messages kept per room for `join` with `since`/`last` (every node keeps every
    /// room's).
    #[arg(long, env = "ROOM_HISTORY_MAX_MESSAGES", default_value_t = 100)]
    pub room_history_max_messages: usize,
    /// Age after which room history is dropped, seconds.
    #[arg(long, env = "ROOM_HISTORY_MAX_AGE_SECS", default_value_t = 600)]
    pub room_history_max_age_secs: u64,
    /// All rooms' history on the node together, in bytes (frames plus a per-message overhead);
    /// past it the node-wide oldest messages are dropped first.
    #[arg(long, env = "ROOM_HISTORY_MAX_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub room_history_max_bytes: usize,
    /// At start, the rooms reader reads at most this many records back per `rtc.rooms`
    /// partition to fill the room history.
    #[arg(long, env = "ROOM_REPLAY_MAX_RECORDS", default_value_t = 50_000)]
    pub room_replay_max_records: i64,
    /// Most members a `presence` answer names.
    #[arg(long, env = "PRESENCE_MAX_MEMBERS", default_value_t = 1000)]
    pub presence_max_members: usize,
    /// A resume older than the history reads the partition back from Kafka: at most this many
    /// of the client's messages (more: `recovered:false` and the history only).
    #[arg(long, env = "READBACK_MAX_MESSAGES", default_value_t = 10_000)]
    pub readback_max_messages: usize,
    /// … scanning at most this many records of the slot's partition.
    #[arg(long, env = "READBACK_MAX_RECORDS", default_value_t = 500_000)]
    pub readback_max_records: usize,
    /// … within this many milliseconds.
    #[arg(long, env = "READBACK_TIMEOUT_MS", default_value_t = 10_000)]
    pub readback_timeout_ms: u64,
    /// Read-backs running at once on a node (more wait their turn).
    #[arg(long, env = "READBACK_CONCURRENCY", default_value_t = 4)]
    pub readback_concurrency: usize,
    /// Time over which a drain moves all clients, seconds.
    #[arg(long, env = "DRAIN_DURATION", default_value_t = 300)]
    pub drain_duration_secs: u64,
    /// Time over which clients of a slot that moved away are told to move, seconds.
    #[arg(long, env = "MOVE_PACE_SECS", default_value_t = 5)]
    pub move_pace_secs: u64,
    /// Largest random delay a `move` asks a client to wait, milliseconds.
    #[arg(long, env = "MOVE_JITTER_MS", default_value_t = 1000)]
    pub move_jitter_ms: u64,
    /// Heartbeat period, milliseconds.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 2000)]
    pub heartbeat_interval_ms: u64,
    /// Heartbeat key lifetime, seconds: a dead node vanishes after this.
    #[arg(long, env = "HEARTBEAT_TTL_SECS", default_value_t = 10)]
    pub heartbeat_ttl_secs: u64,
    /// How long a send may wait for Kafka before the client gets a retryable error, ms.
    #[arg(long, env = "KAFKA_SEND_TIMEOUT_MS", default_value_t = 5000)]
    pub kafka_send_timeout_ms: u64,
    /// tungstenite read buffer per connection, bytes (its default of 128 KiB is resident).
    #[arg(long, env = "WS_READ_BUFFER_BYTES", default_value_t = 2048)]
    pub ws_read_buffer_bytes: usize,
    /// How long shutdown waits, in all, for connections to close and Kafka to confirm what is
    /// queued, seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 5)]
    pub shutdown_grace_secs: u64,
    /// Interval of server pings to detect dead clients, seconds.
    #[arg(long, env = "PING_INTERVAL_SECS", default_value_t = 30)]
    pub ping_interval_secs: u64,
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.shared.validate()?;
        anyhow::ensure!(self.max_connections > 0, "MAX_CONNECTIONS must be positive");
        anyhow::ensure!(
            self.deliver_fetch_batch_ms <= 1000,
            "DELIVER_FETCH_BATCH_MS must be 0..=1000, got {}",
            self.deliver_fetch_batch_ms
        );
        anyhow::ensure!(
            self.max_message_bytes >= 256,
            "MAX_MESSAGE_BYTES must be at least 256"
        );
        anyhow::ensure!(
            self.send_queue_bytes >= self.max_message_bytes,
            "SEND_QUEUE_BYTES must be at least MAX_MESSAGE_BYTES"
        );
        anyhow::ensure!(
            self.rate_limit_per_sec > 0,
            "RATE_LIMIT_PER_SEC must be positive"
        );
        anyhow::ensure!(
            self.history_max_messages > 0,
            "HISTORY_MAX_MESSAGES must be positive"
        );
        anyhow::ensure!(
            self.room_history_max_messages > 0,
            "ROOM_HISTORY_MAX_MESSAGES must be positive"
        );
        anyhow::ensure!(
            self.room_history_max_bytes >= 64 * 1024,
            "ROOM_HISTORY_MAX_BYTES must be at least 65536 (64 KiB), got {}",
            self.room_history_max_bytes
        );
        anyhow::ensure!(
            self.room_replay_max_records >= 0,
            "ROOM_REPLAY_MAX_RECORDS must not be negative"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.presence_max_members),
            "PRESENCE_MAX_MEMBERS must be 1..=10000"
        );
        anyhow::ensure!(
            self.heartbeat_interval_ms >= 100,
            "HEARTBEAT_INTERVAL_MS must be at least 100"
        );
        anyhow::ensure!(
            self.heartbeat_ttl_secs * 1000 > self.heartbeat_interval_ms * 2,
            "HEARTBEAT_TTL_SECS must cover at least two heartbeat intervals"
        );
        anyhow::ensure!(
            self.ws_read_buffer_bytes >= 256,
            "WS_READ_BUFFER_BYTES must be at least 256"
        );
        if let Some(id) = &self.node_id {
            anyhow::ensure!(
                !id.is_empty()
                    && id.len() <= 253
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
                "NODE_ID must be a DNS-style name (letters, digits, '-', '.'), got {id:?}"
            );
        }
        Ok(())
    }

    pub fn kafka_send_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_send_timeout_ms)
    }

    /// A config for tests and embedding: defaults plus the given overrides.
    pub fn for_tests(kafka: &str, redis: &str) -> Self {
        let mut c = Config::parse_from(["rtc-socket"]);
        c.shared.kafka_bootstrap = kafka.into();
        // Short enough for librdkafka's mock (RTC_TEST_KAFKA=mock), which holds every fetch the
        // whole wait; the embedded broker and a real one only poll more often with it.
        c.shared.kafka_fetch_wait_ms = rtc_serverkit::config::MOCK_KAFKA_FETCH_WAIT_MS;
        c.shared.redis_url = redis.into();
        c.listen_addr = "127.0.0.1:0".into();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_history_byte_bound_is_checked() {
        let mut c = Config::for_tests("127.0.0.1:9092", "redis://127.0.0.1/");
        c.validate().expect("the defaults are valid");
        c.room_history_max_bytes = 64 * 1024 - 1;
        let err = c
            .validate()
            .expect_err("under 64 KiB is refused")
            .to_string();
        assert!(err.contains("ROOM_HISTORY_MAX_BYTES"), "{err}");
    }

    #[test]
    fn the_deliver_fetch_batch_is_bounded() {
        let mut c = Config::for_tests("127.0.0.1:9092", "redis://127.0.0.1/");
        assert_eq!(c.deliver_fetch_batch_ms, 0, "off unless asked for");
        c.deliver_fetch_batch_ms = 1000;
        c.validate().expect("a second is allowed");
        c.deliver_fetch_batch_ms = 1001;
        let err = c
            .validate()
            .expect_err("over a second is refused")
            .to_string();
        assert!(err.contains("DELIVER_FETCH_BATCH_MS"), "{err}");
    }
}
