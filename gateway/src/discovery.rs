//! How the gateway learns socket nodes. A trait with two kinds: Kubernetes (the EndpointSlices of
//! the socket nodes' headless Service, watched through a reflector store) and local (heartbeats
//! in Redis).

use crate::route::{Route, Routes};
use async_trait::async_trait;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[async_trait]
pub trait Discovery: Send + Sync {
    /// The current table: every node the gateway may route to.
    async fn routes(&self) -> anyhow::Result<HashMap<String, Route>>;
}

/// Socket nodes from their Redis heartbeats: address as advertised, ready unless draining or
/// unready. A node whose heartbeat expired disappears.
/// After Redis lost its data, routes that vanished with it are kept for a grace period.
pub struct Local {
    url: String,
    state: tokio::sync::Mutex<LocalState>,
}

struct LocalState {
    conn: Option<redis::aio::ConnectionManager>,
    continuity: rtc_serverkit::continuity::Continuity,
    last: HashMap<String, Route>,
}

impl Local {
    pub fn new(url: &str, redis_loss_grace: Duration) -> Self {
        Local {
            url: url.to_string(),
            state: tokio::sync::Mutex::new(LocalState {
                conn: None,
                continuity: rtc_serverkit::continuity::Continuity::new(redis_loss_grace),
                last: HashMap::new(),
            }),
        }
    }
}

#[async_trait]
impl Discovery for Local {
    async fn routes(&self) -> anyhow::Result<HashMap<String, Route>> {
        let mut st = self.state.lock().await;
        if st.conn.is_none() {
            st.conn = Some(rtc_serverkit::store::connect(&self.url).await?);
        }
        let conn = st.conn.as_mut().expect("connected above");
        let (generation, hbs) = rtc_serverkit::continuity::heartbeats(conn).await?;
        let mut table: HashMap<String, Route> = hbs
            .into_iter()
            .filter_map(|h| {
                // Never route to something that is not an IP:port we were told about.
                let addr = h.addr.parse().ok()?;
                Some((
                    h.node_id,
                    Route {
                        addr,
                        ready: h.ready && !h.draining,
                    },
                ))
            })
            .collect();
        if st.continuity.observe(generation, std::time::Instant::now()) {
            // Redis lost its data: heartbeats vanished without any node dying. Keep the routes
            // they carried until the nodes have written them again.
            for (node, route) in &st.last {
                table.entry(node.clone()).or_insert_with(|| route.clone());
            }
        }
        st.last = table.clone();
        Ok(table)
    }
}

/// Socket pods from the EndpointSlices of their headless Service (label
/// `kubernetes.io/service-name`), watched by a kube-runtime reflector; the table is built from
/// the reflector's store each refresh, so deletions seen across a re-list are never missed. An
/// endpoint is routed by its pod's name (the node's NODE_ID) to its first address and the
/// slice's port; ready only when the endpoint is ready and not terminating. RBAC: list and watch
/// endpointslices in the namespace.
pub struct Kube {
    namespace: String,
    service: String,
    kubeconfig: Option<std::path::PathBuf>,
    store: tokio::sync::OnceCell<kube::runtime::reflector::Store<EndpointSlice>>,
}

impl Kube {
    pub fn new(namespace: &str, service: &str, kubeconfig: Option<std::path::PathBuf>) -> Self {
        Kube {
            namespace: namespace.to_string(),
            service: service.to_string(),
            kubeconfig,
            store: tokio::sync::OnceCell::new(),
        }
    }

    /// Starts the watch (once, on the runtime that runs discovery) and returns its store.
    async fn store(&self) -> anyhow::Result<&kube::runtime::reflector::Store<EndpointSlice>> {
        use futures_util::StreamExt;
        use kube::runtime::{reflector, watcher, WatchStreamExt};
        self.store
            .get_or_try_init(|| async {
                let api: kube::Api<EndpointSlice> = kube::Api::namespaced(
                    rtc_serverkit::kube::client(self.kubeconfig.as_deref()).await?,
                    &self.namespace,
                );
                let cfg = watcher::Config::default()
                    .labels(&format!("kubernetes.io/service-name={}", self.service));
                let (reader, writer) = reflector::store();
                let stream = reflector(writer, watcher(api, cfg)).default_backoff();
                tokio::spawn(async move {
                    // Driving the stream keeps the store current; its items are not used.
                    stream
                        .for_each(|e| async move {
                            if let Err(e) = e {
                                tracing::warn!(error = %e, "EndpointSlice watch error; retrying");
                            }
                        })
                        .await;
                });
                Ok::<_, anyhow::Error>(reader)
            })
            .await
    }
}

