//! `GET /ws/{nodeId}/connect`: checks everything before the upgrade (node, clientId, token,
//! slot, limits), then runs the connection: frames in, queued frames out, pings, close codes.

use crate::conn::{CloseReason, Conn};
use crate::node::{Node, Refusal};
use crate::relay;
use crate::session::SessionEvent;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use rtc_common::protocol::{close, validate_id, ClientFrame, Envelope, ErrorCode, ServerFrame};
use rtc_common::{slot::slot_of, ticket};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{
    frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig,
};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Rooms one connection may be in at once.
pub const MAX_ROOMS_PER_CONN: usize = 100;
/// How long a batch of writes to one client may take before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

struct Params {
    client_id: String,
    token: String,
    resume: Option<i64>,
}

fn parse_query(q: Option<&str>) -> Result<Params, &'static str> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(q.unwrap_or("")).map_err(|_| "the query string is not valid")?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let client_id = get("clientId").ok_or("clientId is required")?;
    validate_id(&client_id).map_err(|e| e.client_id_reason())?;
    let token = get("token").unwrap_or_default();
    let resume = match get("resumeOffset").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<i64>()
                .ok()
                .filter(|&r| r >= -1)
                .ok_or("resumeOffset must be an integer >= -1")?,
        ),
    };
    Ok(Params {
        client_id,
        token,
        resume,
    })
}

fn refuse(node: &Node, r: Refusal) -> Response {
    node.metrics
        .refused
        .with_label_values(&[r.code.as_str()])
        .inc();
    let status = http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::BAD_REQUEST);
    rtc_common::http::refusal(status, r.code, r.message, r.retry_after)
}

fn header_has(req: &axum::extract::Request, name: http::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
}

/// Releases the connection count when the connection ends, whichever way.
struct CountGuard(Arc<Node>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        let n = self.0.connections.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.metrics.active_connections.set(n as i64);
    }
}

pub async fn connect(
    State(node): State<Arc<Node>>,
    Path(node_id): Path<String>,
    RawQuery(query): RawQuery,
    mut req: axum::extract::Request,
) -> Response {
    if node_id != node.id {
        return refuse(
            &node,
            Refusal::new(
                404,
                ErrorCode::WrongNode,
                "no such node here; resolve again",
                None,
            ),
        );
    }
    let p = match parse_query(query.as_deref()) {
        Ok(p) => p,
        Err(msg) => return refuse(&node, Refusal::new(400, ErrorCode::BadRequest, msg, None)),
    };
    let now = rtc_common::telemetry::now_ms() / 1000;
    let t = match ticket::verify(&node.secret, &p.token, &p.client_id, &node.id, now) {
        Ok(t) => t,
        Err(ticket::TicketError::Expired) => {
            return refuse(
                &node,
                Refusal::new(
                    401,
                    ErrorCode::TokenExpired,
                    "the token expired; resolve again",
                    None,
                ),
            )
        }
        Err(_) => {
            return refuse(
                &node,
                Refusal::new(
                    401,
                    ErrorCode::InvalidToken,
                    "the token is not valid for this client and node",
                    None,
                ),
            )
        }
    };
    let slot = slot_of(&p.client_id, node.slots);
    if let Err(r) = node.admit(slot, t.epoch) {
        return refuse(&node, r);
    }
    let key = match req.headers().get("sec-websocket-key") {
        Some(k)
            if header_has(&req, http::header::UPGRADE, "websocket")
                && header_has(&req, http::header::CONNECTION, "upgrade") =>
        {
            k.clone()
        }
        _ => {
            return refuse(
                &node,
                Refusal::new(
                    400,
                    ErrorCode::BadRequest,
                    "not a WebSocket upgrade request",
                    None,
                ),
            )
        }
    };
    if req
        .headers()
        .get("sec-websocket-version")
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = refuse(
            &node,
            Refusal::new(
                426,
                ErrorCode::BadRequest,
                "only WebSocket version 13 is supported",
                None,
            ),
        );
        r.headers_mut().insert(
            "sec-websocket-version",
            http::HeaderValue::from_static("13"),
        );
        return r;
    }
    // Count now so the cap holds across concurrent handshakes.
    let n = node.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let guard = CountGuard(node.clone());
    if n > node.cfg.max_connections {
        drop(guard);
        return refuse(
            &node,
            Refusal::new(
                503,
                ErrorCode::TooManyConnections,
                "this node is at its connection limit",
                Some(5),
            ),
        );
    }
    node.metrics.active_connections.set(n as i64);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let task_node = node.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let cfg = WebSocketConfig::default()
            .read_buffer_size(task_node.cfg.ws_read_buffer_bytes)
            .write_buffer_size(0)
            .max_write_buffer_size(
                task_node.cfg.send_queue_bytes + task_node.cfg.max_message_bytes * 2,
            )
            .max_message_size(Some(task_node.cfg.max_message_bytes))
            .max_frame_size(Some(task_node.cfg.max_message_bytes));
        // Take the raw TCP stream back from hyper: its 8 KiB connection buffer is freed and
        // tungstenite's small buffer is the only one left per connection.
        let ws = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let tcp = parts.io.into_inner();
                if parts.read_buf.is_empty() {
                    WebSocketStream::from_raw_socket(tcp, Role::Server, Some(cfg)).await
                } else {
                    WebSocketStream::from_partially_read(
                        tcp,
                        parts.read_buf.to_vec(),
                        Role::Server,
                        Some(cfg),
                    )
                    .await
                }
            }
            Err(_) => {
                tracing::error!("upgraded connection is not a TCP stream");
                return;
            }
        };
        run(task_node, ws, p.client_id, slot, p.resume, guard).await;
    });
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(axum::body::Body::empty())
        .expect("static response parts are valid")
}

