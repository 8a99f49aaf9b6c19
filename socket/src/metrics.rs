//! Prometheus metrics of one socket node (names kept from the documented design), in a
//! registry per node so several nodes can live in one test process.

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
    pub ring_epoch: IntGauge,
    pub moves: IntCounterVec,
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
        let messages = IntCounterVec::new(
            Opts::new("rtc_socket_messages_total", "Messages handled, by kind"),
            &["kind"],
        )
        .unwrap();
        let m = Metrics {
            active_connections: IntGauge::new(
                "rtc_socket_active_connections",
                "Open client WebSockets",
            )
            .unwrap(),
            latency: GaugeVec::new(
                Opts::new(
                    "rtc_socket_latency",
                    "Produce-to-deliver latency in seconds, by quantile over the last window",
                ),
                &["quantile"],
            )
            .unwrap(),
            sent: messages.with_label_values(&["sent"]),
            delivered: messages.with_label_values(&["delivered"]),
            room_delivered: messages.with_label_values(&["room_delivered"]),
            duplicate_dropped: messages.with_label_values(&["duplicate_dropped"]),
            messages,
            refused: IntCounterVec::new(
                Opts::new(
                    "rtc_socket_refused_total",
                    "Refused connections and frames, by code",
                ),
                &["code"],
            )
            .unwrap(),
            closed: IntCounterVec::new(
                Opts::new(
                    "rtc_socket_closed_total",
                    "Connections closed by the server, by close code",
                ),
                &["code"],
            )
            .unwrap(),
            drain_remaining: IntGauge::new(
                "rtc_socket_drain_remaining_connections",
                "Connections left to move in a drain",
            )
            .unwrap(),
            drain_time: Gauge::new(
                "rtc_socket_drain_time_seconds",
                "Seconds since the drain started",
            )
            .unwrap(),
            owned_slots: IntGauge::new("rtc_socket_owned_slots", "Slots this node owns").unwrap(),
            ring_epoch: IntGauge::new("rtc_socket_ring_epoch", "Newest ring epoch applied")
                .unwrap(),
            moves: IntCounterVec::new(
                Opts::new("rtc_socket_moves_total", "Move frames sent, by reason"),
                &["reason"],
            )
            .unwrap(),
            registry,
        };
        rtc_common::telemetry::register(
            &m.registry,
            vec![
                Box::new(m.active_connections.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(m.latency.clone()),
                Box::new(m.messages.clone()),
                Box::new(m.refused.clone()),
                Box::new(m.closed.clone()),
                Box::new(m.drain_remaining.clone()),
                Box::new(m.drain_time.clone()),
                Box::new(m.owned_slots.clone()),
                Box::new(m.ring_epoch.clone()),
                Box::new(m.moves.clone()),
            ],
        );
        m
    }

    pub fn render(&self) -> String {
        rtc_common::telemetry::render(&self.registry)
    }
}
