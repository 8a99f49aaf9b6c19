//! Noticing a dead node in about a second instead of a heartbeat TTL: the balancer connects to
//! every heartbeating node's address each ring interval. A refused connection means the process
//! is gone (its port is closed): dead at once. Timeouts count: three in a row and it is dead
//! (a frozen or unreachable node). A dead node lives again only with a heartbeat written after
//! its death and a probe that succeeds (a restarted process under the same name). The rules are
//! pure; `probe` is the only I/O.

use std::collections::HashMap;
use std::time::Duration;

/// Consecutive timed-out probes that make a node dead.
pub const TIMEOUTS_TO_DEAD: u32 = 3;

/// The outcome of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Ok,
    /// The connection was refused or reset: nothing listens there any more.
    Refused,
    /// No answer within the probe timeout.
    TimedOut,
}

#[derive(Debug, Default, Clone)]
struct State {
    timeouts: u32,
    /// The heartbeat timestamp current when the node was found dead.
    dead_at_hb: Option<u64>,
}

/// Which heartbeating nodes are dead.
#[derive(Debug, Default)]
pub struct Liveness {
    nodes: HashMap<String, State>,
}

impl Liveness {
    /// Books a probe of `node`, whose newest heartbeat was written at `hb_ts_ms`; returns true
    /// when this probe found it dead (for logging once).
    pub fn observe(&mut self, node: &str, probe: Probe, hb_ts_ms: u64) -> bool {
        let st = self.nodes.entry(node.to_string()).or_default();
        let was_dead = st.dead_at_hb.is_some();
        match probe {
            Probe::Ok => {
                st.timeouts = 0;
                if st.dead_at_hb.is_some_and(|t| hb_ts_ms > t) {
                    st.dead_at_hb = None;
                }
            }
            Probe::Refused => {
                st.dead_at_hb.get_or_insert(hb_ts_ms);
            }
            Probe::TimedOut => {
                st.timeouts += 1;
                if st.timeouts >= TIMEOUTS_TO_DEAD {
                    st.dead_at_hb.get_or_insert(hb_ts_ms);
                }
            }
        }
        !was_dead && st.dead_at_hb.is_some()
    }

    pub fn is_dead(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|s| s.dead_at_hb.is_some())
    }

    /// Forgets nodes that no longer heartbeat.
    pub fn retain(&mut self, heartbeating: impl Fn(&str) -> bool) {
        self.nodes.retain(|n, _| heartbeating(n));
    }
}

/// Connects to `addr` (the node's client listener) and closes at once.
pub async fn probe(addr: &str, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Probe::Ok,
        Ok(Err(_)) => Probe::Refused,
        Err(_) => Probe::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_is_dead_at_once_and_only_a_newer_heartbeat_revives() {
        let mut l = Liveness::default();
        assert!(!l.observe("a", Probe::Ok, 100));
        assert!(l.observe("a", Probe::Refused, 100), "found dead now");
        assert!(!l.observe("a", Probe::Refused, 100), "reported once");
        assert!(l.is_dead("a"));
        // Its old heartbeat key lingers until its TTL: still dead even if something answers.
        l.observe("a", Probe::Ok, 100);
        assert!(l.is_dead("a"));
        // A restarted process writes a newer heartbeat and answers.
        l.observe("a", Probe::Ok, 2_100);
        assert!(!l.is_dead("a"));
    }

    #[test]
    fn timeouts_must_repeat() {
        let mut l = Liveness::default();
        for _ in 1..TIMEOUTS_TO_DEAD {
            l.observe("b", Probe::TimedOut, 5);
            assert!(!l.is_dead("b"));
        }
        l.observe("b", Probe::Ok, 5);
        for _ in 1..TIMEOUTS_TO_DEAD {
            l.observe("b", Probe::TimedOut, 5);
        }
        assert!(!l.is_dead("b"), "an answer in between resets the count");
        l.observe("b", Probe::TimedOut, 5);
        assert!(l.is_dead("b"));
        l.retain(|n| n != "b");
        assert!(!l.is_dead("b"), "forgotten once its heartbeat is gone");
    }
}
