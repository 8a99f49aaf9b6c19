//! Rooms on this node: the local members of each room, and each room's recent history (every
//! node reads every partition of `rtc.rooms`, so every node can answer a `join` with `since` or
//! `last` for any room).
//!
//! Completeness is tracked by offset: for each room, `from` is the partition offset from which
//! every message of the room the node has consumed is still in its history. A room message is
//! appended and its members are read under one lock, and a `join` queues its history and becomes a
//! member under that same lock, so a joining member gets each message once: in the history it is
//! sent, or live after it.
//!
//! Besides each room's bounds, all rooms' history together is bounded in bytes
//! (ROOM_HISTORY_MAX_BYTES): a node holds every room's history, and rooms are as many as the
//! application makes. Past the bound the oldest messages node-wide go first, raising their rooms'
//! `from` as any eviction does, so a later `join` with `since` says `recovered:false` instead of
//! missing them silently. An index of each room's oldest message (`Inner::fronts`) makes that a
//! few map operations per message dropped, never a pass over all rooms.

use crate::conn::Conn;
use rtc_protocol::ServerFrame;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One stored room message.
struct Entry {
    offset: i64,
    at_ms: u64,
    /// Node-wide consumption order (for the byte bound: the oldest go first).
    seq: u64,
    frame: Utf8Bytes,
}

/// What an entry counts against ROOM_HISTORY_MAX_BYTES besides its frame: the entry itself
/// and its share of the deque.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>();

impl Entry {
    fn cost(&self) -> usize {
        self.frame.len() + ENTRY_OVERHEAD
    }
}

struct Member {
    conn: Arc<Conn>,
    /// Wants `member` events.
    presence: bool,
}

struct Room {
    /// Its key in `Inner::rooms`, shared with `Inner::fronts`.
    name: Arc<str>,
    partition: usize,
    members: HashMap<u64, Member>,
    history: VecDeque<Entry>,
    /// Every message of this room at an offset ≥ `from` that the node consumed is in `history`.
    from: i64,
}

struct Inner {
    rooms: HashMap<Arc<str>, Room>,
    /// The `seq` of each room's oldest held message → the room: the node-wide oldest is first.
    /// Exactly the rooms with history are here (kept so by `Room::settle` and `Inner::shed`).
    fronts: BTreeMap<u64, Arc<str>>,
    /// Per partition: the offset from which a room without an entry in `rooms` has nothing the
    /// node dropped (the reader's start, raised when a room's state is let go).
    floors: Vec<i64>,
    /// Per partition: the newest offset the reader consumed.
    positions: Vec<i64>,
    /// Bytes held by all rooms' history (`Entry::cost`).
    bytes: usize,
    /// The next entry's `seq`.
    next_seq: u64,
}

/// Bounds of a room's history on a node.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_messages: usize,
    pub max_age_ms: u64,
    /// All rooms' history together (ROOM_HISTORY_MAX_BYTES).
    pub max_bytes: usize,
}

/// How a `join` asks for history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Live messages only.
    Now,
    /// Every message after this offset.
    Offset(i64),
    /// The last N messages the node holds.
    Last(usize),
}

/// Room → members and history.
pub struct Rooms {
    inner: Mutex<Inner>,
    bounds: Bounds,
}

