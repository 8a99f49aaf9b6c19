//! Prometheus metrics of one socket node (names kept from the documented design), in a
//! registry per node so several nodes can live in one test process.

use prometheus::{
    register_gauge_vec_with_registry, register_gauge_with_registry,
    register_int_counter_vec_with_registry, register_int_gauge_vec_with_registry,
    register_int_gauge_with_registry, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub active_connections: IntGauge,
    /// Delivery latency quantiles over the last heartbeat window, seconds.
    pub latency: GaugeVec,
    /// Messages by kind: `sent` (acked by Kafka), `delivered`, `room_delivered`, `send_failed`.
    pub messages: IntCounterVec,
    /// Refused connections and frames by error code.
    pub refused: IntCounterVec,
    /// Connections closed by the server, by close code.
    pub closed: IntCounterVec,
    pub drain_remaining: IntGauge,
    pub drain_time: Gauge,
    pub owned_slots: IntGauge,
    /// Owned slots that serve clients (the others are still loading).
    pub serving_slots: IntGauge,
    pub ring_epoch: IntGauge,
    /// Records behind the end of each owned `rtc.deliver` partition (kafka-exporter cannot see
    /// consumers that assign partitions themselves, as ours do).
    pub kafka_lag: IntGaugeVec,
    pub moves: IntCounterVec,
    /// Room history held: `rooms` with state, `messages` stored.
    pub room_history: IntGaugeVec,
    /// Presence writes and events by outcome.
    pub presence: IntCounterVec,
    /// `messages` children used per message, resolved once (a label lookup hashes and locks).
    pub sent: IntCounter,
    pub delivered: IntCounter,
    pub room_delivered: IntCounter,
    pub duplicate_dropped: IntCounter,
}

impl Metrics {
    pub fn new(node_id: &str) -> Self {
        let registry = Registry::new_custom(
            None,
            Some([("node".to_string(), node_id.to_string())].into()),
        )
        .expect("static labels are valid");
        let messages = register_int_counter_vec_with_registry!(
            "rtc_socket_messages_total",
            "Messages handled, by kind",
            &["kind"],
            registry
        )
        .expect(rtc_serverkit::telemetry::UNIQUE_METRIC);
        let m = Metrics {
            active_connections: register_int_gauge_with_registry!(
                "rtc_socket_active_connections",
                "Open client WebSockets",
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            latency: register_gauge_vec_with_registry!(
                "rtc_socket_latency",
                "Produce-to-deliver latency in seconds, by quantile over the last window",
                &["quantile"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            sent: messages.with_label_values(&["sent"]),
            delivered: messages.with_label_values(&["delivered"]),
            room_delivered: messages.with_label_values(&["room_delivered"]),
            duplicate_dropped: messages.with_label_values(&["duplicate_dropped"]),
            messages,
            refused: register_int_counter_vec_with_registry!(
                "rtc_socket_refused_total",
                "Refused connections and frames, by code",
                &["code"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            closed: register_int_counter_vec_with_registry!(
                "rtc_socket_closed_total",
                "Connections closed by the server, by close code",
                &["code"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            drain_remaining: register_int_gauge_with_registry!(
                "rtc_socket_drain_remaining_connections",
                "Connections left to move in a drain",
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            drain_time: register_gauge_with_registry!(
                "rtc_socket_drain_time_seconds",
                "Seconds since the drain started",
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            owned_slots: register_int_gauge_with_registry!(
                "rtc_socket_owned_slots",
                "Slots this node owns",
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            kafka_lag: register_int_gauge_vec_with_registry!(
                "rtc_socket_kafka_lag",
                "Records behind the end of each owned rtc.deliver partition",
                &["partition"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            serving_slots: register_int_gauge_with_registry!(
                "rtc_socket_serving_slots",
                "Owned slots that serve clients (the rest are loading their history)",
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            ring_epoch: register_int_gauge_with_registry!(
                "rtc_socket_ring_epoch",
                "Newest ring epoch applied",
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            moves: register_int_counter_vec_with_registry!(
                "rtc_socket_moves_total",
                "Move frames sent, by reason",
                &["reason"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            room_history: register_int_gauge_vec_with_registry!(
                "rtc_socket_room_history",
                "Room history held on this node: rooms with state, messages stored, bytes they count against ROOM_HISTORY_MAX_BYTES",
                &["what"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            presence: register_int_counter_vec_with_registry!(
                "rtc_socket_presence_total",
                "Presence operations, by kind (join, leave, swept, query, dropped, failed)",
                &["kind"],
                registry
            )
            .expect(rtc_serverkit::telemetry::UNIQUE_METRIC),
            registry,
        };
        // The close codes a server closes with start at 0, so alerts on them (4001: slow
        // consumers) and dashboards see the series before the first close.
        use rtc_protocol::error::close;
        for code in [
            close::GOING_AWAY,
            close::PROTOCOL_ERROR,
            close::INVALID_DATA,
            close::TOO_BIG,
            close::INTERNAL,
            close::SLOW_CONSUMER,
            close::MOVED,
            close::REPLACED,
        ] {
            m.closed.with_label_values(&[&code.to_string()]);
        }
        m
    }

    pub fn render(&self) -> String {
        rtc_serverkit::telemetry::render(&self.registry)
    }
}
