//! The load-test client and its ledger: clients resolve and connect like real ones, send on an
//! open-loop schedule, follow `move` and reconnect with their resume offset, and every message
//! is accounted for (sent, acked, delivered, lost, duplicated, out of order). Latency is
//! measured from the *intended* send time, so a stalled client cannot hide queueing
//! (coordinated omission); service time, from the actual send, is kept beside it.

pub mod html;
pub mod threshold;

use base64::Engine;
use futures_util::StreamExt;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use rtc_devkit::client::{Client, Endpoints};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

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

/// One second of a run, for the progress line and the HTML report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub t: f64,
    pub connections: usize,
    pub sent: u64,
    pub delivered: u64,
    pub errors: u64,
    pub p99_ms: f64,
}

/// Every message and delivery of a run.
pub struct Ledger {
    /// Direct message → recipient's index.
    pub sent: HashMap<MsgKey, u32>,
    pub sent_total: u64,
    pub acked: HashSet<MsgKey>,
    /// Direct messages refused with an `error` frame (not accepted, so not owed).
    pub refused: HashSet<MsgKey>,
    pub errors: usize,
    /// (recipient, message) → (times delivered, offset of the first delivery).
    pub delivered: HashMap<(u32, MsgKey), (u32, i64)>,
    /// Newest (sender connection, seq) seen per (recipient, sender), to spot reordering.
    last_seq: HashMap<(u32, u32), (u32, u64)>,
    /// Clients that ended without a connection (could not connect or reconnect): messages to
    /// them wait in Kafka and are not counted lost.
    pub gone: HashSet<u32>,
    /// Why connections ended before the run did: "move", a close code, "eof" or "error: …".
    pub closes: BTreeMap<String, u64>,
    /// Room publishes acked.
    pub publishes_acked: usize,
    /// Direct messages sent again after a reconnect because their answer had not come.
    pub resent: u64,
    /// Direct messages from senders outside this run (or with ids it never sends).
    pub foreign: u64,
    pub out_of_order: usize,
    pub room_delivered: u64,
    pub pongs: u64,
    pub reconnects: usize,
    pub disconnects: usize,
    pub connect_failures: usize,
    /// Client → node it ended on.
    pub final_node: HashMap<String, String>,
    /// Delivery latency from the intended send time, microseconds.
    pub latency_us: Histogram<u64>,
    /// Delivery latency from the actual send, microseconds.
    pub service_us: Histogram<u64>,
    /// Clients connected right now.
    pub connected: usize,
    /// Counters since the last sample: sent, delivered, errors; and the window's latencies.
    window: (u64, u64, u64),
    window_latency: Histogram<u64>,
    pub series: Vec<Sample>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            sent: HashMap::new(),
            sent_total: 0,
            acked: HashSet::new(),
            refused: HashSet::new(),
            errors: 0,
            delivered: HashMap::new(),
            last_seq: HashMap::new(),
            gone: HashSet::new(),
            closes: BTreeMap::new(),
            publishes_acked: 0,
            resent: 0,
            foreign: 0,
            out_of_order: 0,
            room_delivered: 0,
            pongs: 0,
            reconnects: 0,
            disconnects: 0,
            connect_failures: 0,
            final_node: HashMap::new(),
            latency_us: histogram(),
            service_us: histogram(),
            connected: 0,
            window: (0, 0, 0),
            window_latency: histogram(),
            series: Vec::new(),
        }
    }
}

