//! The public listener's request handling: `/api/v1/resolve` and `/api/v1/publish` are proxied
//! round-robin to healthy balancers; `/ws/<nodeId>/connect` is spliced to that node only if
//! discovery knows it and says it is ready; `/` serves the chat page and `/sdk/rtc.js` the
//! JavaScript client; anything else is 404.

use crate::route::{ws_node, Lookup};
use crate::tunnel;
use crate::Gateway;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use rtc_protocol::{ErrorCode, Refusal};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub struct Proxy {
    pub gw: Arc<Gateway>,
}

const PAGE: &str = include_str!("page.html");
/// The JavaScript client (clients/js), served for the page and for browsers at `/sdk/rtc.js`.
const SDK: &str = include_str!("../../clients/js/src/index.js");

/// The files the gateway serves itself: the chat page and the JavaScript client.
pub(crate) fn static_file(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", PAGE.as_bytes())),
        "/sdk/rtc.js" => Some(("text/javascript; charset=utf-8", SDK.as_bytes())),
        _ => None,
    }
}

/// Writes a complete response and ends the exchange.
async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&str, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    for (k, v) in extra {
        resp.insert_header(k.to_string(), v.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

async fn refuse(gw: &Gateway, session: &mut Session, r: Refusal) -> Result<()> {
    gw.metrics
        .refused
        .with_label_values(&[r.code.as_str()])
        .inc();
    let extra: Vec<(&str, String)> = r
        .retry_after()
        .map(|s| ("retry-after", s.to_string()))
        .into_iter()
        .collect();
    respond(
        session,
        r.status(),
        "application/json",
        Bytes::from(r.body()),
        &extra,
    )
    .await
}

/// Releases a slot of the connection cap when the tunnel ends.
struct Active(Arc<Gateway>);

impl Drop for Active {
    fn drop(&mut self) {
        let n = self.0.active.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.metrics.active.set(n as i64);
    }
}

impl Proxy {
    async fn websocket(&self, session: &mut Session, node: &str) -> Result<()> {
        let gw = &self.gw;
        let addr = match gw.routes.lookup(node) {
            Lookup::Ready(a) => a,
            Lookup::NotReady => {
                return refuse(
                    gw,
                    session,
                    Refusal::new(ErrorCode::NotReady, "that node is not ready; resolve again"),
                )
                .await
            }
            Lookup::Unknown => {
                return refuse(
                    gw,
                    session,
                    Refusal::new(ErrorCode::NotFound, "no such node; resolve again"),
                )
                .await
            }
        };
        if !gw.ready.load(Ordering::Relaxed) {
            return refuse(
                gw,
                session,
                Refusal::new(ErrorCode::NotReady, "the gateway is shutting down"),
            )
            .await;
        }
        let req = session.req_header();
        if req.method != http::Method::GET || !session.is_upgrade_req() {
            return refuse(
                gw,
                session,
                Refusal::new(ErrorCode::BadRequest, "not a WebSocket upgrade request"),
            )
            .await;
        }
        if req.headers.contains_key(http::header::CONTENT_LENGTH)
            || req.headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            return refuse(
                gw,
                session,
                Refusal::new(ErrorCode::BadRequest, "an upgrade request has no body"),
            )
            .await;
        }
        let n = gw.active.fetch_add(1, Ordering::Relaxed) + 1;
        let active = Active(gw.clone());
        if n > gw.cfg.max_connections {
            return refuse(
                gw,
                session,
                Refusal::new(
                    ErrorCode::TooManyConnections,
                    "the gateway is at its connection limit",
                ),
            )
            .await;
        }
        gw.metrics.active.set(n as i64);
        let pq = req
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let (up, answer) = match tunnel::handshake(addr, &pq, &req.headers, client_ip).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(node, error = %e, "upstream handshake failed");
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    gw.routes.mark_down(node, addr);
                }
                gw.metrics
                    .upgrades
                    .with_label_values(&["upstream_error"])
                    .inc();
                return refuse(
                    gw,
                    session,
                    Refusal::new(
                        ErrorCode::UpstreamUnavailable,
                        "the node did not answer; resolve again",
                    ),
                )
                .await;
            }
        };
        if answer.status != 101 {
            gw.metrics.upgrades.with_label_values(&["refused"]).inc();
            let mut resp = ResponseHeader::build(answer.status, Some(4))?;
            for (k, v) in &answer.headers {
                if matches!(
                    k.as_str(),
                    "content-type" | "retry-after" | "sec-websocket-version"
                ) {
                    resp.insert_header(k.clone(), v.as_slice())?;
                }
            }
            resp.insert_header("content-length", answer.rest.len().to_string())?;
            session.write_response_header(Box::new(resp), false).await?;
            return session.write_response_body(Some(answer.rest), true).await;
        }
        let mut resp = ResponseHeader::build(101, Some(6))?;
        for (k, v) in &answer.headers {
            if matches!(
                k.as_str(),
                "upgrade"
                    | "connection"
                    | "sec-websocket-accept"
                    | "sec-websocket-protocol"
                    | "sec-websocket-extensions"
            ) {
                resp.insert_header(k.clone(), v.as_slice())?;
            }
        }
        session.write_response_header(Box::new(resp), false).await?;
        gw.metrics.upgrades.with_label_values(&["ok"]).inc();
        // Bytes the client sent right behind its handshake, already read by Pingora: one poll
        // returns them (or finds nothing and reads nothing).
        let early = match tokio::time::timeout(Duration::ZERO, session.read_request_body()).await {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) | Ok(Err(_)) => return Ok(()),
            Err(_) => Bytes::new(),
        };
        // Take the raw client stream out of Pingora's session: its HTTP body reader would hold a
        // 64 KiB buffer per WebSocket for the connection's whole life. Pingora finishes a dummy.
        let dummy =
            pingora::protocols::http::ServerSession::new_http1(Box::new(tokio::io::duplex(1).0));
        let client = match *std::mem::replace(&mut session.downstream_session, Box::new(dummy)) {
            pingora::protocols::http::ServerSession::H1(h1) => h1.into_inner(),
            _ => return Ok(()),
        };
        // The splice runs as its own task, so Pingora's request state (its session, buffers and
        // this future) is freed now instead of living as long as the WebSocket. A plain-TCP
        // client (`accept.rs`) goes on as its bare socket: no dynamic dispatch and no write
        // buffer per message; a TLS one as Pingora's stream.
        let gw = gw.clone();
        if client.as_any().is::<crate::accept::ClientConn>() {
            let conn = client
                .into_any()
                .downcast::<crate::accept::ClientConn>()
                .expect("checked just above");
            gw.clone().tunnels.spawn(async move {
                if let Ok(tcp) = conn.into_tcp().await {
                    tunnel::splice(&gw, tcp, up, answer.rest, early).await;
                }
                drop(active);
            });
        } else {
            gw.clone().tunnels.spawn(async move {
                tunnel::splice(&gw, client, up, answer.rest, early).await;
                drop(active);
            });
        }
        Ok(())
    }
}

