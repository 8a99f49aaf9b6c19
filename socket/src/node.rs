//! The state of one socket node: the ring it follows, its slot table, its rooms, its producer
//! and counters. Everything a client or a Kafka record touches goes through here; the phase
//! machine of each slot is pure and lives in `slot.rs`.
//!
//! Ordering invariant (resume without gap or duplicate): a slot's history append and the
//! delivery to its members happen under the slot's lock, and so does a client's registration
//! (welcome + replay of history after its resumeOffset). A record is therefore either in the
//! replayed snapshot or delivered live after it, never both and never neither; per member, only
//! offsets above its last delivered one are sent.

use crate::config::Config;
use crate::conn::{CloseReason, Conn};
use crate::history::Entry;
use crate::metrics::Metrics;
use crate::producer::Producer;
use crate::rooms::Rooms;
use crate::slot::{Closed, Consumed, MoveAction, Slot};
use rdkafka::producer::FutureProducer;
use rtc_protocol::ring::Ring;
use rtc_protocol::{close, ErrorCode, Refusal, ServerFrame};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::slot::Phase;

pub struct Node {
    pub cfg: Config,
    pub id: String,
    pub slots: u32,
    pub secret: Vec<u8>,
    ring: RwLock<Arc<Ring>>,
    table: Vec<Mutex<Slot<Arc<Conn>>>>,
    pub rooms: Rooms,
    pub connections: AtomicUsize,
    pub draining: AtomicBool,
    pub drain_started: Mutex<Option<Instant>>,
    pub has_ring: AtomicBool,
    /// The rooms reader is positioned: room messages published from now on reach this node.
    pub rooms_ready: AtomicBool,
    pub redis_ok: AtomicBool,
    /// Wakes the deliver consumer to re-assign partitions.
    pub reassign: Notify,
    pub metrics: Metrics,
    pub latency_us: Mutex<hdrhistogram::Histogram<u64>>,
    pub delivered_window: AtomicU64,
    /// Records behind the end of the owned deliver partitions (librdkafka statistics).
    pub kafka_lag: AtomicU64,
    /// Cancelled when the node shuts down: every connection closes with 1001.
    pub cancel: CancellationToken,
    /// Every connection task, so shutdown can wait for their close frames.
    pub connections_tracker: TaskTracker,
    /// Woken when the last connection closes (a drain waiting for its end).
    pub emptied: Notify,
    /// Turns for reading a partition back from Kafka (READBACK_CONCURRENCY).
    pub readbacks: tokio::sync::Semaphore,
    producer: Producer,
    pub sessions: tokio::sync::mpsc::Sender<crate::session::SessionEvent>,
}