/// The outcome of a run (or of one worker), mergeable across workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub clients: usize,
    pub sent: u64,
    pub acked: usize,
    /// Sent, neither acked nor refused by the end (the connection closed first, or the run
    /// ended before the answer): not accepted as far as the sender knows.
    pub unacked: usize,
    pub delivered: usize,
    /// Acked and never delivered to a connected recipient: what the system promised and did
    /// not do.
    pub lost: usize,
    /// Acked, not delivered, recipient without a connection at the end (kept in Kafka for it).
    pub undeliverable: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    pub room_delivered: u64,
    pub pongs: u64,
    /// Direct messages received from senders outside this run (not booked).
    pub foreign: u64,
    /// Direct messages sent again (same id) after a reconnect, their answer not yet received.
    pub resent: u64,
    /// Why connections ended before the run did ("move", close code, "eof", "error: …") → count.
    pub closes: BTreeMap<String, u64>,
    pub errors: usize,
    pub reconnects: usize,
    pub disconnects: usize,
    pub connect_failures: usize,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub service_ms_p50: f64,
    pub service_ms_p99: f64,
    pub per_node: BTreeMap<String, u64>,
    /// Client process CPU while sending, seconds: user space and kernel.
    pub cpu_user_secs: f64,
    pub cpu_sys_secs: f64,
    /// Client process CPU per message received (delivery or pong), microseconds: in all, in
    /// user space (the tool's own work) and in the kernel (TCP; on loopback a send also pays for
    /// the receiving side's TCP input).
    pub client_cpu_us_per_msg: f64,
    pub client_user_us_per_msg: f64,
    pub client_sys_us_per_msg: f64,
    pub series: Vec<Sample>,
    /// The latency histograms, V2-serialized and base64-encoded, for merging workers.
    pub latency_hist: String,
    pub service_hist: String,
}

/// Adds `other`'s counts into `into`, key by key.
fn add_counts(into: &mut BTreeMap<String, u64>, other: &BTreeMap<String, u64>) {
    for (k, v) in other {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn encode(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    let _ = V2Serializer::new().serialize(h, &mut buf);
    base64::engine::general_purpose::STANDARD.encode(buf)
}

fn decode(s: &str) -> Option<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).ok()
}

impl Report {
    /// Fills the quantiles from the histograms.
    fn set_quantiles(&mut self, lat: &Histogram<u64>, svc: &Histogram<u64>) {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        self.latency_ms_p50 = ms(lat, 0.5);
        self.latency_ms_p90 = ms(lat, 0.9);
        self.latency_ms_p99 = ms(lat, 0.99);
        self.latency_ms_p999 = ms(lat, 0.999);
        self.latency_ms_max = lat.max() as f64 / 1000.0;
        self.service_ms_p50 = ms(svc, 0.5);
        self.service_ms_p99 = ms(svc, 0.99);
        self.latency_hist = encode(lat);
        self.service_hist = encode(svc);
    }

    /// Adds another worker's report: counts summed, histograms merged, series summed by second.
    pub fn merge(&mut self, o: &Report) {
        let mut lat = decode(&self.latency_hist).unwrap_or_else(histogram);
        let mut svc = decode(&self.service_hist).unwrap_or_else(histogram);
        if let Some(h) = decode(&o.latency_hist) {
            let _ = lat.add(&h);
        }
        if let Some(h) = decode(&o.service_hist) {
            let _ = svc.add(&h);
        }
        self.cpu_user_secs += o.cpu_user_secs;
        self.cpu_sys_secs += o.cpu_sys_secs;
        self.clients += o.clients;
        self.sent += o.sent;
        self.acked += o.acked;
        self.unacked += o.unacked;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.undeliverable += o.undeliverable;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.room_delivered += o.room_delivered;
        self.foreign += o.foreign;
        self.resent += o.resent;
        add_counts(&mut self.closes, &o.closes);
        self.pongs += o.pongs;
        self.errors += o.errors;
        self.reconnects += o.reconnects;
        self.disconnects += o.disconnects;
        self.connect_failures += o.connect_failures;
        add_counts(&mut self.per_node, &o.per_node);
        for (i, s) in o.series.iter().enumerate() {
            if i >= self.series.len() {
                self.series.push(Sample {
                    t: s.t,
                    ..Default::default()
                });
            }
            let d = &mut self.series[i];
            d.connections += s.connections;
            d.sent += s.sent;
            d.delivered += s.delivered;
            d.errors += s.errors;
            d.p99_ms = d.p99_ms.max(s.p99_ms);
        }
        self.set_quantiles(&lat, &svc);
        self.set_cpu();
    }

    /// Fills the per-message CPU figures from the CPU totals and the messages received.
    fn set_cpu(&mut self) {
        let msgs = (self.delivered as u64 + self.pongs + self.room_delivered) as f64;
        let per = |secs: f64| if msgs > 0.0 { secs * 1e6 / msgs } else { 0.0 };
        self.client_user_us_per_msg = per(self.cpu_user_secs);
        self.client_sys_us_per_msg = per(self.cpu_sys_secs);
        self.client_cpu_us_per_msg = per(self.cpu_user_secs + self.cpu_sys_secs);
    }
}

