//! Per-slot message history for resume: bounded by count and age, complete from `floor` on, and
//! aware of which (recipient, sender, id) it holds, so a record stored twice in Kafka (a
//! producer retry the broker could not deduplicate, or a client retrying a send) is delivered
//! once. Pure data structure; the slot lock in `node.rs` makes its use race-free.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One delivered record of the slot.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: i64,
    pub recipient: Box<str>,
    /// The `msg` frame, serialized once and shared.
    pub frame: Utf8Bytes,
    pub at_ms: u64,
    /// Identity of the message: a hash of (recipient, sender, sender's id).
    pub key: u64,
}

/// The identity of a direct message, for deduplication.
pub fn message_key(recipient: &str, from: &str, id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (recipient, from, id).hash(&mut h);
    h.finish()
}

/// What `History::push` did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    /// An offset already consumed (a re-assigned partition read again).
    Old,
    /// A new offset carrying a message already held: skipped, but the position advanced.
    Duplicate,
}

/// The records of one partition the node has seen, newest last.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<Entry>,
    /// Every record with offset >= floor is either in `entries` or not yet consumed.
    /// `None` until the slot's start position is known.
    floor: Option<i64>,
    /// The newest offset consumed, -1 when none.
    last: i64,
    /// Keys of the entries held.
    keys: HashSet<u64>,
}

impl History {
    pub fn new() -> Self {
        History {
            entries: VecDeque::new(),
            floor: None,
            last: -1,
            keys: HashSet::new(),
        }
    }

    /// Forgets everything (slot given up or taken over afresh).
    pub fn reset(&mut self) {
        *self = History::new();
    }

    /// Marks the history complete from `offset` on: the consumer starts there.
    pub fn start_at(&mut self, offset: i64) {
        if self.floor.is_none() {
            self.floor = Some(offset);
            self.last = self.last.max(offset - 1);
        }
    }

    pub fn floor(&self) -> Option<i64> {
        self.floor
    }

