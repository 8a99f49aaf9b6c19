//! The public listener's request handling: `/api/v1/resolve` and `/api/v1/publish` are proxied
//! round-robin to healthy balancers; `/ws/<nodeId>/connect` is spliced to that node only if
//! discovery knows it and says it is ready; `/` serves the chat page and `/sdk/rtc.js` the
//! JavaScript client; anything else is 404.

use crate::route::{ws_node, Lookup};
use crate::tunnel::{self, FrameTracker};
use crate::Gateway;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use rtc_protocol::{ErrorCode, Refusal};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub struct Proxy {
    pub gw: Arc<Gateway>,
}

const PAGE: &str = include_str!("page.html");
/// The JavaScript client (clients/js), served for the page and for browsers at `/sdk/rtc.js`.
const SDK: &str = include_str!("../../clients/js/src/index.js");

/// Writes a complete response and ends the exchange.
/// The files the gateway serves itself: the chat page and the JavaScript client.
pub(crate) fn static_file(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", PAGE.as_bytes())),
        "/sdk/rtc.js" => Some(("text/javascript; charset=utf-8", SDK.as_bytes())),
        _ => None,
    }
}

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
        // this future) is freed now instead of living as long as the WebSocket.
        let gw = gw.clone();
        gw.clone().tunnels.spawn(async move {
            splice(&gw, client, up, answer.rest, early).await;
            drop(active);
        });
        Ok(())
    }
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

/// Bytes read per read call, into a buffer on the stack of the poll that reads: a WebSocket
/// holds no buffer between messages.
const READ_BUF: usize = 4096;

