//! Resolve answered in the gateway. Proxying every resolve to a balancer costs Pingora's HTTP/1
//! proxy path (about four times the balancer's own work per request); the gateway already knows
//! which nodes are alive and ready (discovery), so with the ring and RING_SECRET it gives the
//! same answer itself (`rtc_serverkit::resolve`, the balancers' code): the owner of the client's
//! slot in the newest ring epoch, only if discovery reports it ready (alive, not draining), with
//! a token signed by RING_SECRET, after the same JWT check.
//!
//! The ring comes from the balancers (`GET /api/v1/ring`, every DISCOVERY_INTERVAL_MS, newer
//! epochs only — the fencing rule of every ring consumer). Before answering, the gateway checks
//! that it agrees with them, with a probe resolve every 30 s: a token they sign must verify with
//! its RING_SECRET, and if they require a JWT it must be configured for JWT too. Until then, or
//! when they disagree (logged), or without a ring, resolve is proxied to a balancer as before.

use crate::Gateway;
use arc_swap::ArcSwap;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rtc_protocol::ring::Ring;
use rtc_protocol::{ticket, Resolved};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The clientId of the consistency probe.
const PROBE_CLIENT: &str = "rtc-gateway-probe";
const PROBE_EVERY: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the gateway needs to answer resolve.
pub struct LocalResolve {
    pub ring: ArcSwap<Ring>,
    /// The balancers agree with our RING_SECRET and JWT settings.
    pub agreed: AtomicBool,
}

impl Default for LocalResolve {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalResolve {
    pub fn new() -> Self {
        LocalResolve {
            ring: ArcSwap::from_pointee(Ring::empty(1)),
            agreed: AtomicBool::new(false),
        }
    }

    /// The ring to answer from, when resolve can be answered here.
    pub fn usable(&self) -> Option<Arc<Ring>> {
        let ring = self.ring.load_full();
        (self.agreed.load(Ordering::Relaxed) && ring.epoch > 0).then_some(ring)
    }

    /// Applies `ring` if its epoch is newer.
    pub fn adopt(&self, ring: Ring) -> bool {
        let cur = self.ring.load();
        if ring.epoch <= cur.epoch {
            return false;
        }
        self.ring.store(Arc::new(ring));
        true
    }
}

/// Answers a resolve from `ring` (what discovery reports ready counts as alive), counting the
/// result: the JSON body, or the refusal. Pingora's path and hyper's (`fastpath.rs`) both use it.
pub fn answer(
    gw: &Gateway,
    ring: &Ring,
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> Result<bytes::Bytes, rtc_protocol::Refusal> {
    let auth = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let answer = rtc_serverkit::resolve::answer(
        query,
        auth,
        gw.jwt.as_ref(),
        ring,
        |n| matches!(gw.routes.lookup(n), crate::route::Lookup::Ready(_)),
        &gw.secret,
        gw.cfg.token_ttl_secs,
    );
    let label = match &answer {
        Ok(_) => "ok",
        Err((label, _)) => label,
    };
    gw.metrics.resolves.with_label_values(&[label]).inc();
    answer
        .map(|r| {
            serde_json::to_vec(&r)
                .expect("resolve answers serialize")
                .into()
        })
        .map_err(|(_, r)| r)
}

/// Whether the balancers' answer to the probe resolve agrees with our settings.
pub fn agrees(gw: &Gateway, status: u16, body: &str) -> Result<(), String> {
    match status {
        200 => {
            let r: Resolved = serde_json::from_str(body).map_err(|e| format!("probe: {e}"))?;
            if gw.jwt.is_some() {
                return Err(
                    "the balancers do not require a JWT but the gateway does (JWT_* differ)".into(),
                );
            }
            let now = rtc_serverkit::telemetry::now_ms() / 1000;
            ticket::verify(&gw.secret, &r.token, PROBE_CLIENT, &r.node_id, now)
                .map(|_| ())
                .map_err(|e| format!("a token the balancers signed does not verify with the gateway's RING_SECRET ({e:?})"))
        }
        401 if gw.jwt.is_some() => Ok(()),
        401 => {
            Err("the balancers require a JWT at resolve but the gateway has no JWT settings".into())
        }
        // No node yet, or a balancer starting: nothing learnt.
        s => Err(format!("probe answered {s}; trying again")),
    }
}

/// Keeps the ring fresh and checks agreement with the balancers.
pub struct Follower {
    pub gw: Arc<Gateway>,
}

#[async_trait::async_trait]
impl BackgroundService for Follower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let gw = &self.gw;
        let addrs = gw.cfg.balancer_addrs.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(gw.cfg.discovery_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next = 0usize;
        let mut last_probe: Option<Instant> = None;
        let mut warned: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let addr = &addrs[next % addrs.len()];
            next += 1;
            match rtc_serverkit::http::call(addr, http::Method::GET, "/api/v1/ring", CALL_TIMEOUT)
                .await
            {
                Ok((s, body)) if s == 200 => match serde_json::from_str::<Ring>(&body) {
                    Ok(ring) => {
                        let epoch = ring.epoch;
                        if gw.local.adopt(ring) {
                            tracing::debug!(epoch, "ring taken from a balancer");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable ring from a balancer"),
                },
                Ok((s, _)) => tracing::debug!(%s, addr, "no ring from this balancer"),
                Err(e) => tracing::debug!(error = %e, addr, "balancer not reachable for the ring"),
            }
            let due = last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY)
                || (!gw.local.agreed.load(Ordering::Relaxed)
                    && last_probe.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)));
            if !due || gw.local.ring.load().epoch == 0 {
                continue;
            }
            let path = format!("/api/v1/resolve?clientId={PROBE_CLIENT}");
            let Ok((status, body)) =
                rtc_serverkit::http::call(addr, http::Method::GET, &path, CALL_TIMEOUT).await
            else {
                continue;
            };
            last_probe = Some(Instant::now());
            match agrees(gw, status.as_u16(), &body) {
                Ok(()) => {
                    if !gw.local.agreed.swap(true, Ordering::Relaxed) {
                        tracing::info!("answering resolve in the gateway (the balancers agree on RING_SECRET and JWT)");
                    }
                }
                Err(why) if status.as_u16() == 200 || status.as_u16() == 401 => {
                    let was = gw.local.agreed.swap(false, Ordering::Relaxed);
                    if was || warned.is_none_or(|t| t.elapsed() >= PROBE_EVERY) {
                        warned = Some(Instant::now());
                        tracing::error!(reason = %why, "resolve is proxied to the balancers: the gateway's settings disagree with theirs");
                    }
                }
                Err(why) => tracing::debug!(reason = %why, "probe inconclusive"),
            }
        }
    }
}
