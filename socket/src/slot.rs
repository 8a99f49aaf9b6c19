//! One slot's life on a node — its phase machine, its history and its members — as pure logic:
//! the clock and the jitter come in as arguments and effects on connections go out through a
//! callback, so every transition is unit- and property-tested without a socket.
//!
//! Invariant (checked by the property tests below): a member is only ever held by a slot that
//! delivers to it (`Ready`, or `Releasing` until it has moved); a slot that is `Idle` or
//! `Loading` has no members. So no connected client is left without a reader of its partition.

use crate::history::{Entry, History, Pushed};
use std::collections::HashMap;
use std::time::{Duration, Instant};

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

/// A connected client of the slot; `C` is the node's handle on its connection.
#[derive(Debug)]
pub struct Member<C> {
    pub conn: C,
    /// Newest offset delivered (or the resume point).
    pub last: i64,
    /// When it was told to move, if it was.
    pub move_sent: Option<Instant>,
}

/// What applying a ring did to the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Gained,
    Lost,
}

/// Why the slot cannot take a new client now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Ours, loading its history.
    Loading,
    /// Not ours (idle, or given away).
    NotOwned,
}

/// What to do to a member while moving clients away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveAction {
    /// Send `move` with this delay.
    Move { delay_ms: u64 },
    /// It ignored its `move` past the deadline: close it.
    Close,
}

/// What consuming a record did.
pub enum Consumed<'a, C> {
    /// An offset already consumed (a partition read again).
    Old,
    /// A copy of a message already held: the position advanced, nothing to deliver.
    Duplicate,
    /// Stored; the member to hand it to, when connected and behind this offset (its `last` is
    /// advanced already).
    Stored(Option<&'a C>),
}

/// One slot on one node.
pub struct Slot<C> {
    pub phase: Phase,
    /// While loading: the high watermark at takeover; the slot is ready once consumed to it.
    load_target: Option<i64>,
    pub history: History,
    pub members: HashMap<Box<str>, Member<C>>,
    /// When the slot was given away.
    pub released_at: Option<Instant>,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Slot {
            phase: Phase::Idle,
            load_target: None,
            history: History::new(),
            members: HashMap::new(),
            released_at: None,
        }
    }
}

impl<C> Slot<C> {
    /// Follows a new ring: `ours` says whether it names this node as the owner. A slot gained
    /// starts loading (or, taken back while releasing, serves again with its history intact);
    /// a slot lost keeps delivering to its members until they have moved.
    pub fn apply_owner(&mut self, ours: bool, now: Instant) -> Change {
        match (ours, self.phase) {
            (true, Phase::Idle) => {
                self.history.reset();
                self.load_target = None;
                self.phase = Phase::Loading;
                Change::Gained
            }
            (true, Phase::Releasing) => {
                // Taken back before it finished leaving: history is still continuous.
                self.phase = Phase::Ready;
                self.released_at = None;
                for m in self.members.values_mut() {
                    m.move_sent = None;
                }
                Change::Gained
            }
            (false, Phase::Loading) => {
                self.phase = Phase::Idle;
                self.load_target = None;
                self.history.reset();
                Change::Lost
            }
            (false, Phase::Ready) => {
                if self.members.is_empty() {
                    self.retire();
                } else {
                    self.phase = Phase::Releasing;
                    self.released_at = Some(now);
                }
                Change::Lost
            }
            _ => Change::Unchanged,
        }
    }

    fn retire(&mut self) {
        self.phase = Phase::Idle;
        self.history.reset();
        self.released_at = None;
    }

    /// Whether the slot is loading and its start position is not known yet.
    pub fn unstarted(&self) -> bool {
        self.phase == Phase::Loading && self.load_target.is_none()
    }

    /// Starts loading from `start`; ready once records up to `high` (the high watermark read at
    /// takeover, exclusive) are consumed. Both come from the broker before the partition is
    /// read, so no record between them can be skipped.
    pub fn begin_load(&mut self, start: i64, high: i64) {
        if !self.unstarted() {
            return;
        }
        self.history.reset();
        self.history.start_at(start);
        self.load_target = Some(high);
        if start >= high {
            self.phase = Phase::Ready;
            self.load_target = None;
        }
    }

