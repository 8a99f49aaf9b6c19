//! The public plain-TCP listener: THREADS accept loops, each on its own SO_REUSEPORT socket and
//! its own thread with a current-thread runtime, handing every connection to Pingora's HTTP proxy on the
//! thread that accepted it.
//!
//! Why not Pingora's listening service: it runs every accept loop of a service on one runtime,
//! so one thread's I/O driver owns all client sockets while the connections are served on any
//! thread — each message through a tunnel served elsewhere cost a cross-thread wake-up (an
//! eventfd write and a context switch). And two services sharing one address share one file
//! descriptor, which both close at shutdown. Here the kernel spreads connections over the
//! sockets, and a connection's sockets, tunnel and wake-ups stay on one thread.

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

/// Connections waiting to be accepted, per socket.
const BACKLOG: u32 = 4096;

/// A socket for `at` with SO_REUSEADDR (a restart is not refused for its old connections in
/// TIME_WAIT), and with SO_REUSEPORT when `share`.
fn socket_for(at: SocketAddr, share: bool) -> std::io::Result<TcpSocket> {
    let socket = if at.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if share {
        socket.set_reuseport(true)?;
    }
    Ok(socket)
}

/// Binds `n` sockets to `addr` with SO_REUSEPORT (all to the port the first got, when `addr`
/// asks for port 0). They listen once their accept loops start.
///
/// SO_REUSEPORT would also let another process of the same user (a second gateway started by
/// mistake) bind the same address and silently take part of the connections, so a named port is
/// first bound once without it: that fails while anyone else listens there.
pub fn bind(addr: &str, n: usize) -> anyhow::Result<Vec<TcpSocket>> {
    let mut at: SocketAddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("LISTEN_ADDR {addr:?} is not an IP:port: {e}"))?;
    if at.port() != 0 {
        socket_for(at, false)?.bind(at).map_err(|e| {
            anyhow::anyhow!("LISTEN_ADDR {at}: {e} (is another gateway listening there?)")
        })?;
    }
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let socket = socket_for(at, true)?;
        socket
            .bind(at)
            .map_err(|e| anyhow::anyhow!("LISTEN_ADDR {at}: {e}"))?;
        at = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// One accept loop on a thread of its own with a current-thread runtime (no work-stealing
/// machinery on the path of every message), started and awaited as a Pingora background service
/// so it follows the server's lifecycle.
pub struct Acceptor<A> {
    name: String,
    socket: Mutex<Option<TcpSocket>>,
    app: Arc<A>,
}

impl<A> Acceptor<A> {
    pub fn new(name: String, socket: TcpSocket, app: Arc<A>) -> Self {
        Acceptor {
            name,
            socket: Mutex::new(Some(socket)),
            app,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> BackgroundService for Acceptor<A> {
    async fn start(&self, shutdown: ShutdownWatch) {
        let socket = self
            .socket
            .lock()
            .expect("acceptor lock")
            .take()
            .expect("an acceptor starts once");
        let app = self.app.clone();
        let (done, ended) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    // Connections still open when the loop ends are dropped with the runtime:
                    // by then the shutdown sequence has closed every WebSocket.
                    Ok(rt) => rt.block_on(accept_loop(socket, app, shutdown)),
                    Err(e) => tracing::error!(error = %e, "accept runtime failed to start"),
                }
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => {
                let _ = ended.await;
            }
            Err(e) => tracing::error!(error = %e, "accept thread failed to start"),
        }
    }
}

async fn accept_loop<A: ServerApp + Send + Sync + 'static>(
    socket: TcpSocket,
    app: Arc<A>,
    mut shutdown: ShutdownWatch,
) {
    let listener = match socket.listen(BACKLOG) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "listen failed");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
                continue;
            }
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream = ClientConn::new(tcp);
        let (app, shutdown) = (app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut next = app.process_new(Box::new(stream), &shutdown).await;
            while let Some(reused) = next {
                next = app.process_new(reused, &shutdown).await;
            }
        });
    }
}

