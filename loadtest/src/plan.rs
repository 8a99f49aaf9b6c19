//! What a run is: the clients (by position), the pattern, the schedule, where to connect.

use rtc_client::Endpoints;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// What the clients are doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Sending on schedule.
    Sending,
    /// Still receiving, not sending.
    Quiet,
    /// Stop.
    Done,
}

/// Whom each message goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Direct messages to peers chosen round-robin among the other clients (through Kafka).
    Direct,
    /// Room messages: client k joins room k % rooms and publishes to it (fan-out).
    Room,
    /// Direct messages to oneself (one slot, one node).
    SelfSend,
    /// `ping` → `pong` round trips answered by the socket node itself (no Kafka): measures the
    /// WebSocket path — gateway and node — alone.
    Ping,
}

/// How every client of a run behaves.
#[derive(Clone)]
pub struct Plan {
    pub ep: Endpoints,
    /// The clientIds of this run (or of this worker's shard); peers are chosen among them.
    pub peers: Arc<Peers>,
    pub pattern: Pattern,
    pub interval: Duration,
    /// Padding added to every message's data, so messages have the requested size.
    pub pad: Arc<str>,
    pub rooms: usize,
    /// Limits handshakes (resolve + upgrade) in flight.
    pub handshakes: Arc<Semaphore>,
    /// Local addresses to connect from, chosen by client index (empty: the system's choice).
    pub sources: Arc<Vec<std::net::IpAddr>>,
}

/// The clients of a run by position, and the way back from a clientId: the ledger books
/// messages by (client index, sequence number), so no string is copied per message.
pub struct Peers {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Peers {
    pub fn new(names: Vec<String>) -> Self {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        Peers { names, index }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }

    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }
}

/// A direct message: (sender's index, sequence number; the id on the wire is the number).
pub type MsgKey = (u32, u64);
