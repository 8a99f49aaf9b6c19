//! One client connection as the rest of the node sees it: identity plus a send queue bounded in
//! bytes. The connection task in `ws.rs` drains the queue into the socket.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why the server ends a connection: a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    bytes: usize,
    close: Option<CloseReason>,
}

/// A connected client.
pub struct Conn {
    /// Unique per process, so a replaced connection never removes its successor.
    pub id: u64,
    pub client_id: Box<str>,
    limit: usize,
    queue: Mutex<Queue>,
    notify: Notify,
}

impl Conn {
    pub fn new(client_id: &str, limit: usize) -> Self {
        Conn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client_id: client_id.into(),
            limit,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
        }
    }

    /// Queues a frame. Past the byte bound the connection is closed as a slow consumer (the
    /// client resumes from its last offset elsewhere, so nothing is lost) and false is returned.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        self.push_inner(frame, true)
    }

    /// Queues a frame the bound does not apply to: the welcome and a resume replay, which are
    /// bounded by the history itself, and control frames.
    pub fn push_unbounded(&self, frame: Utf8Bytes) {
        self.push_inner(frame, false);
    }

    fn push_inner(&self, frame: Utf8Bytes, bounded: bool) -> bool {
        let mut q = self.queue.lock().expect("queue lock is never poisoned");
        if q.close.is_some() {
            return false;
        }
        if bounded && q.bytes + frame.len() > self.limit {
            q.close = Some(CloseReason {
                code: rtc_protocol::close::SLOW_CONSUMER,
                reason: "slow consumer",
            });
            q.frames.clear();
            q.bytes = 0;
            drop(q);
            self.notify.notify_one();
            return false;
        }
        if bounded {
            q.bytes += frame.len();
        }
        q.frames.push_back(frame);
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Asks the connection task to close with `reason` once queued frames are written.
    pub fn close(&self, reason: CloseReason) {
        let mut q = self.queue.lock().expect("queue lock is never poisoned");
        q.close.get_or_insert(reason);
        drop(q);
        self.notify.notify_one();
    }

    /// Moves queued frames into `out`; returns the close request, if any.
    pub fn take(&self, out: &mut Vec<Utf8Bytes>) -> Option<CloseReason> {
        let mut q = self.queue.lock().expect("queue lock is never poisoned");
        out.extend(q.frames.drain(..));
        q.bytes = 0;
        if q.frames.capacity() > 64 {
            q.frames.shrink_to(16);
        }
        q.close
    }

    /// Resolves when something was queued or a close was asked for.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_bound_closes_as_slow_consumer() {
        let c = Conn::new("a", 10);
        assert!(c.push(Utf8Bytes::from_static("12345")));
        assert!(c.push(Utf8Bytes::from_static("12345")));
        assert!(!c.push(Utf8Bytes::from_static("1")));
        let mut out = Vec::new();
        let close = c.take(&mut out);
        assert!(out.is_empty(), "a slow consumer's queue is dropped");
        assert_eq!(close.map(|c| c.code), Some(4001));
        assert!(
            !c.push(Utf8Bytes::from_static("x")),
            "nothing is queued after close"
        );
    }

    #[test]
    fn replay_is_not_bounded_and_take_drains_in_order() {
        let c = Conn::new("a", 4);
        c.push_unbounded(Utf8Bytes::from_static("welcome"));
        c.push_unbounded(Utf8Bytes::from_static("replayed"));
        assert!(c.push(Utf8Bytes::from_static("ab")));
        let mut out = Vec::new();
        assert_eq!(c.take(&mut out), None);
        assert_eq!(out, vec!["welcome", "replayed", "ab"]);
    }
}
