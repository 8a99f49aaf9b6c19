//! Our own WebSocket splice, used instead of pingora-proxy's upgrade path: Pingora 0.9.1 tears
//! down 0.3–0.7 % of proxied upgrades when the 101 is read before the request's empty body
//! (upstream issue #946). Here the handshake is sent and its answer read before anything is
//! tunnelled, so the race cannot happen; and because we see the server's frame boundaries we can
//! close every WebSocket with a proper 1001 frame on shutdown. Here too: the handshake with the
//! node, the frame boundaries, and the copy loop.

use crate::Gateway;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest response head accepted from a socket node.
const MAX_HEAD: usize = 16 * 1024;
/// Largest refusal body relayed from a socket node.
const MAX_BODY: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Follows WebSocket frame boundaries in the server→client stream (server frames are unmasked,
/// but a mask is handled too). Pure.
#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    hdr: [u8; 14],
    hdr_len: usize,
    remaining: u64,
    /// Whether the server sent a close frame.
    closed: bool,
}

impl FrameTracker {
    pub fn at_boundary(&self) -> bool {
        self.hdr_len == 0 && self.remaining == 0
    }

    /// Whether a close frame went by (no frame may follow it).
    pub fn close_seen(&self) -> bool {
        self.closed
    }

    fn header_needed(&self) -> usize {
        if self.hdr_len < 2 {
            return 2;
        }
        let ext = match self.hdr[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if self.hdr[1] & 0x80 != 0 { 4 } else { 0 }
    }

    /// Consumes the start of `buf` up to the end of the current header or payload; returns the
    /// number of bytes consumed.
    fn step(&mut self, buf: &[u8]) -> usize {
        if self.remaining > 0 {
            let n = (self.remaining.min(buf.len() as u64)) as usize;
            self.remaining -= n as u64;
            return n;
        }
        let mut used = 0;
        while used < buf.len() {
            self.hdr[self.hdr_len] = buf[used];
            self.hdr_len += 1;
            used += 1;
            if self.hdr_len == self.header_needed() {
                let len = match self.hdr[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])),
                    127 => u64::from_be_bytes(self.hdr[2..10].try_into().expect("8 bytes")),
                    n => u64::from(n),
                };
                self.closed |= self.hdr[0] & 0x0f == 0x8;
                self.hdr_len = 0;
                self.remaining = len;
                break;
            }
        }
        used
    }

    /// Consumes all of `buf`.
    pub fn feed(&mut self, buf: &[u8]) {
        let mut pos = 0;
        while pos < buf.len() {
            pos += self.step(&buf[pos..]);
        }
    }

    /// The first position in `buf` (0..=len) at which a frame ends, consuming `buf` up to there;
    /// None (and all of `buf` consumed) when no frame ends inside it.
    pub fn boundary_in(&mut self, buf: &[u8]) -> Option<usize> {
        let mut pos = 0;
        loop {
            if self.at_boundary() {
                return Some(pos);
            }
            if pos == buf.len() {
                return None;
            }
            pos += self.step(&buf[pos..]);
        }
    }
}

/// A server close frame with `code` and a short reason (under 124 bytes).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88);
    f.push((2 + reason.len()) as u8);
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason.as_bytes());
    Bytes::from(f)
}

/// The node's answer to the forwarded handshake.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes after the head: frames the node sent right after a 101, or a refusal's body.
    pub rest: Bytes,
}

/// Headers that describe the hop, not the request; never forwarded as they came.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "x-forwarded-for"
    )
}

/// Opens a connection to the node and forwards the upgrade request; reads the answer's head (and
/// a refusal's body).
pub async fn handshake(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &http::HeaderMap,
    client: Option<std::net::IpAddr>,
) -> std::io::Result<(TcpStream, Answer)> {
    let mut up = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await??;
    let _ = up.set_nodelay(true);
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(path_and_query.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if hop_by_hop(name.as_str()) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: upgrade\r\n");
    if let Some(ip) = client {
        head.extend_from_slice(format!("x-forwarded-for: {ip}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    tokio::time::timeout(HANDSHAKE_TIMEOUT, up.write_all(&head)).await??;
    let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_answer(&mut up)).await??;
    Ok((up, answer))
}

async fn read_answer(up: &mut TcpStream) -> std::io::Result<Answer> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if up.read_buf(&mut buf).await? == 0 {
            return Err(bad("node closed during the handshake"));
        }
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut hdrs);
        match resp
            .parse(&buf)
            .map_err(|e| bad(&format!("bad response head: {e}")))?
        {
            httparse::Status::Partial if buf.len() < MAX_HEAD => continue,
            httparse::Status::Partial => return Err(bad("response head too large")),
            httparse::Status::Complete(n) => {
                let status = resp.code.unwrap_or(502);
                let headers: Vec<(String, Vec<u8>)> = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect();
                let mut rest = buf.split_off(n);
                if status != 101 {
                    let len = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| {
                            std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok()
                        })
                        .unwrap_or(0)
                        .min(MAX_BODY);
                    while rest.len() < len {
                        if up.read_buf(&mut rest).await? == 0 {
                            break;
                        }
                    }
                    rest.truncate(len);
                }
                return Ok(Answer {
                    status,
                    headers,
                    rest: rest.freeze(),
                });
            }
        }
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
pub async fn splice<C: AsyncRead + AsyncWrite + Unpin>(
    gw: &Gateway,
    mut client: C,
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
        let _ = client.write_all(&close_frame(code, reason)).await;
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
async fn copy<C: AsyncRead + AsyncWrite + Unpin>(
    gw: &Gateway,
    client: &mut C,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload_len: usize) -> Vec<u8> {
        let mut f = vec![0x81];
        match payload_len {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(b'x', payload_len));
        f
    }

    #[test]
    fn finds_boundaries_across_any_split() {
        let stream: Vec<u8> = [frame(5), frame(300), frame(0), frame(70_000)].concat();
        let ends = [7, 7 + 304, 7 + 304 + 2, stream.len()];
        for split in [1usize, 2, 3, 5, 64, 4096, stream.len()] {
            let mut t = FrameTracker::default();
            let mut seen = Vec::new();
            let mut base = 0;
            for chunk in stream.chunks(split) {
                let mut off = 0;
                while let Some(p) = t.boundary_in(&chunk[off..]) {
                    let at = base + off + p;
                    if at > 0 && seen.last() != Some(&at) {
                        seen.push(at);
                    }
                    if off + p == chunk.len() {
                        break;
                    }
                    // Step past the boundary by one frame's worth: consume one byte and go on.
                    t.feed(&chunk[off + p..off + p + 1]);
                    off += p + 1;
                }
                base += chunk.len();
            }
            assert_eq!(seen, ends, "split {split}");
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn masked_frames_are_handled() {
        let mut f = vec![0x81, 0x80 | 3, 1, 2, 3, 4, b'a', b'b', b'c'];
        f.extend_from_slice(&[0x89, 0]);
        let mut t = FrameTracker::default();
        t.feed(&f[..5]);
        assert!(!t.at_boundary());
        assert_eq!(t.boundary_in(&f[5..]), Some(4));
        t.feed(&f[9..]);
        assert!(t.at_boundary());
    }

    #[test]
    fn close_frames_are_valid_and_tracked() {
        let f = close_frame(1001, "gateway shutting down");
        let mut t = FrameTracker::default();
        t.feed(&f);
        assert!(t.at_boundary() && t.close_seen());
        assert_eq!(f[0], 0x88);
        assert_eq!(f[1] as usize, f.len() - 2);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 1001);
    }
}