impl Ledger {
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Acked direct messages that have not reached their recipient, though it is connected.
    pub fn lost(&self) -> Vec<MsgKey> {
        self.undelivered(|to| !self.gone.contains(&to))
    }

    /// Acked direct messages not delivered whose recipient has no connection.
    pub fn undeliverable(&self) -> usize {
        self.undelivered(|to| self.gone.contains(&to)).len()
    }

    fn undelivered(&self, recipient: impl Fn(u32) -> bool) -> Vec<MsgKey> {
        self.acked
            .iter()
            .filter(|k| {
                self.sent
                    .get(*k)
                    .is_some_and(|&to| recipient(to) && !self.delivered.contains_key(&(to, **k)))
            })
            .copied()
            .collect()
    }

    /// Every message sent has been answered and every acked one delivered: nothing more is
    /// owed, so a run may stop waiting.
    pub fn settled(&self) -> bool {
        self.unanswered() == 0 && self.lost().is_empty()
    }

    /// Direct messages sent and not yet answered (neither acked nor refused).
    pub fn unanswered(&self) -> usize {
        self.sent
            .keys()
            .filter(|k| !self.acked.contains(*k) && !self.refused.contains(*k))
            .count()
    }

    /// Answers and deliveries so far: the end-of-run wait stops when this stops moving.
    pub fn progress(&self) -> usize {
        self.acked.len() + self.refused.len() + self.delivered.len() + self.errors
    }

    /// Closes the current second: a sample for the progress line and the report.
    pub fn sample(&mut self, t: f64) -> Sample {
        let (sent, delivered, errors) = std::mem::take(&mut self.window);
        let p99_ms = self.window_latency.value_at_quantile(0.99) as f64 / 1000.0;
        self.window_latency.reset();
        let s = Sample {
            t,
            connections: self.connected,
            sent,
            delivered,
            errors,
            p99_ms,
        };
        self.series.push(s.clone());
        s
    }

    /// The report of this process; `cpu` is (user, kernel) CPU seconds spent while sending.
    pub fn report(&self, cpu: (f64, f64)) -> Report {
        let mut per_node = BTreeMap::new();
        for n in self.final_node.values() {
            *per_node.entry(n.clone()).or_insert(0) += 1;
        }
        let mut r = Report {
            clients: self.final_node.len(),
            sent: self.sent_total,
            acked: self.acked.len() + self.publishes_acked,
            foreign: self.foreign,
            resent: self.resent,
            undeliverable: self.undeliverable(),
            closes: self.closes.clone(),
            unacked: self.unanswered(),
            delivered: self.delivered.len(),
            lost: self.lost().len(),
            duplicated: self.delivered.values().filter(|(n, _)| *n > 1).count(),
            out_of_order: self.out_of_order,
            room_delivered: self.room_delivered,
            pongs: self.pongs,
            errors: self.errors,
            reconnects: self.reconnects,
            disconnects: self.disconnects,
            connect_failures: self.connect_failures,
            per_node,
            cpu_user_secs: cpu.0,
            cpu_sys_secs: cpu.1,
            series: self.series.clone(),
            ..Default::default()
        };
        r.set_quantiles(&self.latency_us, &self.service_us);
        r.set_cpu();
        r
    }

    fn record_latency(&mut self, intended_us: Option<u64>, actual_us: Option<u64>) {
        let now = now_us();
        if let Some(t) = intended_us {
            let v = now.saturating_sub(t).max(1);
            let _ = self.latency_us.record(v);
            let _ = self.window_latency.record(v);
        }
        if let Some(t) = actual_us {
            let _ = self.service_us.record(now.saturating_sub(t).max(1));
        }
    }
}

