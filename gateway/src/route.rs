//! The live route table: nodeId → address and readiness, replaced whole by discovery and read
//! lock-free per request.

use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub addr: SocketAddr,
    pub ready: bool,
}

/// How long a node whose address refused a connection is treated as gone, unless discovery
/// gives it another address: long enough for the balancer to move its slots (about a second)
/// and for its heartbeat to expire.
pub const DOWN_FOR: Duration = Duration::from_secs(15);

#[derive(Default)]
pub struct Routes {
    table: ArcSwap<HashMap<String, Route>>,
    /// Nodes whose address refused a connection: node → (that address, when).
    down: Mutex<HashMap<String, (SocketAddr, Instant)>>,
}

/// What the gateway may do with a request for a node.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Ready(SocketAddr),
    NotReady,
    Unknown,
}

impl Routes {
    pub fn replace(&self, table: HashMap<String, Route>) {
        self.table.store(Arc::new(table));
    }

    pub fn lookup(&self, node: &str) -> Lookup {
        match self.table.load().get(node) {
            Some(r) if self.is_down(node, r.addr) => Lookup::Unknown,
            Some(r) if r.ready => Lookup::Ready(r.addr),
            Some(_) => Lookup::NotReady,
            None => Lookup::Unknown,
        }
    }

    /// `node` refused a connection at `addr`: nothing listens there (the process died), so it
    /// is answered as gone (404: resolve again) instead of 502s until its heartbeat expires.
    pub fn mark_down(&self, node: &str, addr: SocketAddr) {
        self.down
            .lock()
            .expect("down lock is never poisoned")
            .insert(node.to_string(), (addr, Instant::now()));
    }

    fn is_down(&self, node: &str, addr: SocketAddr) -> bool {
        let mut down = self.down.lock().expect("down lock is never poisoned");
        match down.get(node) {
            None => false,
            Some(&(a, at)) if a == addr && at.elapsed() < DOWN_FOR => true,
            Some(_) => {
                // Expired, or the node is back at another address.
                down.remove(node);
                false
            }
        }
    }

    pub fn snapshot(&self) -> Arc<HashMap<String, Route>> {
        self.table.load_full()
    }
}

/// The nodeId of `/ws/<nodeId>/connect`, if the path has that shape.
pub fn ws_node(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/ws/")?.strip_suffix("/connect")?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusing_address_is_gone_until_the_node_moves() {
        let routes = Routes::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        routes.replace(
            [(
                "n".to_string(),
                Route {
                    addr: a,
                    ready: true,
                },
            )]
            .into(),
        );
        assert_eq!(routes.lookup("n"), Lookup::Ready(a));
        routes.mark_down("n", a);
        assert_eq!(routes.lookup("n"), Lookup::Unknown);
        routes.replace(
            [(
                "n".to_string(),
                Route {
                    addr: b,
                    ready: true,
                },
            )]
            .into(),
        );
        assert_eq!(
            routes.lookup("n"),
            Lookup::Ready(b),
            "back at another address"
        );
    }

    #[test]
    fn parses_only_the_connect_path() {
        assert_eq!(ws_node("/ws/socket-1/connect"), Some("socket-1"));
        for p in [
            "/ws//connect",
            "/ws/a/b/connect",
            "/ws/a",
            "/x/a/connect",
            "/ws/a/connect/",
        ] {
            assert_eq!(ws_node(p), None, "{p}");
        }
    }

    #[test]
    fn lookup_distinguishes_unknown_and_not_ready() {
        let r = Routes::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        r.replace(HashMap::from([
            (
                "up".into(),
                Route {
                    addr: a,
                    ready: true,
                },
            ),
            (
                "down".into(),
                Route {
                    addr: a,
                    ready: false,
                },
            ),
        ]));
        assert_eq!(r.lookup("up"), Lookup::Ready(a));
        assert_eq!(r.lookup("down"), Lookup::NotReady);
        assert_eq!(r.lookup("nope"), Lookup::Unknown);
    }
}