impl Proxy {
    /// After a resolve answered here: serves the rest of the keep-alive connection with hyper
    /// (`fastpath.rs`), if Pingora would have kept it (keep-alive, nothing read beyond the
    /// request). Pingora finishes a dummy session.
    async fn take_over(&self, session: &mut Session) {
        let dummy =
            pingora::protocols::http::ServerSession::new_http1(Box::new(tokio::io::duplex(1).0));
        let taken = std::mem::replace(&mut session.downstream_session, Box::new(dummy));
        let pingora::protocols::http::ServerSession::H1(h1) = *taken else {
            return;
        };
        if let Ok(Some(reusable)) = h1.reuse().await {
            let (stream, prefix) = reusable.into_parts();
            if prefix.is_none_or(|p| p.is_empty()) {
                crate::fastpath::serve(self.gw.clone(), stream).await;
            }
        }
    }

    /// Answers a resolve from the ring the gateway follows (`resolver.rs`).
    async fn resolve_here(
        &self,
        session: &mut Session,
        ring: &rtc_protocol::ring::Ring,
    ) -> Result<()> {
        let req = session.req_header();
        match crate::resolver::answer(&self.gw, ring, req.uri.query(), &req.headers) {
            Ok(body) => respond(session, 200, "application/json", body, &[]).await,
            Err(r) => refuse(&self.gw, session, r).await,
        }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        let path = session.req_header().uri.path().to_string();
        if path == "/api/v1/resolve" {
            self.gw
                .metrics
                .requests
                .with_label_values(&["resolve"])
                .inc();
            if let Some(ring) = self.gw.local.usable() {
                self.resolve_here(session, &ring).await?;
                self.take_over(session).await;
                return Ok(true);
            }
            self.gw
                .metrics
                .resolves
                .with_label_values(&["proxied"])
                .inc();
            return Ok(false);
        }
        if path == "/api/v1/publish" {
            self.gw
                .metrics
                .requests
                .with_label_values(&["publish"])
                .inc();
            return Ok(false);
        }
        if let Some(node) = ws_node(&path) {
            self.gw.metrics.requests.with_label_values(&["ws"]).inc();
            let node = node.to_string();
            self.websocket(session, &node).await?;
            return Ok(true);
        }
        if let Some((content_type, body)) = static_file(&path) {
            self.gw.metrics.requests.with_label_values(&["page"]).inc();
            respond(session, 200, content_type, Bytes::from_static(body), &[]).await?;
            return Ok(true);
        }
        self.gw.metrics.requests.with_label_values(&["other"]).inc();
        refuse(
            &self.gw,
            session,
            Refusal::new(ErrorCode::NotFound, "no such path"),
        )
        .await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let backend = self
            .gw
            .balancers
            .select(b"", 64)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no healthy balancer"))?;
        let mut peer = HttpPeer::new(backend, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(1));
        peer.options.read_timeout = Some(Duration::from_secs(10));
        peer.options.write_timeout = Some(Duration::from_secs(10));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Another balancer may be up: let Pingora pick again.
        e.set_retry(true);
        e
    }
}