/// This process's CPU time so far, seconds: (user, kernel).
pub fn process_cpu() -> (f64, f64) {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = |i: usize| Some(rest.get(i)?.parse::<u64>().ok()? as f64 / 100.0);
            Some((ticks(11)?, ticks(12)?))
        })
        .unwrap_or((0.0, 0.0))
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One client's whole life: connect (within the handshake limit), wait for `start`, send on the
/// schedule while sending, account for everything received, follow moves; ends on `Done`.
pub async fn run_client(
    plan: Plan,
    index: usize,
    phase: watch::Receiver<Phase>,
    ledger: Arc<Mutex<Ledger>>,
    start: Arc<tokio::sync::Barrier>,
) {
    let me = plan.peers.name(index as u32).to_string();
    let me_idx = index as u32;
    let mut ep = plan.ep.clone();
    if !plan.sources.is_empty() {
        ep.bind = Some(plan.sources[index % plan.sources.len()]);
    }
    let room = format!("room-{}", index % plan.rooms.max(1));
    let connected = {
        let _permit = plan
            .handshakes
            .acquire()
            .await
            .expect("the semaphore is never closed");
        // Boxed: the handshake's state is large and needed only briefly; inline it would sit in
        // every client's task for the whole run.
        Box::pin(Client::connect(&ep, &me, None, Duration::from_secs(60))).await
    };
    let mut c = match connected {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(client = %me, error = %e, "could not connect");
            {
                let mut l = ledger.lock().expect("ledger lock");
                l.connect_failures += 1;
                l.gone.insert(index as u32);
            }
            start.wait().await;
            return;
        }
    };
    if plan.pattern == Pattern::Room {
        let _ = c.send_text(join_frame(&room)).await;
    }
    ledger.lock().expect("ledger lock").connected += 1;
    // Until every client is connected this one keeps reading (answering the node's pings: a
    // client that stops reading is dropped as dead), and waits at the barrier in the loop.
    let mut started = false;
    let mut barrier = Box::pin(start.wait());
    let mut seq = 0u64;
    let mut generation = 0u32;
    let mut pending = Pending::default();
    // Spread clients over the interval so sends do not come in bursts.
    let offset = Duration::from_micros(
        u64::from(rtc_common::slot::murmur2(me.as_bytes()) as u32)
            % plan.interval.as_micros().max(1) as u64,
    );
    // Open loop: ticks that fall due while the client is busy (reconnecting, blocked on a full
    // socket) fire late, back to back, and carry their intended time — so the wait counts.
    let (mut base_at, mut base_us) = (tokio::time::Instant::now(), now_us());
    let mut tick = tokio::time::interval_at(base_at + offset, plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // One long-lived future per phase change instead of a new waiter on every frame.
    let mut sending = *phase.borrow() == Phase::Sending;
    let mut changed = Box::pin(next_phase(phase));
    loop {
        tokio::select! {
            _ = &mut barrier, if !started => {
                // The schedule starts now.
                started = true;
                (base_at, base_us) = (tokio::time::Instant::now(), now_us());
                tick.reset_at(base_at + offset);
            }
            (p, rx) = &mut changed => {
                match p {
                    Phase::Done => break,
                    p => sending = p == Phase::Sending,
                }
                changed = Box::pin(next_phase(rx));
            }
            due = tick.tick(), if sending && started => {
                let intended = base_us + due.duration_since(base_at).as_micros() as u64;
                seq += 1;
                let id = seq.to_string();
                let stamp = Stamp { seq, g: generation, at: intended, ts: now_us(), pad: &plan.pad };
                let out = match plan.pattern {
                    Pattern::Direct | Pattern::SelfSend => {
                        let to = if plan.pattern == Pattern::SelfSend {
                            me_idx
                        } else {
                            ((index + 1 + (seq as usize * 7919) % (plan.peers.len() - 1).max(1)) % plan.peers.len()) as u32
                        };
                        ledger.lock().expect("ledger lock").sent.insert((me_idx, seq), to);
                        Outgoing { ty: "send", id: &id, to: Some(plan.peers.name(to)), room: None, data: Some(stamp) }
                    }
                    Pattern::Room => Outgoing { ty: "publish", id: &id, to: None, room: Some(&room), data: Some(stamp) },
                    Pattern::Ping => {
                        pending.pings.insert(seq, (intended, now_us()));
                        Outgoing { ty: "ping", id: &id, to: None, room: None, data: None }
                    }
                };
                let text = serde_json::to_string(&out).expect("frames serialize");
                if out.ty == "send" {
                    pending.sends.insert(seq, text.clone());
                }
                {
                    let mut l = ledger.lock().expect("ledger lock");
                    l.sent_total += 1;
                    l.window.0 += 1;
                }
                if c.send_text(text).await.is_err() {
                    generation += 1;
                    if !reconnect(&mut c, &plan, &room, &mut pending, &ledger).await {
                        break;
                    }
                }
            }
            m = c.ws.next() => {
                let must_reconnect = match m {
                    Some(Ok(Message::Text(t))) => handle(me_idx, &t, &mut c, &plan.peers, &mut pending, &ledger),
                    Some(Ok(Message::Close(f))) => {
                        let code = f.map_or(1005, |f| u16::from(f.code));
                        *ledger.lock().expect("ledger lock").closes.entry(code.to_string()).or_default() += 1;
                        true
                    }
                    Some(Err(e)) => {
                        *ledger.lock().expect("ledger lock").closes.entry(format!("error: {e}")).or_default() += 1;
                        true
                    }
                    None => {
                        *ledger.lock().expect("ledger lock").closes.entry("eof".into()).or_default() += 1;
                        true
                    }
                    Some(Ok(_)) => false,
                };
                if must_reconnect {
                    if c.moved {
                        tokio::time::sleep(Duration::from_millis(c.move_delay_ms)).await;
                    }
                    generation += 1;
                    if !reconnect(&mut c, &plan, &room, &mut pending, &ledger).await { break; }
                }
            }
        }
    }
    if !started {
        // Gave up before the start: the others still wait for this client at the barrier.
        barrier.await;
    }
    let mut l = ledger.lock().expect("ledger lock");
    l.connected -= 1;
    l.final_node.insert(me, c.node.clone());
}