/// The routes of a set of EndpointSlices: pod name → (address:port, ready and not terminating).
/// When several slices name the same pod, a ready entry wins. Pure.
pub fn routes_of<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> HashMap<String, Route> {
    let mut out: HashMap<String, Route> = HashMap::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let Some(pod) = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
            else {
                continue;
            };
            let Some(ip) = ep
                .addresses
                .first()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            else {
                continue;
            };
            let cond = ep.conditions.as_ref();
            // Per the API, an unset `ready` means ready; `terminating` unset means not.
            let ready = cond.and_then(|c| c.ready).unwrap_or(true)
                && !cond.and_then(|c| c.terminating).unwrap_or(false);
            let route = Route {
                addr: std::net::SocketAddr::new(ip, port as u16),
                ready,
            };
            match out.get(&pod) {
                Some(r) if r.ready && !route.ready => {}
                _ => {
                    out.insert(pod, route);
                }
            }
        }
    }
    out
}

#[async_trait]
impl Discovery for Kube {
    async fn routes(&self) -> anyhow::Result<HashMap<String, Route>> {
        let store = self.store().await?;
        anyhow::ensure!(
            tokio::time::timeout(Duration::ZERO, store.wait_until_ready())
                .await
                .is_ok(),
            "the EndpointSlice watch has not listed yet"
        );
        Ok(routes_of(store.state().iter().map(|s| s.as_ref())))
    }
}

/// Refreshes `routes` from `discovery` every `interval` until `stop` says true. On errors the
/// last table is kept (existing routes stay usable while Redis is away).
pub async fn run(
    discovery: Arc<dyn Discovery>,
    routes: Arc<Routes>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => if *stop.borrow() { return },
            _ = tick.tick() => {}
        }
        match discovery.routes().await {
            Ok(t) => routes.replace(t),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "discovery failed; keeping the last route table")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "addressType": "IPv4",
            "metadata": {"name": "s"},
            "ports": [{"name": "ws", "port": 8090}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    #[test]
    fn endpoints_become_routes_by_pod_name() {
        let a = slice(serde_json::json!([
            {"addresses": ["192.0.2.1"], "conditions": {"ready": true},
             "targetRef": {"kind": "Pod", "name": "p1"}},
            {"addresses": ["192.0.2.2"], "conditions": {"ready": false, "terminating": true},
             "targetRef": {"kind": "Pod", "name": "p2"}},
            {"addresses": ["192.0.2.3"], "conditions": {"ready": true, "terminating": true},
             "targetRef": {"kind": "Pod", "name": "p3"}},
            {"addresses": ["192.0.2.4"], "targetRef": {"kind": "Pod", "name": "p4"}},
            {"addresses": ["192.0.2.5"], "conditions": {"ready": true}},
        ]));
        // The same pod in a second slice, not ready there: the ready entry wins.
        let b = slice(serde_json::json!([
            {"addresses": ["192.0.2.1"], "conditions": {"ready": false},
             "targetRef": {"kind": "Pod", "name": "p1"}},
        ]));
        let r = routes_of([&a, &b]);
        let route = |n: &str| r.get(n).map(|r| (r.addr.to_string(), r.ready));
        assert_eq!(route("p1"), Some(("192.0.2.1:8090".into(), true)));
        assert_eq!(route("p2"), Some(("192.0.2.2:8090".into(), false)));
        assert_eq!(
            route("p3"),
            Some(("192.0.2.3:8090".into(), false)),
            "terminating"
        );
        assert_eq!(
            route("p4"),
            Some(("192.0.2.4:8090".into(), true)),
            "unset means ready"
        );
        assert_eq!(r.len(), 4, "an endpoint without a pod is not routed: {r:?}");
    }
}
