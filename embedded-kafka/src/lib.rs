//! An in-process Kafka broker for the local stack (`rtc-local`) and the tests: one node, every
//! partition in memory, spoken to over the Kafka protocol on a loopback port by the same
//! librdkafka clients a deployment uses.
//!
//! Why not librdkafka's mock cluster, which it replaces as the default: the mock finds a fetch's
//! offset by walking a partition's whole list of stored batches and answers one batch per
//! fetch, so it gets slower the longer it runs; it holds a fetch for its whole wait even when
//! data arrives; and it silently drops a partition's oldest records at 5 MiB, read or not.
//! Here a fetch is a binary search and returns every batch that fits, a waiting fetch is
//! answered as soon as something is appended, and what is held is bounded by bytes and age
//! across the whole broker (the oldest batch goes first, and a warning says so).
//!
//! What it speaks (the versions librdkafka 2.x picks): ApiVersions, Metadata, CreateTopics,
//! Produce (idempotent producers: a resent batch is stored once), Fetch (sessionless),
//! ListOffsets (earliest, latest, by time), InitProducerId and FindCoordinator. Not there:
//! consumer groups, transactions, compaction (a topic created with `cleanup.policy=compact` is
//! simply never trimmed), replication.

mod log;
mod server;

use log::{code, Log};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the broker keeps.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes of record batches held in all topics that are not compacted; past it the oldest
    /// batch of the whole broker is dropped first.
    pub max_bytes: usize,
    /// Batches older than this are dropped.
    pub max_age: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_bytes: 512 << 20,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

struct Topic {
    name: String,
    partitions: Vec<Log>,
    compacted: bool,
}

/// A stored batch in the order of appending, for dropping the oldest first.
struct Stored {
    topic: usize,
    partition: usize,
    base: i64,
    at: Instant,
}

#[derive(Default)]
struct State {
    topics: Vec<Topic>,
    by_name: HashMap<String, usize>,
    order: VecDeque<Stored>,
    bytes: usize,
    dropped: u64,
    next_producer_id: i64,
}

impl State {
    fn create_topic(&mut self, name: &str, partitions: i32, compacted: bool) -> i16 {
        if self.by_name.contains_key(name) {
            return code::TOPIC_ALREADY_EXISTS;
        }
        if partitions < 1 {
            return code::INVALID_PARTITIONS;
        }
        self.by_name.insert(name.to_string(), self.topics.len());
        self.topics.push(Topic {
            name: name.to_string(),
            partitions: (0..partitions).map(|_| Log::default()).collect(),
            compacted,
        });
        code::NONE
    }

    fn log(&self, topic: &str, partition: i32) -> Result<&Log, i16> {
        let t = self
            .by_name
            .get(topic)
            .ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.topics[*t].partitions.get(p))
            .ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)
    }

    /// Appends a produce request's batches for one partition; (base offset, log start).
    fn append(
        &mut self,
        topic: &str,
        partition: i32,
        records: &[u8],
        cfg: &Config,
    ) -> Result<(i64, i64), i16> {
        let t = *self
            .by_name
            .get(topic)
            .ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)?;
        let p = usize::try_from(partition)
            .ok()
            .filter(|p| *p < self.topics[t].partitions.len())
            .ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)?;
        let a = self.topics[t].partitions[p].append(records)?;
        if !self.topics[t].compacted && !a.batches.is_empty() {
            let now = Instant::now();
            self.order.extend(a.batches.iter().map(|&base| Stored {
                topic: t,
                partition: p,
                base,
                at: now,
            }));
            self.bytes += a.bytes;
            self.trim(cfg, now);
        }
        Ok((a.base, self.topics[t].partitions[p].start))
    }

    /// Drops the oldest batches while over the byte bound (keeping at least the newest batch, so
    /// an append is never dropped by its own answer) or past the age bound.
    pub(crate) fn trim(&mut self, cfg: &Config, now: Instant) {
        while let Some(front) = self.order.front() {
            let full = self.bytes > cfg.max_bytes && self.order.len() > 1;
            if !full && now.duration_since(front.at) <= cfg.max_age {
                break;
            }
            let s = self.order.pop_front().expect("front");
            let freed = self.topics[s.topic].partitions[s.partition]
                .drop_front(s.base)
                .expect("the oldest stored batch is its partition's first");
            self.bytes -= freed;
            if full && self.dropped.is_multiple_of(10_000) {
                tracing::warn!(
                    topic = %self.topics[s.topic].name,
                    partition = s.partition,
                    held_bytes = self.bytes,
                    max_bytes = cfg.max_bytes,
                    "embedded Kafka is full: dropping its oldest batches (a consumer further behind loses them)"
                );
            }
            self.dropped += 1;
        }
    }
}

struct Shared {
    cfg: Config,
    addr: SocketAddr,
    state: Mutex<State>,
    /// Bumped on every append, to wake waiting fetches.
    appended: watch::Sender<u64>,
    /// While true, connections are closed and new ones refused (a broker outage).
    down: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running broker; stopped when dropped.
pub struct EmbeddedKafka {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a broker listening on `listen` (port 0 picks a free one), served by a thread of
    /// its own.
    pub fn start(listen: SocketAddr, cfg: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            cfg,
            addr: listener.local_addr()?,
            state: Mutex::default(),
            appended: watch::Sender::new(0),
            down: watch::Sender::new(false),
        });
        let (stop, stopped) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => server::accept(s, l, stopped).await,
                        Err(e) => tracing::error!("embedded Kafka cannot listen: {e}"),
                    }
                })
            })?;
        Ok(EmbeddedKafka {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.shared.addr.to_string()
    }

    /// Creates a topic (as the CreateTopics request does); false when it exists.
    pub fn create_topic(&self, name: &str, partitions: i32, compacted: bool) -> bool {
        self.shared
            .state()
            .create_topic(name, partitions, compacted)
            == code::NONE
    }

    /// Takes the broker down (connections closed, new ones refused) or back up.
    pub fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
    }

    /// Bytes of record batches held now, and batches dropped so far to stay within `Config`.
    pub fn held(&self) -> (usize, u64) {
        let s = self.shared.state();
        (s.bytes, s.dropped)
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