/// The phase once it changes (Done when the sender is gone), and the receiver to wait again.
async fn next_phase(mut phase: watch::Receiver<Phase>) -> (Phase, watch::Receiver<Phase>) {
    let p = match phase.changed().await {
        Ok(()) => *phase.borrow_and_update(),
        Err(_) => Phase::Done,
    };
    (p, phase)
}

fn join_frame(room: &str) -> String {
    serde_json::json!({"type": "join", "room": room}).to_string()
}

/// A frame the load test sends, serialized straight from borrowed fields.
#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Stamp<'a>>,
}

/// The data of every load-test message: sequence, intended and actual send time (µs), padding.
#[derive(Serialize)]
struct Stamp<'a> {
    seq: u64,
    /// The sender's connection (0 for the first, +1 per reconnect): order is promised within
    /// one connection, not across a move.
    g: u32,
    at: u64,
    ts: u64,
    pad: &'a str,
}

/// The fields of a server frame the load test books, borrowed from the frame's text.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default, borrow)]
    room: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, rename = "delayMs")]
    delay_ms: Option<u64>,
}

/// The stamp read back from a delivered message (anything else in `data` is ignored).
#[derive(Deserialize, Default)]
struct StampIn {
    seq: Option<u64>,
    g: Option<u32>,
    at: Option<u64>,
    ts: Option<u64>,
}