impl Rooms {
    pub fn new(partitions: usize, bounds: Bounds) -> Self {
        Rooms {
            inner: Mutex::new(Inner {
                rooms: HashMap::new(),
                fronts: BTreeMap::new(),
                floors: vec![0; partitions],
                positions: vec![-1; partitions],
                bytes: 0,
                next_seq: 0,
            }),
            bounds,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("rooms lock is never poisoned")
    }

    /// The reader starts partition `p` at `offset`: history is complete from there on.
    pub fn start_partition(&self, p: usize, offset: i64) {
        let mut inner = self.lock();
        inner.floors[p] = offset;
        inner.positions[p] = offset - 1;
    }

    /// The reader consumed `offset` of partition `p` holding no room message (a presence change,
    /// an unreadable record).
    pub fn advance(&self, p: usize, offset: i64) {
        let mut inner = self.lock();
        inner.follow(p, offset);
        inner.positions[p] = inner.positions[p].max(offset);
    }

    /// Stores a room message consumed at (`p`, `offset`) and returns the local members to send
    /// it to. Messages older than the age bound are consumed (so the room knows it lost them) but
    /// not kept.
    pub fn record(
        &self,
        room: &str,
        p: usize,
        offset: i64,
        at_ms: u64,
        frame: Utf8Bytes,
        now_ms: u64,
    ) -> Vec<Arc<Conn>> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.follow(p, offset);
        inner.positions[p] = inner.positions[p].max(offset);
        let floor = inner.floors[p];
        let Inner {
            rooms,
            fronts,
            bytes,
            next_seq,
            ..
        } = inner;
        let r = room_entry(rooms, room, p, floor);
        if r.history.back().is_some_and(|e| e.offset >= offset) {
            return Vec::new(); // consumed twice (a reader restart): already delivered
        }
        let before = r.front_seq();
        let entry = Entry {
            offset,
            at_ms,
            seq: *next_seq,
            frame,
        };
        *next_seq += 1;
        *bytes += entry.cost();
        r.history.push_back(entry);
        r.settle(before, self.bounds, now_ms, fronts, bytes);
        let members = r.members.values().map(|m| m.conn.clone()).collect();
        inner.shed(self.bounds.max_bytes);
        members
    }

