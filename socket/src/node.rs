//! The state of one socket node: the ring it follows, its slots (phase, history, members), its
//! rooms and counters. Everything a client or a Kafka record touches goes through here.
//!
//! Ordering invariant (resume without gap or duplicate): a slot's history append and the
//! delivery to its members happen under the slot's lock, and so does a client's registration
//! (welcome + replay of history after its resumeOffset). A record is therefore either in the
//! replayed snapshot or delivered live after it, never both and never neither; per member, only
//! offsets above its last delivered one are sent.

use crate::config::Config;
use crate::conn::{CloseReason, Conn};
use crate::history::{Entry, History, Pushed};
use crate::metrics::Metrics;
use rdkafka::producer::FutureProducer;
use rtc_common::protocol::{close, ErrorCode, ServerFrame};
use rtc_common::ring::Ring;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// Where a slot is in its life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not ours.
    Idle,
    /// Ours; rebuilding history from the partition before taking clients.
    Loading,
    /// Ours and serving.
    Ready,
    /// Given away; still delivering to members until they have moved.
    Releasing,
}

pub struct Member {
    pub conn: Arc<Conn>,
    /// Newest offset delivered (or the resume point).
    pub last: i64,
    pub move_sent: Option<Instant>,
}

pub struct Slot {
    pub phase: Phase,
    /// While loading: the high watermark at takeover; the slot is ready once consumed to it.
    pub load_target: Option<i64>,
    pub history: History,
    pub members: HashMap<Box<str>, Member>,
    pub released_at: Option<Instant>,
}

impl Slot {
    /// The record at `offset` has been consumed: a loading slot is ready once it reaches the
    /// high watermark read at takeover.
    fn loaded_through(&mut self, offset: i64) {
        if self.load_target.is_some_and(|t| offset + 1 >= t) {
            self.phase = Phase::Ready;
            self.load_target = None;
        }
    }
}

/// Why a connection is refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: ErrorCode,
    pub message: &'static str,
    pub retry_after: Option<u32>,
}

impl Refusal {
    pub const fn new(
        status: u16,
        code: ErrorCode,
        message: &'static str,
        retry_after: Option<u32>,
    ) -> Self {
        Refusal {
            status,
            code,
            message,
            retry_after,
        }
    }
}

/// Local members of each room, by connection id.
type Rooms = HashMap<Box<str>, HashMap<u64, Arc<Conn>>>;

pub struct Node {
    pub cfg: Config,
    pub id: String,
    pub slots: u32,
    pub secret: Vec<u8>,
    ring: RwLock<Arc<Ring>>,
    table: Vec<Mutex<Slot>>,
    rooms: Mutex<Rooms>,
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
    /// Cancelled when the node shuts down: every connection closes with 1001.
    pub cancel: CancellationToken,
    producer: arc_swap::ArcSwap<FutureProducer>,
    renewing: Mutex<()>,
    pub sessions: tokio::sync::mpsc::Sender<crate::session::SessionEvent>,
}

impl Node {
    pub fn new(
        cfg: Config,
        id: String,
        producer: FutureProducer,
        sessions: tokio::sync::mpsc::Sender<crate::session::SessionEvent>,
        cancel: CancellationToken,
    ) -> Self {
        let slots = cfg.shared.slots;
        let table = (0..slots)
            .map(|_| {
                Mutex::new(Slot {
                    phase: Phase::Idle,
                    load_target: None,
                    history: History::new(),
                    members: HashMap::new(),
                    released_at: None,
                })
            })
            .collect();
        Node {
            secret: cfg.shared.ring_secret.as_bytes().to_vec(),
            metrics: Metrics::new(&id),
            id,
            slots,
            ring: RwLock::new(Arc::new(Ring::empty(slots))),
            table,
            rooms: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
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
            producer: arc_swap::ArcSwap::from_pointee(producer),
            renewing: Mutex::new(()),
            sessions,
            cfg,
        }
    }

