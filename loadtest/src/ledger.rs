//! The account of every message of a run: sent, answered (acked or refused), delivered (once,
//! in order per sender connection) — and so what was lost or duplicated.

use crate::plan::MsgKey;
use crate::report::{histogram, Report, Sample};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The data of every load-test message: sequence, the sender's connection, intended and actual
/// send time (µs since the epoch) and padding. Read back leniently: anything else in `data` is
/// ignored, a field missing is None.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Stamp<'a> {
    pub seq: Option<u64>,
    /// The sender's connection (0 for the first, +1 per reconnect): order is promised within
    /// one connection, not across a move.
    pub g: Option<u32>,
    pub at: Option<u64>,
    pub ts: Option<u64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub pad: Option<&'a str>,
}

/// What booking a delivered direct message found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Its first delivery.
    First,
    /// Delivered before, first at `first_offset`.
    Duplicate { first_offset: i64 },
    /// Not a message of this run.
    Foreign,
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

    /// A message was sent.
    pub fn sent_one(&mut self) {
        self.sent_total += 1;
        self.window.0 += 1;
    }

    /// A connection ended for `why` ("move", a close code, "eof", "error: …").
    pub fn closed(&mut self, why: String) {
        *self.closes.entry(why).or_default() += 1;
    }

    /// An `ack` for `seq` from client `me`; the direct message it acks, if it is one.
    pub fn ack(&mut self, me: u32, seq: Option<u64>) -> Option<u64> {
        match seq {
            Some(n) if self.sent.contains_key(&(me, n)) => {
                self.acked.insert((me, n));
                Some(n)
            }
            // Acks come only to the sender: anything else is a room publish.
            _ => {
                self.publishes_acked += 1;
                None
            }
        }
    }

    /// An `error` for `seq` from client `me`; the direct message it refuses, if it is one.
    pub fn error(&mut self, me: u32, seq: Option<u64>) -> Option<u64> {
        self.errors += 1;
        self.window.2 += 1;
        let n = seq.filter(|n| self.sent.contains_key(&(me, *n)))?;
        self.refused.insert((me, n));
        Some(n)
    }

    /// A `pong` to a ping sent at `intended` (scheduled) and `actual` (µs).
    pub fn pong(&mut self, intended: u64, actual: u64) {
        self.pongs += 1;
        self.window.1 += 1;
        self.record_latency(Some(intended), Some(actual));
    }

    /// A room message delivered.
    pub fn room_delivery(&mut self, intended: Option<u64>, actual: Option<u64>) {
        self.room_delivered += 1;
        self.window.1 += 1;
        self.record_latency(intended, actual);
    }

    /// A direct message delivered to `me` from `sender` with id `seq` at `offset`.
    pub fn delivery(
        &mut self,
        me: u32,
        sender: Option<u32>,
        seq: Option<u64>,
        offset: i64,
        stamp: &Stamp<'_>,
    ) -> Delivery {
        self.window.1 += 1;
        self.record_latency(stamp.at, stamp.ts);
        let (Some(sender), Some(n)) = (sender, seq) else {
            self.foreign += 1;
            return Delivery::Foreign;
        };
        if !self.sent.contains_key(&(sender, n)) {
            self.foreign += 1;
            return Delivery::Foreign;
        }
        let seen = self
            .delivered
            .entry((me, (sender, n)))
            .or_insert((0, offset));
        seen.0 += 1;
        if seen.0 > 1 {
            return Delivery::Duplicate {
                first_offset: seen.1,
            };
        }
        if let (Some(seq), Some(g)) = (stamp.seq, stamp.g) {
            // Per sender connection: a message from an older connection may arrive after
            // newer ones (two nodes' producers), which the protocol does not order.
            let last = self.last_seq.entry((me, sender)).or_insert((g, 0));
            let mut reordered = false;
            if g > last.0 {
                *last = (g, seq);
            } else if g == last.0 {
                reordered = seq < last.1;
                last.1 = last.1.max(seq);
            }
            self.out_of_order += usize::from(reordered);
        }
        Delivery::First
    }

    fn record_latency(&mut self, intended_us: Option<u64>, actual_us: Option<u64>) {
        let now = crate::now_us();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(seq: u64, g: u32) -> Stamp<'static> {
        Stamp {
            seq: Some(seq),
            g: Some(g),
            at: Some(1),
            ts: Some(1),
            pad: None,
        }
    }

    /// Client 0 sends ids 1..=n to client 1.
    fn sent(n: u64) -> Ledger {
        let mut l = Ledger::new();
        for i in 1..=n {
            l.sent.insert((0, i), 1);
            l.sent_one();
        }
        l
    }

    #[test]
    fn acked_and_not_delivered_is_lost_unless_the_recipient_is_gone() {
        let mut l = sent(3);
        assert_eq!(l.ack(0, Some(1)), Some(1));
        assert_eq!(l.ack(0, Some(2)), Some(2));
        assert_eq!(l.error(0, Some(3)), Some(3));
        assert_eq!(l.unanswered(), 0);
        assert_eq!(
            l.delivery(1, Some(0), Some(1), 10, &stamp(1, 0)),
            Delivery::First
        );
        assert_eq!(l.lost(), vec![(0, 2)]);
        assert!(!l.settled());
        l.gone.insert(1);
        assert!(l.lost().is_empty());
        assert_eq!(l.undeliverable(), 1);
        let r = l.report((0.0, 0.0));
        assert_eq!(
            (r.sent, r.acked, r.delivered, r.lost, r.errors),
            (3, 2, 1, 0, 1)
        );
    }

    #[test]
    fn a_second_delivery_is_a_duplicate_and_reordering_counts_per_connection() {
        let mut l = sent(3);
        assert_eq!(
            l.delivery(1, Some(0), Some(2), 20, &stamp(2, 0)),
            Delivery::First
        );
        assert_eq!(
            l.delivery(1, Some(0), Some(2), 21, &stamp(2, 0)),
            Delivery::Duplicate { first_offset: 20 }
        );
        // An older message of the same connection after a newer one is out of order ...
        l.delivery(1, Some(0), Some(1), 22, &stamp(1, 0));
        assert_eq!(l.out_of_order, 1);
        // ... one from a newer connection is not.
        l.delivery(1, Some(0), Some(3), 23, &stamp(1, 1));
        assert_eq!(l.out_of_order, 1);
        let r = l.report((0.0, 0.0));
        assert_eq!((r.delivered, r.duplicated), (3, 1));
    }

    #[test]
    fn messages_of_other_runs_and_room_acks_are_kept_apart() {
        let mut l = sent(1);
        assert_eq!(
            l.delivery(1, None, Some(1), 5, &stamp(1, 0)),
            Delivery::Foreign
        );
        assert_eq!(
            l.delivery(1, Some(0), Some(9), 5, &stamp(9, 0)),
            Delivery::Foreign
        );
        assert_eq!(l.ack(0, Some(77)), None, "an unknown id is a room publish");
        assert_eq!((l.foreign, l.publishes_acked), (2, 1));
        l.room_delivery(Some(1), Some(1));
        assert_eq!(l.room_delivered, 1);
    }

    #[test]
    fn stamps_are_read_leniently() {
        let s: Stamp =
            serde_json::from_str(r#"{"seq":4,"g":1,"at":2,"ts":3,"pad":"xx","more":1}"#).unwrap();
        assert_eq!((s.seq, s.g, s.pad), (Some(4), Some(1), Some("xx")));
        let s: Stamp = serde_json::from_str("{}").unwrap();
        assert_eq!(s.seq, None);
    }
}