/// Copies bytes both ways until either side closes or the gateway goes away. Going away, the
/// client gets a 1001 close frame at the next frame boundary; a client silent for the idle
/// timeout gets 1001 "idle timeout"; if the node's connection ends without a close frame, the
/// client gets 1011 instead of a bare reset.
async fn splice(
    gw: &Gateway,
    mut client: pingora::protocols::Stream,
    mut up: TcpStream,
    first: Bytes,
    early: Bytes,
) {
    // Frame boundaries both ways: node→client to stop at a boundary and see the node's close,
    // client→node to see the client's close.
    let mut tracker = FrameTracker::default();
    tracker.feed(&first);
    let mut from_client = FrameTracker::default();
    from_client.feed(&early);
    let started = async {
        if !first.is_empty() {
            client.write_all(&first).await?;
        }
        client.flush().await?;
        if !early.is_empty() {
            up.write_all(&early).await?;
        }
        std::io::Result::Ok(())
    };
    if started.await.is_err() {
        return;
    }
    let end = copy(gw, &mut client, &mut up, &mut tracker, &mut from_client).await;
    let (code, reason, label) = match end {
        End::GoingAway => (1001, "gateway shutting down", "closed_going_away"),
        End::ClientIdle => (1001, "idle timeout", "closed_idle"),
        // The node ended its connection after a close frame either way: that is how a closing
        // handshake ends (a node may also drop a client whose close frame was malformed), so
        // nothing is added. Without any close frame the node's connection broke: 1011.
        End::NodeGone if tracker.close_seen() || from_client.close_seen() => (0, "", "closed"),
        End::NodeGone => (1011, "node connection lost", "closed_node_lost"),
        End::ClientGone => return,
    };
    if code != 0 && tracker.at_boundary() && !tracker.close_seen() {
        let _ = client.write_all(&tunnel::close_frame(code, reason)).await;
        let _ = client.flush().await;
    }
    gw.metrics.upgrades.with_label_values(&[label]).inc();
    let _ = up.shutdown().await;
    if code == 0 || (tracker.close_seen() && from_client.close_seen()) {
        // The closing handshake is over: the server's side (us, to the client) closes TCP first.
        let _ = client.shutdown().await;
    }
    // Wait briefly for the client's close, so ours is not lost to a reset.
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// What one poll of both directions did.
enum Step {
    /// Something moved (or the gateway started going away): look again.
    Again,
    End(End),
    /// Bytes read but not (wholly) written because the other side could not take them now:
    /// write `rest` (and flush) before reading on; `stop` when it ends at the going-away cut.
    Write {
        to_client: bool,
        rest: Bytes,
        stop: bool,
    },
}

/// Writes `data` without waiting: `None` when all of it went (and, towards the client, was
/// flushed), else what is left, owned, to be written by awaiting.
fn write_now<W: AsyncWrite + Unpin>(
    w: &mut W,
    cx: &mut Context<'_>,
    data: &[u8],
    flush: bool,
) -> std::io::Result<Option<Bytes>> {
    let n = match Pin::new(&mut *w).poll_write(cx, data) {
        Poll::Ready(r) => r?,
        Poll::Pending => 0,
    };
    if n < data.len() {
        return Ok(Some(Bytes::copy_from_slice(&data[n..])));
    }
    if flush {
        if let Poll::Ready(r) = Pin::new(&mut *w).poll_flush(cx) {
            r?;
        } else {
            // The bytes sit in the writer's buffer; an empty write then a flush finishes them.
            return Ok(Some(Bytes::new()));
        }
    }
    Ok(None)
}

/// The copy loop. Each poll reads what either side has into a stack buffer and writes it on at
/// once, so a message costs one read and one write system call and no allocation; only when the
/// other side cannot take the bytes now are they copied out and awaited. The idle deadline
/// moves with a timestamp, not a timer reset per message.
async fn copy(
    gw: &Gateway,
    client: &mut pingora::protocols::Stream,
    up: &mut TcpStream,
    tracker: &mut FrameTracker,
    from_client: &mut FrameTracker,
) -> End {
    let going_away = gw.going_away.clone().cancelled_owned();
    tokio::pin!(going_away);
    let idle = Duration::from_secs(gw.cfg.ws_idle_timeout_secs);
    let mut last_heard = tokio::time::Instant::now();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    // Set once `going_away` fires (asking the token each round would take its lock).
    let mut leaving = false;
    loop {
        if leaving && tracker.at_boundary() {
            return End::GoingAway;
        }
        let step = std::future::poll_fn(|cx| {
            if !leaving && going_away.as_mut().poll(cx).is_ready() {
                leaving = true;
                return Poll::Ready(Step::Again);
            }
            while idle_timer.as_mut().poll(cx).is_ready() {
                let due = last_heard + idle;
                if tokio::time::Instant::now() >= due {
                    return Poll::Ready(Step::End(End::ClientIdle));
                }
                idle_timer.as_mut().reset(due);
            }
            let mut moved = false;
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); READ_BUF];
            let mut rb = ReadBuf::uninit(&mut buf);
            match Pin::new(&mut *client).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    let data = rb.filled();
                    last_heard = tokio::time::Instant::now();
                    from_client.feed(data);
                    match write_now(up, cx, data, false) {
                        Ok(None) => moved = true,
                        Ok(Some(rest)) => {
                            return Poll::Ready(Step::Write {
                                to_client: false,
                                rest,
                                stop: false,
                            })
                        }
                        Err(_) => return Poll::Ready(Step::End(End::NodeGone)),
                    }
                }
                Poll::Ready(_) => return Poll::Ready(Step::End(End::ClientGone)),
                Poll::Pending => {}
            }
            let mut rb = ReadBuf::uninit(&mut buf);
            match Pin::new(&mut *up).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    let mut data = rb.filled();
                    let mut stop = false;
                    if leaving {
                        if let Some(end) = tracker.boundary_in(data) {
                            data = &data[..end];
                            stop = true;
                        }
                    } else {
                        tracker.feed(data);
                    }
                    match write_now(client, cx, data, true) {
                        Ok(None) if stop => return Poll::Ready(Step::End(End::GoingAway)),
                        Ok(None) => moved = true,
                        Ok(Some(rest)) => {
                            return Poll::Ready(Step::Write {
                                to_client: true,
                                rest,
                                stop,
                            })
                        }
                        Err(_) => return Poll::Ready(Step::End(End::ClientGone)),
                    }
                }
                Poll::Ready(_) => return Poll::Ready(Step::End(End::NodeGone)),
                Poll::Pending => {}
            }
            if moved {
                Poll::Ready(Step::Again)
            } else {
                Poll::Pending
            }
        })
        .await;
        match step {
            Step::Again => {}
            Step::End(end) => return end,
            Step::Write {
                to_client: false,
                rest,
                ..
            } => {
                if up.write_all(&rest).await.is_err() {
                    return End::NodeGone;
                }
            }
            Step::Write {
                to_client: true,
                rest,
                stop,
            } => {
                if client.write_all(&rest).await.is_err() || client.flush().await.is_err() {
                    return End::ClientGone;
                }
                if stop {
                    return End::GoingAway;
                }
            }
        }
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
