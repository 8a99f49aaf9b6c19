//! Per-slot message history for resume: bounded by count and age, complete from `floor` on.
//! Pure data structure; the slot lock in `node.rs` makes its use race-free.

use std::collections::VecDeque;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One delivered record of the slot.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: i64,
    pub recipient: Box<str>,
    /// The `msg` frame, serialized once and shared.
    pub frame: Utf8Bytes,
    pub at_ms: u64,
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
}

impl History {
    pub fn new() -> Self {
        History {
            entries: VecDeque::new(),
            floor: None,
            last: -1,
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

    /// Appends a record; returns false (and keeps nothing) for an offset already seen, which
    /// happens when a partition is re-assigned from an earlier position.
    pub fn push(&mut self, e: Entry, max_len: usize, min_at_ms: u64) -> bool {
        if e.offset <= self.last && self.floor.is_some() {
            return false;
        }
        if self.floor.is_none() {
            self.floor = Some(e.offset);
        }
        self.last = e.offset;
        self.entries.push_back(e);
        self.trim(max_len, min_at_ms);
        true
    }

    /// Drops entries over `max_len` or older than `min_at_ms`, raising `floor`.
    pub fn trim(&mut self, max_len: usize, min_at_ms: u64) {
        while let Some(front) = self.entries.front() {
            if self.entries.len() > max_len || front.at_ms < min_at_ms {
                self.floor = Some(front.offset + 1);
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
        Entry {
            offset,
            recipient: to.into(),
            frame: Utf8Bytes::from(format!("m{offset}")),
            at_ms: at,
        }
    }

    #[test]
    fn replays_only_the_recipients_records_after_resume() {
        let mut h = History::new();
        h.start_at(10);
        for (o, to) in [(10, "a"), (11, "b"), (12, "a"), (13, "a")] {
            assert!(h.push(e(o, to, 0), 100, 0));
        }
        let got: Vec<i64> = h.after("a", 10).map(|x| x.offset).collect();
        assert_eq!(got, vec![12, 13]);
        assert!(h.covers(9), "resume 9 needs 10.. which is complete");
        assert!(!h.covers(8), "offset 9 was never seen");
        assert_eq!(h.last_offset(), 13);
        assert!(
            !h.push(e(12, "a", 0), 100, 0),
            "a re-delivered offset is ignored"
        );
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
    fn empty_slot_start_sets_the_resume_point() {
        let mut h = History::new();
        h.start_at(42);
        assert_eq!(h.last_offset(), 41);
        assert!(h.covers(41));
        assert!(!h.covers(40));
    }
}