/// Books one text frame; true when the client must reconnect (a `move`).
fn handle(
    me: u32,
    text: &str,
    c: &mut Client,
    peers: &Peers,
    pending: &mut Pending,
    ledger: &Mutex<Ledger>,
) -> bool {
    let Ok(f) = serde_json::from_str::<Incoming>(text) else {
        tracing::warn!(client = peers.name(me), frame = text, "unparseable frame");
        ledger.lock().expect("ledger lock").errors += 1;
        return false;
    };
    c.observe(&f.ty, f.offset, f.delay_ms);
    // Every id this run sends is its sequence number.
    let seq: Option<u64> = f.id.as_deref().and_then(|i| i.parse().ok());
    let mut l = ledger.lock().expect("ledger lock");
    match &*f.ty {
        "ack" => match seq {
            Some(n) if l.sent.contains_key(&(me, n)) => {
                pending.sends.remove(&n);
                l.acked.insert((me, n));
            }
            // Acks come only to the sender: anything else is a room publish.
            _ => l.publishes_acked += 1,
        },
        "pong" => {
            if let Some((intended, actual)) = seq.and_then(|i| pending.pings.remove(&i)) {
                l.pongs += 1;
                l.window.1 += 1;
                l.record_latency(Some(intended), Some(actual));
            }
        }
        "error" => {
            l.errors += 1;
            l.window.2 += 1;
            if let Some(n) = seq.filter(|n| l.sent.contains_key(&(me, *n))) {
                pending.sends.remove(&n);
                l.refused.insert((me, n));
            }
        }
        "msg" => {
            let stamp: StampIn = f
                .data
                .and_then(|d| serde_json::from_str(d.get()).ok())
                .unwrap_or_default();
            l.window.1 += 1;
            l.record_latency(stamp.at, stamp.ts);
            if f.room.is_some() {
                l.room_delivered += 1;
            } else {
                let from = f.from.as_deref().unwrap_or_default();
                let (Some(sender), Some(n)) = (peers.index_of(from), seq) else {
                    l.foreign += 1;
                    return false;
                };
                if !l.sent.contains_key(&(sender, n)) {
                    l.foreign += 1;
                    return false;
                }
                let offset = f.offset.unwrap_or(-1);
                let seen = l.delivered.entry((me, (sender, n))).or_insert((0, offset));
                seen.0 += 1;
                if seen.0 > 1 {
                    // Same offset twice would be a server bug; two offsets mean the record is in
                    // Kafka twice (a producer retry the broker did not deduplicate).
                    let first = seen.1;
                    tracing::warn!(
                        recipient = peers.name(me),
                        from,
                        id = n,
                        first_offset = first,
                        offset,
                        "duplicate delivery"
                    );
                    return false;
                }
                if let (Some(seq), Some(g)) = (stamp.seq, stamp.g) {
                    // Per sender connection: a message from an older connection may arrive after
                    // newer ones (two nodes' producers), which the protocol does not order.
                    let last = l.last_seq.entry((me, sender)).or_insert((g, 0));
                    let mut reordered = false;
                    if g > last.0 {
                        *last = (g, seq);
                    } else if g == last.0 {
                        reordered = seq < last.1;
                        last.1 = last.1.max(seq);
                    }
                    l.out_of_order += usize::from(reordered);
                }
            }
        }
        "move" => {
            *l.closes.entry("move".into()).or_default() += 1;
            return true;
        }
        _ => {}
    }
    false
}

/// What one client still waits to hear about.
#[derive(Default)]
struct Pending {
    /// Ping id → (intended, actual) send times, waiting for the pong.
    pings: HashMap<u64, (u64, u64)>,
    /// Direct messages neither acked nor refused yet, by sequence number, as sent. After a
    /// reconnect they are sent again with the same id, as a real client does: the answer to the
    /// first copy died with the old connection, and the owner delivers an id once.
    sends: BTreeMap<u64, String>,
}

async fn reconnect(
    c: &mut Client,
    plan: &Plan,
    room: &str,
    pending: &mut Pending,
    ledger: &Mutex<Ledger>,
) -> bool {
    {
        let mut l = ledger.lock().expect("ledger lock");
        l.connected -= 1;
        l.disconnects += 1;
    }
    let r = {
        let _permit = plan
            .handshakes
            .acquire()
            .await
            .expect("the semaphore is never closed");
        Box::pin(c.reconnect(Duration::from_secs(60))).await
    };
    if r.is_ok() && plan.pattern == Pattern::Room {
        let _ = c.send_text(join_frame(room)).await;
    }
    let mut resent = 0;
    if r.is_ok() {
        // A failure here closes the new connection too; the next read sees it and reconnects.
        for text in pending.sends.values() {
            if c.send_text(text.clone()).await.is_err() {
                break;
            }
            resent += 1;
        }
    }
    let mut l = ledger.lock().expect("ledger lock");
    // Counted as connected either way: the task's end takes it off once.
    l.connected += 1;
    l.resent += resent;
    match r {
        Ok(()) => {
            l.reconnects += 1;
            true
        }
        Err(e) => {
            tracing::warn!(client = %c.client_id, error = %e, "could not reconnect");
            l.connect_failures += 1;
            if let Some(i) = plan.peers.index_of(&c.client_id) {
                l.gone.insert(i);
            }
            false
        }
    }
}
