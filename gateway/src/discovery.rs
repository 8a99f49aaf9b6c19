//! How the gateway learns socket nodes. A trait, so Kubernetes discovery (pods or EndpointSlices,
//! watched) can stand beside the local one (heartbeats in Redis).

use crate::route::{Route, Routes};
use async_trait::async_trait;
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
        let generation = rtc_serverkit::continuity::generation(conn).await?;
        let hbs = rtc_serverkit::store::heartbeats(conn).await?;
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
