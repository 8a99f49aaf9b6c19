//! What travels through Kafka and Redis: topic and key names, the message envelope, and the
//! node heartbeat. Any backend that produces to `rtc.deliver` itself uses these.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Kafka topics and record keys.
pub mod kafka {
    /// Direct messages; SLOTS partitions, key = recipient clientId, partition = slot(recipient).
    pub const DELIVER_TOPIC: &str = "rtc.deliver";
    /// Room messages; key = room; every node reads every partition.
    pub const ROOMS_TOPIC: &str = "rtc.rooms";
    /// Ring epochs (key `ring`) and other control records; compacted, one partition.
    pub const CONTROL_TOPIC: &str = "rtc.control";
    /// The leader's scaling decisions, one audit record each (key = the socket workload's name);
    /// one partition, 7 days.
    pub const SCALE_TOPIC: &str = "rtc.scale";
    /// Partitions of `rtc.rooms`.
    pub const ROOMS_PARTITIONS: i32 = 8;
    /// The record key of ring epochs on `rtc.control`.
    pub const RING_KEY: &str = "ring";
}

/// Redis key names.
pub mod redis {
    /// Prefix of node heartbeat keys: `rtc:node:<nodeId>`.
    pub const NODE_PREFIX: &str = "rtc:node:";
    /// The ring mirror.
    pub const RING_KEY: &str = "rtc:ring";
    /// Prefix of session hashes: `rtc:session:<clientId>`.
    pub const SESSION_PREFIX: &str = "rtc:session:";
    /// A random number written once (when missing) and never expiring: if it vanishes or
    /// changes, Redis lost its data (a restart without persistence, a flush, a failover to an
    /// empty replica) and heartbeats vanished all at once without any node dying.
    pub const GENERATION_KEY: &str = "rtc:generation";
    /// Presence of a room: hash clientId → nodeId, `rtc:presence:room:<room>`. An entry counts
    /// only while its node's heartbeat key exists (the node's lease): it dies with the node.
    pub const PRESENCE_ROOM_PREFIX: &str = "rtc:presence:room:";
    /// The rooms where a node has written presence, `rtc:presence:rooms:<nodeId>` (a set), so a
    /// survivor can clean up after a dead node.
    pub const PRESENCE_NODE_ROOMS_PREFIX: &str = "rtc:presence:rooms:";
    /// The nodes that have written presence (a set).
    pub const PRESENCE_NODES_KEY: &str = "rtc:presence:nodes";
}

/// The value of a record on `rtc.deliver` (key = recipient) or `rtc.rooms` (key = room).
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// `Cow`: records produced by other backends may carry escaped strings.
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

impl Envelope<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("envelopes always serialize")
    }
}

/// What a socket node reports every heartbeat interval (Redis `rtc:node:<nodeId>`, with a TTL).
/// (`Default` is for tests and tools that fill in a few fields.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub node_id: String,
    /// `host:port` of the node's client listener, as the gateway should reach it.
    pub addr: String,
    pub connections: u64,
    pub msgs_per_sec: f64,
    pub p95_ms: f64,
    /// Process CPU as a fraction of one core.
    pub cpu: f64,
    pub mem_bytes: u64,
    /// Records behind the end of the node's owned `rtc.deliver` partitions (summed).
    #[serde(default)]
    pub kafka_lag: u64,
    pub draining: bool,
    /// Whether the node accepts new connections (readiness).
    pub ready: bool,
    /// Slots the node owns and serves.
    pub slots: Vec<u32>,
    /// The newest ring epoch the node applied.
    pub epoch: u64,
    pub ts_ms: u64,
}

/// A presence change on `rtc.rooms` (key = room), written by the node that saw it: not a
/// message, never stored as room history. `presence` is `join` or `leave`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PresenceRecord<'a> {
    #[serde(borrow)]
    pub presence: Cow<'a, str>,
    #[serde(borrow, rename = "clientId")]
    pub client_id: Cow<'a, str>,
    #[serde(borrow)]
    pub room: Cow<'a, str>,
}
