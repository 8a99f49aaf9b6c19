//! The live route table: nodeId → address and readiness, replaced whole by discovery and read
//! lock-free per request.

use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub addr: SocketAddr,
    pub ready: bool,
}

#[derive(Default)]
pub struct Routes {
    table: ArcSwap<HashMap<String, Route>>,
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
            Some(r) if r.ready => Lookup::Ready(r.addr),
            Some(_) => Lookup::NotReady,
            None => Lookup::Unknown,
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
