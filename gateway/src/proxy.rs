//! The public listener's request handling: `/api/v1/resolve` is proxied round-robin to healthy
//! balancers; `/ws/<nodeId>/connect` is spliced to that node only if discovery knows it and says
//! it is ready; `/` serves the demo page; anything else is 404.

use crate::route::{ws_node, Lookup};
use crate::tunnel::{self, FrameTracker};
use crate::Gateway;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use rtc_common::protocol::{ErrorCode, HttpError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub struct Proxy {
    pub gw: Arc<Gateway>,
}

const PAGE: &str = include_str!("page.html");

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

async fn refuse(
    gw: &Gateway,
    session: &mut Session,
    status: u16,
    code: ErrorCode,
    msg: &str,
    retry_after: Option<u32>,
) -> Result<()> {
    gw.metrics.refused.with_label_values(&[code.as_str()]).inc();
    let extra: Vec<(&str, String)> = retry_after
        .map(|s| ("retry-after", s.to_string()))
        .into_iter()
        .collect();
    respond(
        session,
        status,
        "application/json",
        Bytes::from(HttpError::new(code, msg).to_json()),
        &extra,
    )
    .await
}

/// Releases a slot of the connection cap when the tunnel ends.
struct Active<'a>(&'a Gateway);

impl Drop for Active<'_> {
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
                    503,
                    ErrorCode::NotReady,
                    "that node is not ready; resolve again",
                    Some(1),
                )
                .await
            }
            Lookup::Unknown => {
                return refuse(
                    gw,
                    session,
                    404,
                    ErrorCode::NotFound,
                    "no such node; resolve again",
                    None,
                )
                .await
            }
        };
        if !gw.ready.load(Ordering::Relaxed) {
            return refuse(
                gw,
                session,
                503,
                ErrorCode::NotReady,
                "the gateway is shutting down",
                Some(1),
            )
            .await;
        }
        let req = session.req_header();
        if req.method != http::Method::GET || !session.is_upgrade_req() {
            return refuse(
                gw,
                session,
                400,
                ErrorCode::BadRequest,
                "not a WebSocket upgrade request",
                None,
            )
            .await;
        }
        if req.headers.contains_key(http::header::CONTENT_LENGTH)
            || req.headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            return refuse(
                gw,
                session,
                400,
                ErrorCode::BadRequest,
                "an upgrade request has no body",
                None,
            )
            .await;
        }
        let n = gw.active.fetch_add(1, Ordering::Relaxed) + 1;
        let _active = Active(gw);
        if n > gw.cfg.max_connections {
            return refuse(
                gw,
                session,
                503,
                ErrorCode::TooManyConnections,
                "the gateway is at its connection limit",
                Some(5),
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
        let (mut up, answer) = match tunnel::handshake(addr, &pq, &req.headers, client_ip).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(node, error = %e, "upstream handshake failed");
                gw.metrics
                    .upgrades
                    .with_label_values(&["upstream_error"])
                    .inc();
                return refuse(
                    gw,
                    session,
                    502,
                    ErrorCode::UpstreamUnavailable,
                    "the node did not answer; resolve again",
                    Some(1),
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
        session.set_read_timeout(Some(Duration::from_secs(gw.cfg.ws_idle_timeout_secs)));
        session.write_response_header(Box::new(resp), false).await?;
        gw.metrics.upgrades.with_label_values(&["ok"]).inc();
        let mut tracker = FrameTracker::default();
        if !answer.rest.is_empty() {
            tracker.feed(&answer.rest);
            session
                .write_response_body(Some(answer.rest), false)
                .await?;
        }
        pump(gw, session, &mut up, &mut tracker).await;
        Ok(())
    }
}

/// Copies bytes both ways until either side closes or the gateway goes away. Going away, the
/// client gets a 1001 close frame at the next frame boundary; if the node's connection ends
/// without a close frame, the client gets 1011 instead of a bare reset.
async fn pump(
    gw: &Gateway,
    session: &mut Session,
    up: &mut tokio::net::TcpStream,
    tracker: &mut FrameTracker,
) {
    let (code, reason, label) = match copy(gw, session, up, tracker).await {
        End::GoingAway => (1001, "gateway shutting down", "closed_going_away"),
        End::ClientIdle => (1001, "idle timeout", "closed_idle"),
        End::NodeGone => (1011, "node connection lost", "closed_node_lost"),
        End::ClientGone => return,
    };
    if !tracker.at_boundary() || tracker.close_seen() {
        return;
    }
    let _ = session
        .write_response_body(Some(tunnel::close_frame(code, reason)), false)
        .await;
    gw.metrics.upgrades.with_label_values(&[label]).inc();
    let _ = up.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = session.read_request_body().await {}
    })
    .await;
}

/// Why the copy loop stopped.
enum End {
    /// The gateway is going away (stopped at a frame boundary).
    GoingAway,
    /// The client closed or failed.
    ClientGone,
    /// The client sent nothing for WS_IDLE_TIMEOUT_SECS.
    ClientIdle,
    /// The node's side closed or failed.
    NodeGone,
}

async fn copy(
    gw: &Gateway,
    session: &mut Session,
    up: &mut tokio::net::TcpStream,
    tracker: &mut FrameTracker,
) -> End {
    let mut going_away = gw.going_away.subscribe();
    loop {
        let leaving = *going_away.borrow();
        if leaving && tracker.at_boundary() {
            return End::GoingAway;
        }
        tokio::select! {
            r = session.read_request_body() => match r {
                Ok(Some(b)) => {
                    if up.write_all(&b).await.is_err() {
                        return End::NodeGone;
                    }
                }
                Ok(None) => return End::ClientGone,
                Err(e) if e.etype() == &pingora::ErrorType::ReadTimedout => return End::ClientIdle,
                Err(_) => return End::ClientGone,
            },
            r = up.readable() => {
                if r.is_err() {
                    return End::NodeGone;
                }
                // Allocate only when data is there, so an idle tunnel holds no read buffer.
                let mut buf = bytes::BytesMut::zeroed(16 * 1024);
                match up.try_read(&mut buf) {
                    Ok(0) => return End::NodeGone,
                    Ok(n) => {
                        buf.truncate(n);
                        let mut data = buf.freeze();
                        if leaving {
                            if let Some(end) = tracker.boundary_in(&data) {
                                data.truncate(end);
                                let _ = session.write_response_body(Some(data), false).await;
                                return End::GoingAway;
                            }
                        } else {
                            tracker.feed(&data);
                        }
                        if session.write_response_body(Some(data), false).await.is_err() {
                            return End::ClientGone;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return End::NodeGone,
                }
            }
            _ = going_away.changed() => {}
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
            return Ok(false);
        }
        if let Some(node) = ws_node(&path) {
            self.gw.metrics.requests.with_label_values(&["ws"]).inc();
            let node = node.to_string();
            self.websocket(session, &node).await?;
            return Ok(true);
        }
        if path == "/" || path == "/index.html" {
            self.gw.metrics.requests.with_label_values(&["page"]).inc();
            respond(
                session,
                200,
                "text/html; charset=utf-8",
                Bytes::from_static(PAGE.as_bytes()),
                &[],
            )
            .await?;
            return Ok(true);
        }
        self.gw.metrics.requests.with_label_values(&["other"]).inc();
        refuse(
            &self.gw,
            session,
            404,
            ErrorCode::NotFound,
            "no such path",
            None,
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