/// Token bucket for a client's frames.
struct Bucket {
    tokens: f64,
    at: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn run(
    node: Arc<Node>,
    mut ws: WebSocketStream<TcpStream>,
    client_id: String,
    slot: u32,
    resume: Option<i64>,
    _guard: CountGuard,
) {
    let conn = Arc::new(Conn::new(&client_id, node.cfg.send_queue_bytes));
    drop(client_id);
    if let Err(reason) = node.register(&conn, slot, resume) {
        let _ = Box::pin(close_with(&mut ws, reason)).await;
        return;
    }
    let _ = node.sessions.try_send(SessionEvent::Connected {
        client_id: conn.client_id.clone(),
        at_ms: rtc_common::telemetry::now_ms(),
    });
    let mut rooms: HashSet<Box<str>> = HashSet::new();
    let mut bucket = Bucket {
        tokens: f64::from(node.cfg.rate_limit_burst),
        at: Instant::now(),
        rate: f64::from(node.cfg.rate_limit_per_sec),
        burst: f64::from(node.cfg.rate_limit_burst),
    };
    let mut ping = tokio::time::interval(Duration::from_secs(node.cfg.ping_interval_secs.max(1)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_seen = Instant::now();
    let mut out = Vec::new();
    let ended: Option<CloseReason> = loop {
        tokio::select! {
            biased;
            _ = node.cancel.cancelled() => break Some(CloseReason { code: close::GOING_AWAY, reason: "node shutting down" }),
            _ = conn.notified() => {
                let closing = conn.take(&mut out);
                let write = async {
                    for f in out.drain(..) {
                        ws.feed(Message::Text(f)).await?;
                    }
                    ws.flush().await
                };
                match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                    Ok(Ok(())) => {}
                    _ => break None,
                }
                if out.capacity() > 64 {
                    out = Vec::new();
                }
                if let Some(c) = closing {
                    node.metrics.closed.with_label_values(&[&c.code.to_string()]).inc();
                    break Some(c);
                }
            }
            m = ws.next() => {
                last_seen = Instant::now();
                match m {
                    Some(Ok(Message::Text(t))) => {
                        if !bucket.take() {
                            let id = ClientFrame::parse(&t).ok().and_then(|f| f.id());
                            node.metrics.refused.with_label_values(&["rate_limited"]).inc();
                            conn.push_unbounded(Utf8Bytes::from(ServerFrame::error(id, ErrorCode::RateLimited, "too many frames; slow down")));
                            continue;
                        }
                        handle_frame(&node, &conn, &t, &mut rooms);
                    }
                    Some(Ok(Message::Binary(_))) => break Some(CloseReason { code: close::UNSUPPORTED, reason: "binary frames are not supported" }),
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(_)) => {}
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                        node.metrics.refused.with_label_values(&["message_too_big"]).inc();
                        break Some(CloseReason { code: close::TOO_BIG, reason: "message too big" });
                    }
                    Some(Err(_)) => break None,
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > Duration::from_secs(node.cfg.ping_interval_secs * 3) {
                    // Dead, or alive and not reading: a close frame tells the second kind why.
                    break Some(CloseReason { code: close::GOING_AWAY, reason: "ping timeout" });
                }
                if tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    break None;
                }
            }
        }
    };
    let rooms: Vec<Box<str>> = rooms.into_iter().collect();
    node.unregister(&conn, slot, &rooms);
    let _ = node.sessions.try_send(SessionEvent::Disconnected {
        client_id: conn.client_id.clone(),
    });
    if let Some(reason) = ended {
        let _ = Box::pin(close_with(&mut ws, reason)).await;
    }
}