impl Node {
    pub fn new(
        cfg: Config,
        id: String,
        producer: Producer,
        sessions: tokio::sync::mpsc::Sender<crate::session::SessionEvent>,
        cancel: CancellationToken,
    ) -> Self {
        let slots = cfg.shared.slots;
        let table = (0..slots).map(|_| Mutex::new(Slot::default())).collect();
        Node {
            secret: cfg.shared.ring_secret.as_bytes().to_vec(),
            metrics: Metrics::new(&id),
            id,
            slots,
            ring: RwLock::new(Arc::new(Ring::empty(slots))),
            table,
            rooms: Rooms::new(
                rtc_serverkit::kafka::ROOMS_PARTITIONS as usize,
                crate::rooms::Bounds {
                    max_messages: cfg.room_history_max_messages,
                    max_age_ms: cfg.room_history_max_age_secs * 1000,
                    max_bytes: cfg.room_history_max_bytes,
                },
            ),
            connections: AtomicUsize::new(0),
            kafka_lag: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            drain_started: Mutex::new(None),
            has_ring: AtomicBool::new(false),
            rooms_ready: AtomicBool::new(false),
            redis_ok: AtomicBool::new(false),
            reassign: Notify::new(),
            latency_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                    .expect("valid bounds"),
            ),
            delivered_window: AtomicU64::new(0),
            cancel,
            connections_tracker: TaskTracker::new(),
            emptied: Notify::new(),
            readbacks: tokio::sync::Semaphore::new(cfg.readback_concurrency.max(1)),
            producer,
            sessions,
            cfg,
        }
    }

    /// The current Kafka producer.
    pub fn producer(&self) -> Arc<FutureProducer> {
        self.producer.get()
    }

    /// After a failed send: replaces the producer if `used` can no longer produce.
    pub fn renew_producer_if_broken(
        &self,
        used: &Arc<FutureProducer>,
        err: &rdkafka::error::KafkaError,
    ) {
        self.producer.renew_if_broken(used, err);
    }

    /// Waits (bounded) until every queued record is delivered or failed.
    pub async fn flush_producer(&self, timeout: std::time::Duration) {
        self.producer.flush(timeout).await;
    }

    fn slot(&self, s: u32) -> std::sync::MutexGuard<'_, Slot<Arc<Conn>>> {
        self.table[s as usize]
            .lock()
            .expect("slot lock is never poisoned")
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.ring
            .read()
            .expect("ring lock is never poisoned")
            .clone()
    }

    /// Whether the node should take new connections.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && self.serving()
            && self.redis_ok.load(Ordering::Relaxed)
    }

    /// Whether the node can serve clients at all: it has a ring and its rooms reader is placed.
    pub fn serving(&self) -> bool {
        self.has_ring.load(Ordering::Relaxed) && self.rooms_ready.load(Ordering::Relaxed)
    }

    /// Applies `ring` if it is newer than the one we have. Slots we gain start loading; slots we
    /// lose keep serving their members until those have moved.
    pub fn apply_ring(&self, ring: Ring) -> bool {
        if ring.slots() != self.slots {
            tracing::error!(
                got = ring.slots(),
                want = self.slots,
                "ignoring a ring with a different slot count"
            );
            return false;
        }
        {
            let mut cur = self.ring.write().expect("ring lock is never poisoned");
            if self.has_ring.load(Ordering::Relaxed) && ring.epoch <= cur.epoch {
                return false;
            }
            *cur = Arc::new(ring.clone());
        }
        let (mut gained, mut lost) = (0, 0);
        let now = Instant::now();
        for s in 0..self.slots {
            let ours = ring.owner(s) == Some(self.id.as_str());
            match self.slot(s).apply_owner(ours, now) {
                crate::slot::Change::Gained => gained += 1,
                crate::slot::Change::Lost => lost += 1,
                crate::slot::Change::Unchanged => {}
            }
        }
        self.has_ring.store(true, Ordering::Relaxed);
        self.metrics.ring_epoch.set(ring.epoch as i64);
        self.metrics
            .owned_slots
            .set(ring.slots_of(&self.id).len() as i64);
        tracing::info!(epoch = ring.epoch, gained, lost, "applied ring");
        self.reassign.notify_one();
        true
    }

    /// Loading slots whose start position is not known yet.
    pub fn unstarted(&self) -> Vec<u32> {
        (0..self.slots)
            .filter(|&s| self.slot(s).unstarted())
            .collect()
    }

    /// Starts loading slot `s` from `start`, ready once records up to `high` are consumed.
    pub fn begin_load(&self, s: u32, start: i64, high: i64) {
        self.slot(s).begin_load(start, high);
    }

    /// The partitions the deliver consumer should read and where to continue: right after the
    /// newest record of every slot that is loading (with a known start), ready or releasing.
    pub fn consumer_plan(&self) -> Vec<(u32, i64)> {
        (0..self.slots)
            .filter_map(|s| Some((s, self.slot(s).read_from()?)))
            .collect()
    }

    /// The newest offset of slot `s` this node has consumed (-1 when none).
    pub fn last_offset(&self, s: u32) -> i64 {
        self.slot(s).history.last_offset()
    }

    /// Slots in a phase, for heartbeats and tests.
    pub fn slots_in(&self, phase: Phase) -> Vec<u32> {
        (0..self.slots)
            .filter(|&s| self.slot(s).phase == phase)
            .collect()
    }

    /// Checks whether `slot` can take a new client now (ring epoch from the client's token).
    pub fn admit(&self, slot: u32, token_epoch: u64) -> Result<(), Refusal> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(Refusal::new(
                ErrorCode::Draining,
                "this node is draining; resolve again",
            ));
        }
        if !self.serving() {
            // Without a placed rooms reader, a room message published now could be missed.
            return Err(Refusal::new(
                ErrorCode::NotReady,
                "this node is starting (no ring yet, or its rooms reader is not placed)",
            ));
        }
        let state = self.slot(slot).admit();
        match state {
            Ok(()) => {}
            Err(Closed::Loading) => {
                return Err(Refusal::new(
                    ErrorCode::SlotLoading,
                    "the slot is loading its history",
                ))
            }
            Err(Closed::NotOwned) => {
                return Err(if token_epoch > self.ring().epoch {
                    Refusal::new(
                        ErrorCode::NotReady,
                        "this node has not applied the token's ring epoch yet",
                    )
                } else {
                    Refusal::new(
                        ErrorCode::SlotNotOwned,
                        "this node does not own the client's slot; resolve again",
                    )
                });
            }
        }
        let n = self.connections.load(Ordering::Relaxed);
        if n >= self.cfg.max_connections {
            return Err(Refusal::new(
                ErrorCode::TooManyConnections,
                "this node is at its connection limit",
            ));
        }
        Ok(())
    }

    /// The offsets `[from, until)` to read back from Kafka for a resume from `resume`: set when
    /// the resume point is older than the slot's history (which starts at `until`).
    pub fn readback_range(&self, slot: u32, resume: Option<i64>) -> Option<(i64, i64)> {
        let r = resume?;
        let s = self.slot(slot);
        let floor = s.history.floor()?;
        (r + 1 < floor).then_some((r + 1, floor))
    }

    /// Makes `conn` the member for its clientId in `slot`: queues the welcome and the replay of
    /// everything after `resume` — records read back from Kafka first (`readback`, when the
    /// history does not reach that far), then the history — atomically with live delivery (see
    /// the module comment). A message held twice (read back and in the history) goes once.
    pub fn register(
        &self,
        conn: &Arc<Conn>,
        slot: u32,
        resume: Option<i64>,
        readback: Option<crate::readback::ReadBack>,
    ) -> Result<(), CloseReason> {
        let moved = CloseReason {
            code: close::MOVED,
            reason: "slot moved during the handshake",
        };
        let epoch = self.ring().epoch;
        let mut s = self.slot(slot);
        if s.admit().is_err() {
            return Err(moved);
        }
        let last = s.history.last_offset();
        let (recovered, from, back) = match resume {
            // The read-back reaches the history if the history did not move on meanwhile.
            Some(r) => match readback {
                Some(rb) if rb.last >= r && s.history.covers(rb.last) => {
                    (true, rb.last, rb.records)
                }
                _ => (s.history.covers(r), r, Vec::new()),
            },
            None => (true, last, Vec::new()),
        };
        let welcome = ServerFrame::Welcome {
            node: self.id.as_str().into(),
            client_id: (*conn.client_id).into(),
            epoch,
            recovered,
            offset: last,
        }
        .to_json();
        conn.push_unbounded(Utf8Bytes::from(welcome));
        let mut seen = std::collections::HashSet::with_capacity(back.len());
        if !back.is_empty() {
            self.metrics
                .messages
                .with_label_values(&["read_back"])
                .inc_by(back.len() as u64);
        }
        for (_, frame, key) in back {
            if seen.insert(key) {
                conn.push_unbounded(frame);
            }
        }
        let mut delivered = from;
        for e in s.history.after(&conn.client_id, from) {
            if !seen.contains(&e.key) {
                conn.push_unbounded(e.frame.clone());
            }
            delivered = e.offset;
        }
        match s.insert(&conn.client_id, conn.clone(), delivered) {
            Ok(Some(old)) => old.conn.close(CloseReason {
                code: close::REPLACED,
                reason: "replaced by a newer connection",
            }),
            Ok(None) => {}
            Err(_) => return Err(moved),
        }
        Ok(())
    }

    /// Removes `conn` from its slot (if still the member) and from its rooms.
    pub fn unregister(&self, conn: &Conn, slot: u32, rooms: &[Box<str>]) {
        self.slot(slot)
            .remove(&conn.client_id, |member| member.id == conn.id);
        if !rooms.is_empty() {
            self.rooms.leave_all(rooms.iter().map(|r| &**r), conn);
        }
    }

    /// A record of `rtc.deliver` for `recipient` at `offset` in slot `s`.
    pub fn deliver(
        &self,
        s: u32,
        offset: i64,
        recipient: &str,
        key: u64,
        frame: Utf8Bytes,
        at_ms: u64,
    ) {
        let now = rtc_serverkit::telemetry::now_ms();
        let min_at = now.saturating_sub(self.cfg.history_max_age_secs * 1000);
        let entry = Entry {
            offset,
            recipient: recipient.into(),
            frame: frame.clone(),
            at_ms,
            key,
        };
        let mut slot = self.slot(s);
        match slot.consume(entry, recipient, self.cfg.history_max_messages, min_at) {
            None | Some(Consumed::Old) | Some(Consumed::Stored(None)) => {}
            Some(Consumed::Duplicate) => self.metrics.duplicate_dropped.inc(),
            Some(Consumed::Stored(Some(conn))) => {
                if conn.push(frame) {
                    self.metrics.delivered.inc();
                    self.delivered_window.fetch_add(1, Ordering::Relaxed);
                    let us = now.saturating_sub(at_ms) * 1000;
                    if let Ok(mut h) = self.latency_us.lock() {
                        let _ = h.record(us.max(1));
                    }
                }
                // A full queue closes the connection as a slow consumer; the connection task
                // counts that close once, when it ends the connection.
            }
        }
    }

    /// Slot `s` consumed a record at `offset` that holds no message (unreadable).
    pub fn skip(&self, s: u32, offset: i64) {
        self.slot(s).skip(offset);
    }

    /// Joins `conn` to `room`, queueing the `joined` answer and the history asked for.
    pub fn join(
        &self,
        room: &str,
        conn: &Arc<Conn>,
        id: Option<&str>,
        since: crate::rooms::Since,
        presence: bool,
    ) {
        let p = rtc_protocol::slot::slot_of(room, rtc_serverkit::kafka::ROOMS_PARTITIONS as u32);
        let now = rtc_serverkit::telemetry::now_ms();
        if !self
            .rooms
            .join(room, p as usize, conn, id, since, presence, now)
        {
            self.metrics
                .messages
                .with_label_values(&["room_not_recovered"])
                .inc();
        }
    }

    pub fn leave(&self, room: &str, conn: &Conn) {
        self.rooms.leave_all([room], conn);
    }

    /// A room message consumed at (`p`, `offset`): stored as history, sent to local members.
    pub fn fan_out(&self, room: &str, p: usize, offset: i64, at_ms: u64, frame: Utf8Bytes) {
        let now = rtc_serverkit::telemetry::now_ms();
        for c in self
            .rooms
            .record(room, p, offset, at_ms, frame.clone(), now)
        {
            if c.push(frame.clone()) {
                self.metrics.room_delivered.inc();
            }
        }
    }

    /// A presence change of `room`: sent to local members that asked for `member` events.
    pub fn fan_out_presence(&self, room: &str, frame: Utf8Bytes) {
        for c in self.rooms.presence_members(room) {
            c.push(frame.clone());
        }
    }

    /// One pacing step of moving clients off slots we no longer own (or off every slot while
    /// draining, after `grace`): sends at most `batch` `move` frames, closes members that
    /// ignored theirs past `deadline`, and retires released slots that have emptied.
    pub fn move_step(
        &self,
        batch: usize,
        grace: std::time::Duration,
        deadline: std::time::Duration,
        jitter_ms: u64,
    ) -> usize {
        let draining = self.draining.load(Ordering::Relaxed);
        let drain_elapsed = self
            .drain_started
            .lock()
            .ok()
            .and_then(|d| d.map(|t| t.elapsed()));
        let move_all = draining && drain_elapsed.is_some_and(|e| e >= grace);
        let reason = if draining { "drain" } else { "rebalance" };
        let now = Instant::now();
        let mut budget = batch;
        let mut retired = false;
        let jitter = || {
            if jitter_ms == 0 {
                0
            } else {
                rand::random_range(0..=jitter_ms)
            }
        };
        for s in 0..self.slots {
            retired |= self.slot(s).pace_moves(
                move_all,
                now,
                &mut budget,
                deadline,
                jitter,
                |conn, action| match action {
                    MoveAction::Move { delay_ms } => conn.push_unbounded(Utf8Bytes::from(
                        ServerFrame::Move {
                            reason: reason.into(),
                            delay_ms,
                        }
                        .to_json(),
                    )),
                    MoveAction::Close => conn.close(CloseReason {
                        code: close::MOVED,
                        reason: "moved: reconnect through resolve",
                    }),
                },
            );
        }
        let sent = batch - budget;
        if sent > 0 {
            self.metrics
                .moves
                .with_label_values(&[reason])
                .inc_by(sent as u64);
        }
        if retired {
            self.reassign.notify_one();
        }
        sent
    }

    /// Members that still have to be told to move, and when the oldest of their slots left.
    pub fn pending_moves(&self) -> (usize, Option<Instant>) {
        let draining = self.draining.load(Ordering::Relaxed);
        let mut oldest: Option<Instant> = None;
        let mut n = 0;
        for s in 0..self.slots {
            let slot = self.slot(s);
            let k = slot.waiting_to_move(draining);
            if k > 0 {
                n += k;
                if let Some(t) = slot.released_at {
                    oldest = Some(oldest.map_or(t, |o| o.min(t)));
                }
            }
        }
        (n, oldest)
    }

    /// Slots owned and served, for the heartbeat.
    pub fn owned(&self) -> BTreeSet<u32> {
        (0..self.slots).filter(|&s| self.slot(s).owned()).collect()
    }

    /// How many owned slots serve clients now (not loading).
    pub fn serving_slots(&self) -> usize {
        (0..self.slots)
            .filter(|&s| self.slot(s).admit().is_ok())
            .count()
    }
}
