//! One client connection's loop: frames in (rate-limited), queued frames out, pings, and the
//! close — with a reason the client can act on.

use super::frames::handle_frame;
use super::CountGuard;
use crate::conn::{CloseReason, Conn};
use crate::node::Node;
use crate::session::SessionEvent;
use futures_util::{SinkExt, StreamExt};
use rtc_protocol::{close, ClientFrame, ErrorCode, ServerFrame};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// How long a batch of writes to one client may take before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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

pub(super) async fn run(
    node: Arc<Node>,
    mut ws: WebSocketStream<TcpStream>,
    client_id: String,
    slot: u32,
    resume: Option<i64>,
    _guard: CountGuard,
) {
    let conn = Arc::new(Conn::new(&client_id, node.cfg.send_queue_bytes));
    drop(client_id);
    // A resume older than the history reads the partition back first, in this task only.
    let readback = match node.readback_range(slot, resume) {
        Some((from, until)) => Box::pin(read_back(&node, slot, &conn.client_id, from, until)).await,
        None => None,
    };
    if let Err(reason) = node.register(&conn, slot, resume, readback) {
        let _ = Box::pin(close_with(&mut ws, reason)).await;
        return;
    }
    let _ = node.sessions.try_send(SessionEvent::Connected {
        client_id: conn.client_id.clone(),
        at_ms: rtc_serverkit::telemetry::now_ms(),
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
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queued the answering close frame (same code); send it,
                        // then close TCP: after the closing handshake the server closes first.
                        let _ = Box::pin(answer_close(&mut ws)).await;
                        break None;
                    }
                    None => break None,
                    Some(Ok(_)) => {}
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                        node.metrics.refused.with_label_values(&["message_too_big"]).inc();
                        break Some(CloseReason { code: close::TOO_BIG, reason: "message too big" });
                    }
                    // A client that breaks the protocol is told so before it is dropped (RFC
                    // 6455 §7.1.7): a close it can read, not a bare disconnect.
                    Some(Err(tokio_tungstenite::tungstenite::Error::Protocol(_))) => break Some(CloseReason { code: close::PROTOCOL_ERROR, reason: "protocol error" }),
                    Some(Err(tokio_tungstenite::tungstenite::Error::Utf8(_))) => break Some(CloseReason { code: close::INVALID_DATA, reason: "invalid UTF-8" }),
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
    for room in &rooms {
        super::frames::presence_change(&node, &conn, room, false);
    }
    let _ = node.sessions.try_send(SessionEvent::Disconnected {
        client_id: conn.client_id.clone(),
    });
    if let Some(reason) = ended {
        let _ = Box::pin(close_with(&mut ws, reason)).await;
    }
}

/// Reads the slot back over `[from, until)`, then the gaps the history left behind while it
/// read: a node still consuming a burst evicts its oldest history meanwhile, and a read-back that
/// no longer reaches the history would make the resume `recovered:false` for nothing. A few
/// rounds, within READBACK_MAX_MESSAGES in all.
async fn read_back(
    node: &Node,
    slot: u32,
    client: &str,
    from: i64,
    until: i64,
) -> Option<crate::readback::ReadBack> {
    let mut rb = crate::readback::read(node, slot, client, from, until)
        .await
        .ok()?;
    for _ in 0..5 {
        let Some((gap_from, gap_until)) = node.readback_range(slot, Some(rb.last)) else {
            break;
        };
        let more = crate::readback::read(node, slot, client, gap_from, gap_until)
            .await
            .ok()?;
        rb.records.extend(more.records);
        rb.scanned += more.scanned;
        rb.last = more.last;
        if rb.records.len() > node.cfg.readback_max_messages {
            return None;
        }
    }
    Some(rb)
}

/// Answers a client's close: flushes the close frame tungstenite queued in reply, then closes
/// TCP (RFC 6455 §7.1.1: once both close frames are exchanged, the server closes first).
async fn answer_close(ws: &mut WebSocketStream<TcpStream>) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.flush()).await;
    let _ = ws.get_mut().shutdown().await;
}

/// Sends a close frame and waits (bounded) for the client's close in answer, then closes TCP.
/// If the client answers with something that is not a frame (say, the rest of an oversized
/// message), the bytes are read and discarded until it closes: dropping a socket with unread
/// bytes makes the kernel send a reset, which can overtake the close frame.
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
    let answered = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
                // Ended or broken without the client's close (say, after an oversized frame
                // whose rest is still arriving): read the rest below before dropping.
                None | Some(Err(_)) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let tcp = ws.get_mut();
    let _ = tcp.shutdown().await;
    if answered {
        return Ok(());
    }
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