/// Sends a close frame, then half-closes and discards whatever the client still sends until it
/// closes too. Dropping a socket with unread bytes (say, the rest of an oversized message) makes
/// the kernel send a reset, which can overtake the close frame.
async fn close_with(
    ws: &mut WebSocketStream<TcpStream>,
    reason: CloseReason,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let frame = CloseFrame {
        code: CloseCode::from(reason.code),
        reason: Utf8Bytes::from_static(reason.reason),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
    let tcp = ws.get_mut();
    let _ = tcp.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        // On the heap: a buffer in this future would sit in every connection's task.
        let mut sink = vec![0u8; 4096];
        let mut left = 4usize << 20;
        while left > 0 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

fn handle_frame(node: &Arc<Node>, conn: &Arc<Conn>, text: &str, rooms: &mut HashSet<Box<str>>) {
    let frame = match ClientFrame::parse(text) {
        Ok(f) => f,
        Err(e) => {
            node.metrics
                .refused
                .with_label_values(&["bad_request"])
                .inc();
            conn.push_unbounded(Utf8Bytes::from(ServerFrame::error(
                None,
                ErrorCode::BadRequest,
                &e.0,
            )));
            return;
        }
    };
    let ack = |id: Option<&str>| {
        if let Some(id) = id {
            conn.push_unbounded(Utf8Bytes::from(
                ServerFrame::Ack { id, offset: None }.to_json(),
            ));
        }
    };
    match frame {
        ClientFrame::Send { id, to, data } => {
            let env = Envelope {
                from: conn.client_id.as_ref().into(),
                id: id.into(),
                room: None,
                data,
            }
            .to_json();
            let producer = node.producer();
            let fut = relay::produce_direct(&producer, slot_of(to, node.slots), to, &env);
            confirm(node, conn, id, producer, fut);
        }
        ClientFrame::Publish { id, room, data } => {
            let env = Envelope {
                from: conn.client_id.as_ref().into(),
                id: id.into(),
                room: Some(room.into()),
                data,
            }
            .to_json();
            let producer = node.producer();
            let fut = relay::produce_room(&producer, room, &env);
            confirm(node, conn, id, producer, fut);
        }
        ClientFrame::Join { id, room } => {
            if !rooms.contains(room) && rooms.len() >= MAX_ROOMS_PER_CONN {
                conn.push_unbounded(Utf8Bytes::from(ServerFrame::error(
                    id,
                    ErrorCode::BadRequest,
                    "too many rooms for one connection",
                )));
                return;
            }
            rooms.insert(room.into());
            node.join(room, conn);
            ack(id);
        }
        ClientFrame::Leave { id, room } => {
            rooms.remove(room);
            node.leave(room, conn);
            ack(id);
        }
        ClientFrame::Ping { id } => {
            conn.push_unbounded(Utf8Bytes::from(ServerFrame::Pong { id }.to_json()))
        }
    }
}

/// Acks `id` once Kafka confirms, or sends a retryable error; never drops silently.
fn confirm(
    node: &Arc<Node>,
    conn: &Arc<Conn>,
    id: &str,
    producer: Arc<rdkafka::producer::FutureProducer>,
    fut: Result<
        impl std::future::Future<Output = relay::Produced> + Send + 'static,
        rdkafka::error::KafkaError,
    >,
) {
    let fut = match fut {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, "produce refused");
            node.renew_producer_if_broken(&producer, &e);
            node.metrics
                .messages
                .with_label_values(&["send_failed"])
                .inc();
            conn.push_unbounded(Utf8Bytes::from(ServerFrame::error(
                Some(id),
                ErrorCode::Overloaded,
                "the node cannot queue more messages now",
            )));
            return;
        }
    };
    let (node, conn, id) = (node.clone(), conn.clone(), id.to_string());
    tokio::spawn(async move {
        let frame = match fut.await {
            Ok(offset) => {
                node.metrics.sent.inc();
                ServerFrame::Ack {
                    id: &id,
                    offset: Some(offset),
                }
                .to_json()
            }
            Err(e) => {
                tracing::debug!(error = %e, "produce failed");
                node.renew_producer_if_broken(&producer, &e);
                node.metrics
                    .messages
                    .with_label_values(&["send_failed"])
                    .inc();
                ServerFrame::error(
                    Some(&id),
                    ErrorCode::KafkaUnavailable,
                    "Kafka did not confirm the message; retry",
                )
            }
        };
        conn.push_unbounded(Utf8Bytes::from(frame));
    });
}