    /// Makes `conn` a member of `room` (partition `p`): queues the `joined` answer and the
    /// history `since` asks for, atomically with live delivery. Returns whether the history
    /// was complete for `since`.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &self,
        room: &str,
        p: usize,
        conn: &Arc<Conn>,
        id: Option<&str>,
        since: Since,
        presence: bool,
        now_ms: u64,
    ) -> bool {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (floor, position) = (inner.floors[p], inner.positions[p]);
        let r = room_entry(&mut inner.rooms, room, p, floor);
        r.settle(
            r.front_seq(),
            self.bounds,
            now_ms,
            &mut inner.fronts,
            &mut inner.bytes,
        );
        let (recovered, skip) = match since {
            Since::Now => (true, r.history.len()),
            Since::Offset(s) => (
                s + 1 >= r.from,
                r.history.iter().take_while(|e| e.offset <= s).count(),
            ),
            Since::Last(n) => (true, r.history.len().saturating_sub(n)),
        };
        let joined = ServerFrame::Joined {
            id: id.map(Into::into),
            room: room.into(),
            recovered,
            offset: position,
        }
        .to_json();
        conn.push_unbounded(Utf8Bytes::from(joined));
        for e in r.history.iter().skip(skip) {
            conn.push_unbounded(e.frame.clone());
        }
        r.members.insert(
            conn.id,
            Member {
                conn: conn.clone(),
                presence,
            },
        );
        recovered
    }

    /// Takes `conn` out of every room in `rooms`.
    pub fn leave_all<'a>(&self, rooms: impl IntoIterator<Item = &'a str>, conn: &Conn) {
        let mut inner = self.lock();
        for name in rooms {
            if let Some(r) = inner.rooms.get_mut(name) {
                r.members.remove(&conn.id);
            }
        }
    }

    /// Local members of `room` that asked for `member` events.
    pub fn presence_members(&self, room: &str) -> Vec<Arc<Conn>> {
        self.lock()
            .rooms
            .get(room)
            .map(|r| {
                r.members
                    .values()
                    .filter(|m| m.presence)
                    .map(|m| m.conn.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops aged history everywhere and lets go of rooms with neither members nor history
    /// (their partition's floor rises to what they had dropped).
    pub fn sweep(&self, now_ms: u64) {
        let bounds = self.bounds;
        let mut inner = self.lock();
        let Inner {
            rooms,
            fronts,
            floors,
            bytes,
            ..
        } = &mut *inner;
        rooms.retain(|_, r| {
            r.settle(r.front_seq(), bounds, now_ms, fronts, bytes);
            let keep = !r.members.is_empty() || !r.history.is_empty();
            if !keep {
                floors[r.partition] = floors[r.partition].max(r.from);
            }
            keep
        });
    }

    /// Rooms with state on this node, and messages and bytes held in all of them (for metrics).
    pub fn sizes(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (
            inner.rooms.len(),
            inner.rooms.values().map(|r| r.history.len()).sum(),
            inner.bytes,
        )
    }
}

impl Inner {
    /// Drops the node-wide oldest history (by consumption order) until at most `target` bytes
    /// are held.
    fn shed(&mut self, target: usize) {
        if self.bytes <= target {
            return;
        }
        while self.bytes > target {
            let Some((_, name)) = self.fronts.pop_first() else {
                break;
            };
            let r = self
                .rooms
                .get_mut(&*name)
                .expect("a room in fronts is held");
            let e = r.history.pop_front().expect("a room in fronts has history");
            r.from = e.offset + 1;
            self.bytes -= e.cost();
            if let Some(next) = r.history.front() {
                self.fronts.insert(next.seq, name);
            }
        }
        tracing::debug!(
            held = self.bytes,
            "room history over ROOM_HISTORY_MAX_BYTES: the oldest messages were dropped"
        );
    }

    /// A consumed offset past the next one of partition `p` means records were deleted before
    /// the reader got them (see `History::follow`): no room of the partition is complete
    /// before it.
    fn follow(&mut self, p: usize, offset: i64) {
        if offset > self.positions[p] + 1 && self.positions[p] >= self.floors[p] - 1 {
            tracing::warn!(
                partition = p,
                from = self.positions[p] + 1,
                to = offset,
                "room records were deleted before they were read"
            );
            self.floors[p] = offset;
            for r in self.rooms.values_mut().filter(|r| r.partition == p) {
                r.from = r.from.max(offset);
            }
        }
    }
}

/// The room `name` of partition `p`, made (complete from `floor`) if the node holds none.
fn room_entry<'a>(
    rooms: &'a mut HashMap<Arc<str>, Room>,
    name: &str,
    p: usize,
    floor: i64,
) -> &'a mut Room {
    if !rooms.contains_key(name) {
        let name: Arc<str> = name.into();
        rooms.insert(name.clone(), Room::new(name, p, floor));
    }
    rooms.get_mut(name).expect("just made")
}

impl Room {
    fn new(name: Arc<str>, partition: usize, from: i64) -> Self {
        Room {
            name,
            partition,
            members: HashMap::new(),
            history: VecDeque::new(),
            from,
        }
    }

    fn front_seq(&self) -> Option<u64> {
        self.history.front().map(|e| e.seq)
    }

    /// Applies the room's own bounds, keeping the node-wide byte count and `fronts` true;
    /// `before` is the room's oldest `seq` before its history last changed (a push, or now).
    fn settle(
        &mut self,
        before: Option<u64>,
        b: Bounds,
        now_ms: u64,
        fronts: &mut BTreeMap<u64, Arc<str>>,
        bytes: &mut usize,
    ) {
        let min_at = now_ms.saturating_sub(b.max_age_ms);
        while let Some(e) = self.history.front() {
            if self.history.len() > b.max_messages || e.at_ms < min_at {
                self.from = e.offset + 1;
                *bytes -= e.cost();
                self.history.pop_front();
            } else {
                break;
            }
        }
        let after = self.front_seq();
        if before != after {
            if let Some(b) = before {
                fronts.remove(&b);
            }
            if let Some(a) = after {
                fronts.insert(a, self.name.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        max_messages: 3,
        max_age_ms: 1000,
        max_bytes: usize::MAX,
    };

    fn frame(i: i64) -> Utf8Bytes {
        Utf8Bytes::from(format!("m{i}"))
    }

    fn drain(c: &Conn) -> Vec<String> {
        let mut out = Vec::new();
        c.take(&mut out);
        out.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn members_get_messages_and_leave() {
        let rooms = Rooms::new(1, B);
        rooms.start_partition(0, 0);
        let (a, b) = (
            Arc::new(Conn::new("a", 1000)),
            Arc::new(Conn::new("b", 1000)),
        );
        rooms.join("r", 0, &a, None, Since::Now, false, 0);
        rooms.join("r", 0, &b, None, Since::Now, true, 0);
        assert_eq!(rooms.record("r", 0, 0, 0, frame(0), 0).len(), 2);
        assert_eq!(rooms.presence_members("r").len(), 1);
        rooms.leave_all(["r"], &a);
        assert_eq!(rooms.record("r", 0, 1, 0, frame(1), 0).len(), 1);
    }

    #[test]
    fn join_since_sends_exactly_what_followed_or_says_not_recovered() {
        let rooms = Rooms::new(1, B);
        rooms.start_partition(0, 10);
        for o in 10..=15 {
            let room = if [11, 14].contains(&o) { "other" } else { "r" };
            rooms.record(room, 0, o, 0, frame(o), 0);
        }
        // Offsets 11 and 14 belong to another room; the count bound (3) dropped 10.
        let c = Arc::new(Conn::new("c", 1000));
        assert!(rooms.join("r", 0, &c, Some("j"), Since::Offset(12), false, 0));
        let got = drain(&c);
        assert_eq!(
            got[0],
            r#"{"type":"joined","id":"j","room":"r","recovered":true,"offset":15}"#
        );
        assert_eq!(&got[1..], ["m13", "m15"]);
        // 10 was dropped: a client that has nothing after 9 missed it.
        let d = Arc::new(Conn::new("d", 1000));
        assert!(!rooms.join("r", 0, &d, None, Since::Offset(9), false, 0));
        assert_eq!(&drain(&d)[1..], ["m12", "m13", "m15"]);
        // From 10 on nothing was dropped.
        let e = Arc::new(Conn::new("e", 1000));
        assert!(rooms.join("r", 0, &e, None, Since::Offset(10), false, 0));
        let f = Arc::new(Conn::new("f", 1000));
        rooms.join("r", 0, &f, None, Since::Last(2), false, 0);
        assert_eq!(&drain(&f)[1..], ["m13", "m15"]);
    }

    #[test]
    fn records_deleted_before_they_were_read_make_the_partitions_rooms_incomplete() {
        let rooms = Rooms::new(2, B);
        rooms.start_partition(0, 0);
        rooms.start_partition(1, 0);
        rooms.record("r", 0, 0, 0, frame(0), 0);
        rooms.record("q", 1, 0, 0, frame(0), 0);
        // Partition 0 jumps from 0 to 5: 1..=4 were deleted unread.
        rooms.advance(0, 5);
        rooms.record("r", 0, 6, 0, frame(6), 0);
        let c = Arc::new(Conn::new("c", 1000));
        assert!(!rooms.join("r", 0, &c, None, Since::Offset(0), false, 0));
        assert!(rooms.join("r", 0, &c, None, Since::Offset(4), false, 0));
        // A room the node never held, of that partition, is complete only after the jump too.
        assert!(!rooms.join("new", 0, &c, None, Since::Offset(2), false, 0));
        // The other partition is untouched.
        assert!(rooms.join("q", 1, &c, None, Since::Offset(-1), false, 0));
    }

    #[test]
    fn a_room_the_node_never_held_is_complete_from_the_reader_start() {
        let rooms = Rooms::new(2, B);
        rooms.start_partition(1, 100);
        for o in 100..=104 {
            rooms.advance(1, o);
        }
        let c = Arc::new(Conn::new("c", 1000));
        assert!(rooms.join("q", 1, &c, None, Since::Offset(99), false, 0));
        assert!(drain(&c)[0].contains(r#""offset":104"#));
        let d = Arc::new(Conn::new("d", 1000));
        assert!(!rooms.join("q", 1, &d, None, Since::Offset(50), false, 0));
    }

    #[test]
    fn aged_rooms_are_let_go_and_raise_the_floor() {
        let rooms = Rooms::new(1, B);
        rooms.start_partition(0, 0);
        rooms.record("old", 0, 5, 0, frame(5), 0);
        rooms.sweep(5000);
        assert_eq!(rooms.sizes(), (0, 0, 0), "empty rooms are let go");
        // A later join of any room of that partition cannot claim what was dropped.
        let c = Arc::new(Conn::new("c", 1000));
        assert!(!rooms.join("old", 0, &c, None, Since::Offset(4), false, 5000));
        let d = Arc::new(Conn::new("d", 1000));
        assert!(rooms.join("old", 0, &d, None, Since::Offset(5), false, 5000));
    }

    fn cost(frame_len: usize) -> usize {
        frame_len + ENTRY_OVERHEAD
    }

    #[test]
    fn all_rooms_together_stay_under_the_byte_bound_oldest_first() {
        // Room bounds that never bite; 10 messages' worth of bytes node-wide.
        let b = Bounds {
            max_messages: 1000,
            max_age_ms: u64::MAX,
            max_bytes: cost(3) * 10,
        };
        let rooms = Rooms::new(1, b);
        rooms.start_partition(0, 0);
        // Offsets 0..=11 alternate between two rooms; the 11th and 12th records each push the
        // node-wide oldest out: 0 (of "even"), then 1 (of "odd").
        for o in 0..=11 {
            let room = if o % 2 == 0 { "even" } else { "odd" };
            rooms.record(room, 0, o, 0, Utf8Bytes::from(format!("m{o:02}")), 0);
        }
        let (_, held, bytes) = rooms.sizes();
        assert_eq!((held, bytes), (10, cost(3) * 10));
        let c = Arc::new(Conn::new("c", 1000));
        assert!(!rooms.join("even", 0, &c, None, Since::Offset(-1), false, 0));
        assert_eq!(&drain(&c)[1..], ["m02", "m04", "m06", "m08", "m10"]);
        assert!(rooms.join("even", 0, &c, None, Since::Offset(0), false, 0));
        let d = Arc::new(Conn::new("d", 1000));
        assert!(!rooms.join("odd", 0, &d, None, Since::Offset(0), false, 0));
        drain(&d);
        assert!(rooms.join("odd", 0, &d, None, Since::Offset(1), false, 0));
        assert_eq!(&drain(&d)[1..], ["m03", "m05", "m07", "m09", "m11"]);
    }

    proptest::proptest! {
        /// Whatever the rooms, sizes and bound: the bytes held are exactly what the stored
        /// entries cost and never more than the bound, the index of room fronts is exact, and a
        /// `join` that says recovered gets exactly the room's messages after its offset (none
        /// missing, none twice).
        #[test]
        fn the_byte_bound_never_loses_a_message_silently(
            records in proptest::collection::vec((0u8..6, 1usize..200, proptest::bool::weighted(0.05)), 1..300),
            max_msgs in 1usize..50,
            max_age_ms in 1u64..400,
            bound_msgs in 2usize..100,
            since in -1i64..300,
        ) {
            // Record o is stamped o ms and consumed at o ms; now and then the periodic sweep runs.
            let b = Bounds { max_messages: max_msgs, max_age_ms, max_bytes: cost(200) * bound_msgs };
            let rooms = Rooms::new(1, b);
            rooms.start_partition(0, 0);
            let mut sent: HashMap<String, Vec<(i64, String)>> = HashMap::new();
            for (o, &(room, len, sweep)) in records.iter().enumerate() {
                let o = o as i64;
                let text = format!("{o}:{}", "x".repeat(len));
                let room = format!("r{room}");
                rooms.record(&room, 0, o, o as u64, Utf8Bytes::from(text.clone()), o as u64);
                sent.entry(room).or_default().push((o, text));
                if sweep {
                    rooms.sweep(o as u64);
                }
                let inner = rooms.lock();
                let held: usize = inner.rooms.values().flat_map(|r| r.history.iter()).map(Entry::cost).sum();
                proptest::prop_assert_eq!(inner.bytes, held);
                proptest::prop_assert!(inner.bytes <= b.max_bytes);
                // The index names exactly the rooms with history, under their oldest message.
                let fronts: BTreeMap<u64, Arc<str>> = inner
                    .rooms
                    .values()
                    .filter_map(|r| Some((r.history.front()?.seq, r.name.clone())))
                    .collect();
                proptest::prop_assert_eq!(&inner.fronts, &fronts);
            }
            for (room, msgs) in &sent {
                let c = Arc::new(Conn::new("c", 100_000));
                let now = records.len() as u64 - 1;
                if rooms.join(room, 0, &c, None, Since::Offset(since), false, now) {
                    let want: Vec<String> = msgs.iter().filter(|(o, _)| *o > since).map(|(_, t)| t.clone()).collect();
                    proptest::prop_assert_eq!(&drain(&c)[1..], &want[..]);
                }
            }
        }
    }
}