    pub fn last_offset(&self) -> i64 {
        self.last
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a record. An offset already seen (a partition re-assigned from an earlier
    /// position) is `Old`; a message already held under another offset is `Duplicate`.
    pub fn push(&mut self, e: Entry, max_len: usize, min_at_ms: u64) -> Pushed {
        if e.offset <= self.last && self.floor.is_some() {
            return Pushed::Old;
        }
        self.follow(e.offset);
        if self.floor.is_none() {
            self.floor = Some(e.offset);
        }
        self.last = e.offset;
        if !self.keys.insert(e.key) {
            return Pushed::Duplicate;
        }
        self.entries.push_back(e);
        self.trim(max_len, min_at_ms);
        Pushed::Stored
    }

    /// Consumes a record that holds no message (unreadable): nothing to serve, but the slot has
    /// read past it.
    pub fn skip(&mut self, offset: i64) {
        if self.floor.is_some() && offset > self.last {
            self.follow(offset);
            self.last = offset;
        }
    }

    /// Notices records that were never read. A partition's records have consecutive offsets
    /// (idempotent producers, no transactions, no compaction on `rtc.deliver`), so a consumed
    /// offset past the next one means records were deleted before this node read them (the
    /// consumer was reset past retention, or past the embedded broker's bound): the history is
    /// complete only from here on, and a resume from before the jump is not `recovered`.
    fn follow(&mut self, offset: i64) {
        if self.floor.is_some() && offset > self.last + 1 {
            tracing::warn!(
                from = self.last + 1,
                to = offset,
                "records of a slot were deleted before they were read"
            );
            self.entries.clear();
            self.keys.clear();
            self.floor = Some(offset);
        }
    }

    /// Drops entries over `max_len` or older than `min_at_ms`, raising `floor`.
    pub fn trim(&mut self, max_len: usize, min_at_ms: u64) {
        while let Some(front) = self.entries.front() {
            if self.entries.len() > max_len || front.at_ms < min_at_ms {
                self.floor = Some(front.offset + 1);
                self.keys.remove(&front.key);
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// Whether every record of this slot after `resume` can be served.
    pub fn covers(&self, resume: i64) -> bool {
        self.floor.is_some_and(|f| resume + 1 >= f)
    }

    /// Records for `recipient` after `resume`, oldest first.
    pub fn after<'a>(
        &'a self,
        recipient: &'a str,
        resume: i64,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        let start = self.entries.partition_point(|e| e.offset <= resume);
        self.entries
            .range(start..)
            .filter(move |e| &*e.recipient == recipient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: i64, to: &str, at: u64) -> Entry {
        let key = message_key(to, "sender", &offset.to_string());
        Entry {
            offset,
            recipient: to.into(),
            frame: Utf8Bytes::from(format!("m{offset}")),
            at_ms: at,
            key,
        }
    }

    #[test]
    fn replays_only_the_recipients_records_after_resume() {
        let mut h = History::new();
        h.start_at(10);
        for (o, to) in [(10, "a"), (11, "b"), (12, "a"), (13, "a")] {
            assert_eq!(h.push(e(o, to, 0), 100, 0), Pushed::Stored);
        }
        let got: Vec<i64> = h.after("a", 10).map(|x| x.offset).collect();
        assert_eq!(got, vec![12, 13]);
        assert!(h.covers(9), "resume 9 needs 10.. which is complete");
        assert!(!h.covers(8), "offset 9 was never seen");
        assert_eq!(h.last_offset(), 13);
        assert_eq!(
            h.push(e(12, "a", 0), 100, 0),
            Pushed::Old,
            "a re-delivered offset is ignored"
        );
    }

    #[test]
    fn a_jump_in_offsets_makes_the_history_complete_only_after_it() {
        let mut h = History::new();
        h.start_at(0);
        for o in 0..5 {
            h.push(e(o, "a", 1), 100, 0);
        }
        assert!(h.covers(2));
        // 5..=7 were deleted before they were read.
        assert_eq!(h.push(e(8, "a", 1), 100, 0), Pushed::Stored);
        assert!(
            !h.covers(2),
            "a resume from before the hole is not complete"
        );
        assert!(!h.covers(6));
        assert!(h.covers(7), "from the first record after the hole it is");
        assert_eq!(h.after("a", 7).map(|e| e.offset).collect::<Vec<_>>(), [8]);
        // An unreadable record after a hole counts the same way.
        h.skip(12);
        assert!(!h.covers(8));
        assert!(h.covers(11));
        assert!(h.is_empty());
    }

    #[test]
    fn bounds_by_count_and_age_raise_the_floor() {
        let mut h = History::new();
        h.start_at(0);
        for o in 0..10 {
            h.push(e(o, "a", o as u64 * 10), 5, 0);
        }
        assert_eq!(h.len(), 5);
        assert_eq!(h.floor(), Some(5));
        assert!(h.covers(4) && !h.covers(3));
        h.trim(5, 75);
        assert_eq!(
            h.after("a", -1).map(|x| x.offset).collect::<Vec<_>>(),
            vec![8, 9]
        );
        assert_eq!(h.floor(), Some(8));
    }

    #[test]
    fn a_message_stored_twice_is_kept_once_until_it_leaves_the_window() {
        let mut h = History::new();
        h.start_at(0);
        let twice = |offset| Entry {
            key: message_key("a", "s", "x"),
            ..e(offset, "a", 0)
        };
        assert_eq!(h.push(twice(0), 2, 0), Pushed::Stored);
        assert_eq!(h.push(twice(1), 2, 0), Pushed::Duplicate);
        assert_eq!(
            h.last_offset(),
            1,
            "the position advances past the duplicate"
        );
        assert_eq!(h.after("a", -1).count(), 1);
        h.push(e(2, "a", 0), 2, 0);
        h.push(e(3, "a", 0), 2, 0);
        assert_eq!(
            h.push(twice(4), 2, 0),
            Pushed::Stored,
            "out of the window, the id is new again"
        );
    }

    #[test]
    fn empty_slot_start_sets_the_resume_point() {
        let mut h = History::new();
        h.start_at(42);
        assert_eq!(h.last_offset(), 41);
        assert!(h.covers(41));
        assert!(!h.covers(40));
    }

    #[test]
    fn skipped_records_advance_only_a_started_history() {
        let mut h = History::new();
        h.skip(5);
        assert_eq!(h.last_offset(), -1, "no start yet: nothing to advance");
        h.start_at(10);
        h.skip(10);
        h.skip(11);
        assert_eq!(h.last_offset(), 11);
        h.skip(10);
        assert_eq!(h.last_offset(), 11, "never backwards");
        assert!(h.is_empty());
        assert!(h.covers(9), "the floor stays where the start was");
    }
}