/// Writes smaller than this are gathered until a flush (an HTTP head and its body leave in one
/// segment); larger ones go straight to the socket.
const WRITE_GATHER: usize = 16 * 1024;

/// A client connection as Pingora's HTTP code and our tunnel see it: the socket, unbuffered
/// reads, and writes gathered until flushed. The gathering buffer exists only while it holds
/// bytes, so an idle WebSocket holds nothing but the socket.
#[derive(Debug)]
pub struct ClientConn {
    tcp: TcpStream,
    out: BytesMut,
    /// Pingora finds the client's address here (x-forwarded-for, logs).
    digest: Arc<SocketDigest>,
}

impl ClientConn {
    pub fn new(tcp: TcpStream) -> Self {
        let digest = Arc::new(SocketDigest::from_raw_fd(tcp.as_raw_fd()));
        ClientConn {
            tcp,
            out: BytesMut::new(),
            digest,
        }
    }

    /// The bare socket, once everything gathered is written (a proxied WebSocket's bytes go
    /// straight through from then on).
    pub async fn into_tcp(mut self) -> std::io::Result<TcpStream> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await?;
        Ok(self.tcp)
    }

    /// Writes out what was gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        // Give the buffer back: an idle connection keeps no capacity.
        self.out = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ClientConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.out.len() + buf.len() > WRITE_GATHER {
            std::task::ready!(self.poll_drain(cx))?;
        }
        if buf.len() >= WRITE_GATHER {
            return Pin::new(&mut self.tcp).poll_write(cx, buf);
        }
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientConn {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for ClientConn {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for ClientConn {}

impl GetTimingDigest for ClientConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for ClientConn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for ClientConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.digest.clone())
    }
}

#[async_trait]
impl Peek for ClientConn {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_port_another_process_listens_on_is_refused_even_with_reuseport() {
        // Someone else (another gateway, or any server) listens there already.
        let first = bind("127.0.0.1:0", 2).unwrap();
        let at = first[0].local_addr().unwrap();
        let _listening: Vec<_> = first.into_iter().map(|s| s.listen(16).unwrap()).collect();
        let err = bind(&at.to_string(), 2).unwrap_err().to_string();
        assert!(err.contains("is another gateway listening there?"), "{err}");
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = plain.local_addr().unwrap();
        assert!(bind(&at.to_string(), 1).is_err());
        // A free named port binds, every socket on it.
        drop(plain);
        let sockets = bind(&at.to_string(), 3).unwrap();
        assert_eq!(sockets.len(), 3);
        assert!(sockets.iter().all(|s| s.local_addr().unwrap() == at));
    }

    /// A connected pair: (our ClientConn, the peer's socket).
    async fn pair() -> (ClientConn, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        (ClientConn::new(tcp), peer)
    }

    #[tokio::test]
    async fn small_writes_leave_together_at_the_flush_and_nothing_stays_buffered() {
        let (mut conn, mut peer) = pair().await;
        conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n")
            .await
            .unwrap();
        conn.write_all(b"{}").await.unwrap();
        // Gathered, not sent: the peer has nothing yet.
        let mut buf = [0u8; 256];
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), peer.read(&mut buf))
                .await
                .is_err(),
            "bytes left before the flush"
        );
        conn.flush().await.unwrap();
        let n = peer.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].ends_with(b"\r\n\r\n{}"),
            "head and body in one read"
        );
        assert_eq!(conn.out.capacity(), 0, "no buffer kept after the flush");
    }

    #[tokio::test]
    async fn the_digest_names_the_client_and_into_tcp_writes_what_was_gathered() {
        let (mut conn, mut peer) = pair().await;
        let digest = conn.get_socket_digest().expect("a digest");
        assert_eq!(
            digest.peer_addr().and_then(|a| a.as_inet()).copied(),
            Some(peer.local_addr().unwrap())
        );
        conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        let mut tcp = conn.into_tcp().await.unwrap();
        tcp.write_all(b"\x81\x00").await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\x81\x00") {
            let mut buf = [0u8; 64];
            let n = peer.read(&mut buf).await.unwrap();
            assert!(n > 0, "peer closed");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x00");
    }
}