    /// The record at `offset` has been consumed: a loading slot is ready once it reaches the
    /// high watermark read at takeover.
    fn loaded_through(&mut self, offset: i64) {
        if self.load_target.is_some_and(|t| offset + 1 >= t) {
            self.phase = Phase::Ready;
            self.load_target = None;
        }
    }

    /// Where the deliver consumer should continue reading this slot's partition, if it should.
    pub fn read_from(&self) -> Option<i64> {
        match self.phase {
            Phase::Idle => None,
            Phase::Loading if self.load_target.is_none() => None,
            _ => Some(self.history.last_offset() + 1),
        }
    }

    /// Whether the node counts the slot as its own (for the heartbeat).
    pub fn owned(&self) -> bool {
        matches!(self.phase, Phase::Ready | Phase::Loading)
    }

    /// Whether a new client can be served here now.
    pub fn admit(&self) -> Result<(), Closed> {
        match self.phase {
            Phase::Ready => Ok(()),
            Phase::Loading => Err(Closed::Loading),
            Phase::Idle | Phase::Releasing => Err(Closed::NotOwned),
        }
    }

    /// Consumes a record for `recipient` (the entry's, passed borrowed so the hot path does not
    /// copy it); see [`Consumed`]. Only a slot that is not idle keeps records.
    pub fn consume(
        &mut self,
        entry: Entry,
        recipient: &str,
        max: usize,
        min_at_ms: u64,
    ) -> Option<Consumed<'_, C>> {
        if self.phase == Phase::Idle {
            return None;
        }
        debug_assert_eq!(&*entry.recipient, recipient);
        let offset = entry.offset;
        let pushed = self.history.push(entry, max, min_at_ms);
        if pushed == Pushed::Old {
            return Some(Consumed::Old);
        }
        self.loaded_through(offset);
        if pushed == Pushed::Duplicate {
            return Some(Consumed::Duplicate);
        }
        let to = self
            .members
            .get_mut(recipient)
            .filter(|m| offset > m.last)
            .map(|m| {
                m.last = offset;
                &m.conn
            });
        Some(Consumed::Stored(to))
    }

    /// A record at `offset` that holds no message (unreadable): loading still counts it, so a
    /// slot whose last record is bad does not stay loading.
    pub fn skip(&mut self, offset: i64) {
        if self.phase != Phase::Idle {
            self.history.skip(offset);
            self.loaded_through(offset);
        }
    }

    /// Makes `conn` the member for `client_id`, resumed after `resume`; returns the member it
    /// replaced, if any. Only a ready slot takes members.
    pub fn insert(
        &mut self,
        client_id: &str,
        conn: C,
        last: i64,
    ) -> Result<Option<Member<C>>, Closed> {
        self.admit()?;
        Ok(self.members.insert(
            client_id.into(),
            Member {
                conn,
                last,
                move_sent: None,
            },
        ))
    }

    /// Removes the member for `client_id` if `is_it` says it is the one leaving (a newer
    /// connection of the same client stays). An emptied releasing slot is left for the mover.
    pub fn remove(&mut self, client_id: &str, is_it: impl FnOnce(&C) -> bool) {
        if self.members.get(client_id).is_some_and(|m| is_it(&m.conn)) {
            self.members.remove(client_id);
        }
    }

    /// Members still to be told to move, if moving applies (`draining`: every slot).
    pub fn waiting_to_move(&self, draining: bool) -> usize {
        if self.phase == Phase::Releasing || draining {
            self.members
                .values()
                .filter(|m| m.move_sent.is_none())
                .count()
        } else {
            0
        }
    }

    /// One pacing step: if the slot's members must move (it is releasing, or `move_all` while
    /// draining), tells up to `budget` of them to move (with a delay from `jitter`) and closes
    /// those that ignored their `move` for longer than `deadline`, through `act`. A releasing
    /// slot left empty is retired; returns whether it was.
    pub fn pace_moves(
        &mut self,
        move_all: bool,
        now: Instant,
        budget: &mut usize,
        deadline: Duration,
        mut jitter: impl FnMut() -> u64,
        mut act: impl FnMut(&C, MoveAction),
    ) -> bool {
        if self.phase == Phase::Releasing || (move_all && !self.members.is_empty()) {
            for m in self.members.values_mut() {
                match m.move_sent {
                    Some(at) if now.saturating_duration_since(at) > deadline => {
                        act(&m.conn, MoveAction::Close)
                    }
                    None if *budget > 0 => {
                        act(&m.conn, MoveAction::Move { delay_ms: jitter() });
                        m.move_sent = Some(now);
                        *budget -= 1;
                    }
                    _ => {}
                }
            }
        }
        if self.phase == Phase::Releasing && self.members.is_empty() {
            self.retire();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn entry(offset: i64, to: &str, key: u64) -> Entry {
        Entry {
            offset,
            recipient: to.into(),
            frame: Utf8Bytes::from(format!("m{offset}")),
            at_ms: 1_000,
            key,
        }
    }

    fn ready() -> (Slot<u32>, Instant) {
        let now = Instant::now();
        let mut s = Slot::default();
        assert_eq!(s.apply_owner(true, now), Change::Gained);
        assert!(s.unstarted());
        s.begin_load(5, 5);
        assert_eq!(s.phase, Phase::Ready);
        (s, now)
    }

    #[test]
    fn loading_ends_at_the_watermark_read_at_takeover() {
        let mut s: Slot<u32> = Slot::default();
        s.apply_owner(true, Instant::now());
        s.begin_load(10, 12);
        assert_eq!((s.phase, s.read_from()), (Phase::Loading, Some(10)));
        assert_eq!(s.admit(), Err(Closed::Loading));
        assert!(matches!(
            s.consume(entry(10, "a", 1), "a", 100, 0),
            Some(Consumed::Stored(None))
        ));
        assert_eq!(s.phase, Phase::Loading);
        s.skip(11);
        assert_eq!((s.phase, s.read_from()), (Phase::Ready, Some(12)));
    }

    #[test]
    fn a_lost_slot_delivers_until_its_members_moved_then_retires() {
        let (mut s, now) = ready();
        assert!(s.insert("a", 1, 4).unwrap().is_none());
        assert_eq!(s.insert("a", 2, 4).unwrap().map(|m| m.conn), Some(1));
        assert_eq!(s.apply_owner(false, now), Change::Lost);
        assert_eq!(s.phase, Phase::Releasing);
        assert_eq!(s.insert("b", 3, 4).unwrap_err(), Closed::NotOwned);
        // Still delivered to while it has not moved.
        match s.consume(entry(5, "a", 7), "a", 100, 0) {
            Some(Consumed::Stored(Some(&c))) => assert_eq!(c, 2),
            _ => panic!("a releasing slot delivers to its member"),
        }
        let mut acts = Vec::new();
        let mut budget = 10;
        let d = Duration::from_secs(1);
        assert!(!s.pace_moves(false, now, &mut budget, d, || 7, |c, a| acts.push((*c, a))));
        assert_eq!(acts, vec![(2, MoveAction::Move { delay_ms: 7 })]);
        assert_eq!(budget, 9);
        acts.clear();
        let late = now + Duration::from_secs(2);
        s.pace_moves(false, late, &mut budget, d, || 7, |c, a| acts.push((*c, a)));
        assert_eq!(acts, vec![(2, MoveAction::Close)]);
        s.remove("a", |c| *c == 1);
        assert_eq!(
            s.members.len(),
            1,
            "an older connection does not remove the newer one"
        );
        s.remove("a", |c| *c == 2);
        assert!(s.pace_moves(false, late, &mut budget, d, || 7, |_, _| {}));
        assert_eq!((s.phase, s.read_from()), (Phase::Idle, None));
    }

    #[test]
    fn taken_back_while_releasing_serves_again_with_its_history() {
        let (mut s, now) = ready();
        s.insert("a", 1, 4).unwrap();
        s.consume(entry(5, "a", 1), "a", 100, 0);
        s.apply_owner(false, now);
        let mut budget = 1;
        s.pace_moves(
            false,
            now,
            &mut budget,
            Duration::from_secs(9),
            || 0,
            |_, _| {},
        );
        assert_eq!(s.apply_owner(true, now), Change::Gained);
        assert_eq!(s.phase, Phase::Ready);
        assert!(s.members.values().all(|m| m.move_sent.is_none()));
        assert_eq!(s.read_from(), Some(6));
    }

    #[test]
    fn the_move_budget_is_shared_and_respected() {
        let (mut s, now) = ready();
        for (i, c) in ["a", "b", "c"].iter().enumerate() {
            s.insert(c, i as u32, 4).unwrap();
        }
        let mut budget = 2;
        let mut moved = 0;
        // Draining moves the clients of a slot still owned too.
        s.pace_moves(
            true,
            now,
            &mut budget,
            Duration::from_secs(9),
            || 0,
            |_, _| moved += 1,
        );
        assert_eq!((moved, budget, s.waiting_to_move(true)), (2, 0, 1));
        assert_eq!(
            s.waiting_to_move(false),
            0,
            "a ready slot moves nobody unless draining"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Owner(bool),
        BeginLoad(i64, i64),
        Consume(i64, u8),
        Connect(u8),
        Disconnect(u8),
        Pace(bool, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<bool>().prop_map(Op::Owner),
            (0i64..20, 0i64..25).prop_map(|(a, b)| Op::BeginLoad(a, b)),
            (0i64..40, 0u8..4).prop_map(|(o, c)| Op::Consume(o, c)),
            (0u8..4).prop_map(Op::Connect),
            (0u8..4).prop_map(Op::Disconnect),
            (any::<bool>(), 0u64..3000).prop_map(|(d, ms)| Op::Pace(d, ms)),
        ]
    }

    fn check<C>(s: &Slot<C>) -> Result<(), TestCaseError> {
        // A member is served: only a ready or releasing slot holds members.
        if !s.members.is_empty() {
            prop_assert!(
                matches!(s.phase, Phase::Ready | Phase::Releasing),
                "{} members in a {:?} slot",
                s.members.len(),
                s.phase
            );
        }
        prop_assert_eq!(s.phase == Phase::Releasing, s.released_at.is_some());
        if s.phase == Phase::Idle {
            prop_assert_eq!(s.read_from(), None);
        }
        Ok(())
    }

    proptest! {
        /// Over any sequence of ring changes, loads, records, connects, disconnects and pacing
        /// steps on two nodes that follow the same rings (clients following their `move` to the
        /// other node), every member is held by a slot that delivers to it, each client is
        /// served by at most one ready slot, and both nodes never own the slot at once.
        #[test]
        fn a_member_is_served_by_exactly_one_slot_phase(ops in proptest::collection::vec(op(), 1..80)) {
            let start = Instant::now();
            let mut nodes: [Slot<u8>; 2] = [Slot::default(), Slot::default()];
            let mut owner = 0usize;
            let mut now = start;
            for op in ops {
                match op {
                    Op::Owner(flip) => {
                        if flip { owner = 1 - owner; }
                        for (i, n) in nodes.iter_mut().enumerate() {
                            n.apply_owner(i == owner, now);
                        }
                    }
                    Op::BeginLoad(a, b) => nodes[owner].begin_load(a, b),
                    Op::Consume(o, c) => {
                        let key = u64::from(c);
                        for n in nodes.iter_mut() {
                            if let Some(Consumed::Stored(Some(to))) = n.consume(entry(o, &c.to_string(), key), &c.to_string(), 100, 0) {
                                prop_assert_eq!(*to, c);
                            }
                        }
                    }
                    Op::Connect(c) => {
                        // A client connects where the ring sends it; a newer connection
                        // replaces its older one there.
                        let id = c.to_string();
                        if nodes[owner].insert(&id, c, -1).is_ok() {
                            let other = &mut nodes[1 - owner];
                            other.remove(&id, |_| true);
                        }
                    }
                    Op::Disconnect(c) => {
                        for n in nodes.iter_mut() { n.remove(&c.to_string(), |_| true); }
                    }
                    Op::Pace(move_all, ms) => {
                        now += Duration::from_millis(ms);
                        for n in nodes.iter_mut() {
                            let mut budget = 2;
                            let mut gone = Vec::new();
                            n.pace_moves(move_all, now, &mut budget, Duration::from_secs(1), || 0, |c, a| {
                                if a == MoveAction::Close { gone.push(*c); }
                            });
                            for c in gone { n.remove(&c.to_string(), |_| true); }
                            n.pace_moves(false, now, &mut 0, Duration::from_secs(1), || 0, |_, _| {});
                        }
                    }
                }
                for n in &nodes { check(n)?; }
                prop_assert!(!(nodes[0].owned() && nodes[1].owned()), "both nodes own the slot");
                for c in 0u8..4 {
                    let ready = nodes
                        .iter()
                        .filter(|n| n.phase == Phase::Ready && n.members.contains_key(c.to_string().as_str()))
                        .count();
                    prop_assert!(ready <= 1, "client {} is a member of {} ready slots", c, ready);
                }
            }
        }
    }
}