    /// The current Kafka producer.
    pub fn producer(&self) -> Arc<FutureProducer> {
        self.producer.load_full()
    }

    /// After a failed send: if `used` can no longer produce (see `kafka::needs_new_producer`),
    /// replace it with a new producer, once.
    pub fn renew_producer_if_broken(
        &self,
        used: &Arc<FutureProducer>,
        err: &rdkafka::error::KafkaError,
    ) {
        let Some(why) = rtc_common::kafka::needs_new_producer(used.as_ref(), err) else {
            return;
        };
        let _one = self.renewing.lock().expect("renew lock is never poisoned");
        if !Arc::ptr_eq(&self.producer.load(), used) {
            return;
        }
        match rtc_common::kafka::producer_config(
            &self.cfg.shared.kafka_bootstrap,
            self.cfg.kafka_send_timeout(),
        )
        .create::<FutureProducer>()
        {
            Ok(p) => {
                self.producer.store(Arc::new(p));
                tracing::warn!(reason = %why, "Kafka producer hit a fatal error; replaced it");
            }
            Err(e) => tracing::error!(error = %e, "could not replace the failed Kafka producer"),
        }
    }

    fn slot(&self, s: u32) -> std::sync::MutexGuard<'_, Slot> {
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
        for s in 0..self.slots {
            let ours = ring.owner(s) == Some(self.id.as_str());
            let mut slot = self.slot(s);
            match (ours, slot.phase) {
                (true, Phase::Idle) => {
                    slot.history.reset();
                    slot.load_target = None;
                    slot.phase = Phase::Loading;
                    gained += 1;
                }
                (true, Phase::Releasing) => {
                    // Taken back before it finished leaving: history is still continuous.
                    slot.phase = Phase::Ready;
                    slot.released_at = None;
                    for m in slot.members.values_mut() {
                        m.move_sent = None;
                    }
                    gained += 1;
                }
                (false, Phase::Loading) => {
                    slot.phase = Phase::Idle;
                    slot.load_target = None;
                    slot.history.reset();
                    lost += 1;
                }
                (false, Phase::Ready) => {
                    slot.phase = if slot.members.is_empty() {
                        Phase::Idle
                    } else {
                        Phase::Releasing
                    };
                    if slot.phase == Phase::Idle {
                        slot.history.reset();
                    }
                    slot.released_at = Some(Instant::now());
                    lost += 1;
                }
                _ => {}
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
            .filter(|&s| {
                let slot = self.slot(s);
                slot.phase == Phase::Loading && slot.load_target.is_none()
            })
            .collect()
    }

    /// Starts loading slot `s` from `start`; it becomes ready once records up to `high` (the
    /// high watermark read at takeover, exclusive) are consumed. Both come from the broker
    /// before the partition is assigned, so no record between them can be skipped.
    pub fn begin_load(&self, s: u32, start: i64, high: i64) {
        let mut slot = self.slot(s);
        if slot.phase != Phase::Loading || slot.load_target.is_some() {
            return;
        }
        slot.history.reset();
        slot.history.start_at(start);
        slot.load_target = Some(high);
        if start >= high {
            slot.phase = Phase::Ready;
            slot.load_target = None;
        }
    }

    /// The partitions the deliver consumer should read and where to continue: right after the
    /// newest record of every slot that is loading (with a known start), ready or releasing.
    pub fn consumer_plan(&self) -> Vec<(u32, i64)> {
        (0..self.slots)
            .filter_map(|s| {
                let slot = self.slot(s);
                match slot.phase {
                    Phase::Idle => None,
                    Phase::Loading if slot.load_target.is_none() => None,
                    _ => Some((s, slot.history.last_offset() + 1)),
                }
            })
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
                503,
                ErrorCode::Draining,
                "this node is draining; resolve again",
                Some(1),
            ));
        }
        if !self.serving() {
            // Without a placed rooms reader, a room message published now could be missed.
            return Err(Refusal::new(
                503,
                ErrorCode::NotReady,
                "this node is starting (no ring yet, or its rooms reader is not placed)",
                Some(1),
            ));
        }
        match self.slot(slot).phase {
            Phase::Ready => {}
            Phase::Loading => {
                return Err(Refusal::new(
                    503,
                    ErrorCode::SlotLoading,
                    "the slot is loading its history",
                    Some(1),
                ))
            }
            Phase::Idle | Phase::Releasing => {
                return Err(if token_epoch > self.ring().epoch {
                    Refusal::new(
                        503,
                        ErrorCode::NotReady,
                        "this node has not applied the token's ring epoch yet",
                        Some(1),
                    )
                } else {
                    Refusal::new(
                        409,
                        ErrorCode::SlotNotOwned,
                        "this node does not own the client's slot; resolve again",
                        None,
                    )
                });
            }
        }
        let n = self.connections.load(Ordering::Relaxed);
        if n >= self.cfg.max_connections {
            return Err(Refusal::new(
                503,
                ErrorCode::TooManyConnections,
                "this node is at its connection limit",
                Some(5),
            ));
        }
        Ok(())
    }

    /// Makes `conn` the member for its clientId in `slot`: queues the welcome and the replay of
    /// everything after `resume`, atomically with live delivery (see the module comment).
    pub fn register(
        &self,
        conn: &Arc<Conn>,
        slot: u32,
        resume: Option<i64>,
    ) -> Result<(), CloseReason> {
        let epoch = self.ring().epoch;
        let mut s = self.slot(slot);
        if s.phase != Phase::Ready {
            return Err(CloseReason {
                code: close::MOVED,
                reason: "slot moved during the handshake",
            });
        }
        let last = s.history.last_offset();
        let (recovered, from) = match resume {
            Some(r) => (s.history.covers(r), r),
            None => (true, last),
        };
        let welcome = ServerFrame::Welcome {
            node: &self.id,
            client_id: &conn.client_id,
            epoch,
            recovered,
            offset: last,
        }
        .to_json();
        conn.push_unbounded(Utf8Bytes::from(welcome));
        let mut delivered = from;
        for e in s.history.after(&conn.client_id, from) {
            conn.push_unbounded(e.frame.clone());
            delivered = e.offset;
        }
        let member = Member {
            conn: conn.clone(),
            last: delivered,
            move_sent: None,
        };
        if let Some(old) = s.members.insert(conn.client_id.clone(), member) {
            old.conn.close(CloseReason {
                code: close::REPLACED,
                reason: "replaced by a newer connection",
            });
        }
        Ok(())
    }

    /// Removes `conn` from its slot (if still the member) and from its rooms.
    pub fn unregister(&self, conn: &Conn, slot: u32, rooms: &[Box<str>]) {
        {
            let mut s = self.slot(slot);
            if s.members
                .get(&conn.client_id)
                .is_some_and(|m| m.conn.id == conn.id)
            {
                s.members.remove(&conn.client_id);
            }
        }
        if !rooms.is_empty() {
            let mut all = self.rooms.lock().expect("rooms lock is never poisoned");
            for r in rooms {
                if let Some(m) = all.get_mut(r) {
                    m.remove(&conn.id);
                    if m.is_empty() {
                        all.remove(r);
                    }
                }
            }
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
        let now = rtc_common::telemetry::now_ms();
        let min_at = now.saturating_sub(self.cfg.history_max_age_secs * 1000);
        let mut slot = self.slot(s);
        if slot.phase == Phase::Idle {
            return;
        }
        let entry = Entry {
            offset,
            recipient: recipient.into(),
            frame: frame.clone(),
            at_ms,
            key,
        };
        let pushed = slot
            .history
            .push(entry, self.cfg.history_max_messages, min_at);
        if pushed == Pushed::Old {
            return;
        }
        slot.loaded_through(offset);
        if pushed == Pushed::Duplicate {
            self.metrics.duplicate_dropped.inc();
            return;
        }
        if let Some(m) = slot.members.get_mut(recipient) {
            if offset > m.last {
                m.last = offset;
                if m.conn.push(frame) {
                    self.metrics.delivered.inc();
                    self.delivered_window.fetch_add(1, Ordering::Relaxed);
                    let us = now.saturating_sub(at_ms) * 1000;
                    if let Ok(mut h) = self.latency_us.lock() {
                        let _ = h.record(us.max(1));
                    }
                } else {
                    self.metrics.closed.with_label_values(&["4001"]).inc();
                }
            }
        }
    }

    /// Slot `s` consumed a record at `offset` that holds no message (unreadable): loading
    /// still counts it, so a slot whose last record is bad does not stay loading.
    pub fn skip(&self, s: u32, offset: i64) {
        let mut slot = self.slot(s);
        if slot.phase != Phase::Idle {
            slot.history.skip(offset);
            slot.loaded_through(offset);
        }
    }

    pub fn join(&self, room: &str, conn: &Arc<Conn>) {
        let mut all = self.rooms.lock().expect("rooms lock is never poisoned");
        all.entry(room.into())
            .or_default()
            .insert(conn.id, conn.clone());
    }

    pub fn leave(&self, room: &str, conn: &Conn) {
        let mut all = self.rooms.lock().expect("rooms lock is never poisoned");
        if let Some(m) = all.get_mut(room) {
            m.remove(&conn.id);
            if m.is_empty() {
                all.remove(room);
            }
        }
    }

    /// Fans a room message out to local members.
    pub fn fan_out(&self, room: &str, frame: Utf8Bytes) {
        let members: Vec<Arc<Conn>> = {
            let all = self.rooms.lock().expect("rooms lock is never poisoned");
            match all.get(room) {
                Some(m) => m.values().cloned().collect(),
                None => return,
            }
        };
        for c in members {
            if c.push(frame.clone()) {
                self.metrics.room_delivered.inc();
            }
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
        let drain_all = draining && drain_elapsed.is_some_and(|e| e >= grace);
        let reason = if draining { "drain" } else { "rebalance" };
        let mut sent = 0;
        let mut retired = false;
        for s in 0..self.slots {
            let mut slot = self.slot(s);
            let eligible =
                slot.phase == Phase::Releasing || (drain_all && !slot.members.is_empty());
            if !eligible {
                continue;
            }
            for m in slot.members.values_mut() {
                match m.move_sent {
                    Some(at) if at.elapsed() > deadline => {
                        m.conn.close(CloseReason {
                            code: close::MOVED,
                            reason: "moved: reconnect through resolve",
                        });
                    }
                    None if sent < batch => {
                        let delay_ms = if jitter_ms == 0 {
                            0
                        } else {
                            rand::random_range(0..=jitter_ms)
                        };
                        m.conn.push_unbounded(Utf8Bytes::from(
                            ServerFrame::Move { reason, delay_ms }.to_json(),
                        ));
                        m.move_sent = Some(Instant::now());
                        sent += 1;
                    }
                    _ => {}
                }
            }
            if slot.phase == Phase::Releasing && slot.members.is_empty() {
                slot.phase = Phase::Idle;
                slot.history.reset();
                slot.released_at = None;
                retired = true;
            }
        }
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
            if slot.phase == Phase::Releasing || draining {
                let k = slot
                    .members
                    .values()
                    .filter(|m| m.move_sent.is_none())
                    .count();
                if k > 0 {
                    n += k;
                    if let Some(t) = slot.released_at {
                        oldest = Some(oldest.map_or(t, |o| o.min(t)));
                    }
                }
            }
        }
        (n, oldest)
    }

    /// Slots owned and served, for the heartbeat.
    pub fn owned(&self) -> BTreeSet<u32> {
        (0..self.slots)
            .filter(|&s| matches!(self.slot(s).phase, Phase::Ready | Phase::Loading))
            .collect()
    }
}
