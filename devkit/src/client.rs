//! A client written from docs/protocol.md: resolve, connect with a token, send and receive JSON
//! frames, track the resume offset, follow `move`. Used by tests, the load test and demos.

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use rtc_common::protocol::Resolved;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Answer of an HTTP GET: status, headers we care about, body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

/// One request with an empty body over a fresh HTTP/1.1 connection.
async fn http_request(
    method: http::Method,
    addr: &str,
    path_and_query: &str,
    bind: Option<IpAddr>,
) -> anyhow::Result<HttpReply> {
    let stream = tcp_connect(addr, bind).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::HOST, addr)
        // The server closes first, so TIME_WAIT stays on its side and a client making many
        // requests does not run out of local ports.
        .header(http::header::CONNECTION, "close")
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(HttpReply {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET http://{addr}{path_and_query}`.
pub async fn http_get(addr: &str, path_and_query: &str) -> anyhow::Result<HttpReply> {
    http_request(http::Method::GET, addr, path_and_query, None).await
}

/// A TCP connection to `addr`, from local address `bind` (any port) when given — so a load
/// test can spread over 127.0.0.x sources and their port ranges.
pub async fn tcp_connect(addr: &str, bind: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let target = tokio::net::lookup_host(addr)
        .await?
        .next()
        .with_context(|| format!("no address for {addr}"))?;
    let stream = match bind {
        None => TcpStream::connect(target).await,
        Some(ip) => {
            let sock = if target.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.bind(std::net::SocketAddr::new(ip, 0))?;
            sock.connect(target).await
        }
    };
    let stream = stream.with_context(|| format!("connecting to {addr}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `POST http://{addr}{path}` with an empty body.
pub async fn http_post(addr: &str, path: &str) -> anyhow::Result<HttpReply> {
    http_request(http::Method::POST, addr, path, None).await
}

fn query_escape(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q[1..].to_string())
        .unwrap_or_default()
}

/// Maps a nodeId to the `host:port` its WebSocket path is opened on.
pub type NodeAddr = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where a client resolves, and how it reaches a node's WebSocket URL.
#[derive(Clone)]
pub struct Endpoints {
    /// `host:port` serving `/api/v1/resolve` (the gateway, or a balancer directly).
    pub resolve: String,
    /// `host:port` to open `/ws/<node>/connect` on, given the nodeId (the gateway for every
    /// node, or a node's own address in tests without a gateway).
    pub ws: NodeAddr,
    /// Local address to connect from (None: the system's choice).
    pub bind: Option<IpAddr>,
}

impl Endpoints {
    /// Everything through one gateway address.
    pub fn gateway(addr: &str) -> Self {
        let a = addr.to_string();
        Endpoints {
            resolve: a.clone(),
            ws: Arc::new(move |_| Some(a.clone())),
            bind: None,
        }
    }
}

pub async fn resolve(
    ep: &Endpoints,
    client_id: &str,
) -> anyhow::Result<Result<Resolved, HttpReply>> {
    let path = format!("/api/v1/resolve?clientId={}", query_escape(client_id));
    let r = http_request(http::Method::GET, &ep.resolve, &path, ep.bind).await?;
    if r.status == 200 {
        Ok(Ok(
            serde_json::from_str(&r.body).with_context(|| format!("resolve body {:?}", r.body))?
        ))
    } else {
        Ok(Err(r))
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected client.
pub struct Client {
    pub client_id: String,
    pub ep: Endpoints,
    pub ws: Ws,
    pub node: String,
    /// The welcome frame's `recovered`.
    pub recovered: bool,
    /// The resume point: offset of the newest direct message received (or the welcome's).
    pub offset: Option<i64>,
    /// Set when the server sent `move`, with the delay it asked for.
    pub moved: bool,
    pub move_delay_ms: u64,
}

/// One refusal while connecting, with its status and body.
#[derive(Debug)]
pub struct Refused(pub HttpReply);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused with {}: {}", self.0.status, self.0.body)
    }
}

impl std::error::Error for Refused {}

/// Asserts that connecting `client_id` now is refused with `status`, `Retry-After` and `code`
/// (the documented JSON body), and returns the reply.
pub async fn expect_refusal(
    ep: &Endpoints,
    client_id: &str,
    status: u16,
    retry_after: Option<&str>,
    code: &str,
) -> HttpReply {
    let err = match Client::connect_once(ep, client_id, None).await {
        Ok(_) => panic!("{client_id} was accepted; expected {status} {code}"),
        Err(e) => e,
    };
    let r = err
        .downcast_ref::<Refused>()
        .unwrap_or_else(|| panic!("not an HTTP refusal: {err:#}"))
        .0
        .clone();
    assert_eq!(
        (r.status, r.retry_after.as_deref()),
        (status, retry_after),
        "{}",
        r.body
    );
    assert!(r.body.contains(code), "{}", r.body);
    r
}

impl Client {
    /// Resolves and connects once; a refusal is returned as a `Refused` error.
    pub async fn connect_once(
        ep: &Endpoints,
        client_id: &str,
        resume: Option<i64>,
    ) -> anyhow::Result<Client> {
        let res = match resolve(ep, client_id).await? {
            Ok(r) => r,
            Err(reply) => return Err(Refused(reply).into()),
        };
        let addr = (ep.ws)(&res.node_id)
            .with_context(|| format!("no address for node {}", res.node_id))?;
        let mut url = format!(
            "ws://{addr}{}?clientId={}&token={}",
            res.url,
            query_escape(client_id),
            query_escape(&res.token)
        );
        if let Some(r) = resume {
            url.push_str(&format!("&resumeOffset={r}"));
        }
        let req = url.into_client_request()?;
        // tungstenite's default 128 KiB read buffer is resident per connection; 2 KiB is plenty
        // for our frames and lets one process hold many clients.
        let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(2048);
        let stream = MaybeTlsStream::Plain(tcp_connect(&addr, ep.bind).await?);
        let ws = match tokio_tungstenite::client_async_with_config(req, stream, Some(cfg)).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(Refused(HttpReply {
                    status,
                    retry_after,
                    body,
                })
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        let mut c = Client {
            client_id: client_id.to_string(),
            ep: ep.clone(),
            ws,
            node: String::new(),
            recovered: false,
            offset: resume,
            moved: false,
            move_delay_ms: 0,
        };
        let welcome = c
            .next_raw(Duration::from_secs(10))
            .await?
            .context("closed before welcome")?;
        if welcome["type"] != "welcome" {
            bail!("first frame is not welcome: {welcome}");
        }
        c.node = welcome["node"].as_str().unwrap_or_default().to_string();
        c.recovered = welcome["recovered"].as_bool().unwrap_or(false);
        if c.offset.is_none() {
            c.offset = welcome["offset"].as_i64();
        }
        Ok(c)
    }

    /// Connects, retrying refusals that say they are retryable (and 409/404, which mean the
    /// ring moved: resolve again) with backoff, until `deadline`.
    pub async fn connect(
        ep: &Endpoints,
        client_id: &str,
        resume: Option<i64>,
        deadline: Duration,
    ) -> anyhow::Result<Client> {
        let until = tokio::time::Instant::now() + deadline;
        let mut delay = Duration::from_millis(50);
        loop {
            match Self::connect_once(ep, client_id, resume).await {
                Ok(c) => return Ok(c),
                Err(e) if tokio::time::Instant::now() >= until => {
                    return Err(e.context(format!("connecting {client_id}")))
                }
                Err(e) => {
                    if let Some(Refused(r)) = e.downcast_ref::<Refused>() {
                        if r.status == 400 || r.status == 401 {
                            return Err(e);
                        }
                    }
                    // Full jitter: a random wait up to the (doubling, capped) backoff, so clients
                    // refused together do not come back together.
                    tokio::time::sleep(delay.mul_f64(rand::random::<f64>())).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Reconnects through resolve, resuming from the tracked offset.
    pub async fn reconnect(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let _ = self.ws.close(None).await;
        let fresh = Client::connect(&self.ep, &self.client_id, self.offset, deadline).await?;
        let offset = self.offset;
        *self = fresh;
        if offset.is_some() {
            self.offset = offset.max(self.offset);
        }
        Ok(())
    }

    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Sends a direct message.
    pub async fn send(&mut self, id: &str, to: &str, data: Value) -> anyhow::Result<()> {
        self.send_text(serde_json::json!({"type":"send","id":id,"to":to,"data":data}).to_string())
            .await
    }

    /// The next JSON frame, or None when the server closed (the close frame is returned as
    /// `{"type":"close","code":…,"reason":…}`).
    pub async fn next_raw(&mut self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        loop {
            let m = tokio::time::timeout(timeout, self.ws.next())
                .await
                .context("timed out waiting for a frame")?;
            match m {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(&t)?)),
                Some(Ok(Message::Close(c))) => {
                    let (code, reason) = c
                        .map(|c| (u16::from(c.code), c.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Ok(Some(
                        serde_json::json!({"type":"close","code":code,"reason":reason}),
                    ));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame, tracking offsets of direct messages and `move`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        let f = self.next_raw(timeout).await?;
        if let Some(v) = &f {
            if let Some(ty) = v["type"].as_str() {
                self.observe(ty, v["offset"].as_i64(), v["delayMs"].as_u64());
            }
        }
        Ok(f)
    }

    /// Books what a received frame means for reconnecting: the offset of a direct message
    /// becomes the resume point, a `move` asks to reconnect after its delay.
    pub fn observe(&mut self, ty: &str, offset: Option<i64>, delay_ms: Option<u64>) {
        match ty {
            "msg" => {
                if let Some(o) = offset {
                    self.offset = Some(self.offset.map_or(o, |x| x.max(o)));
                }
            }
            "move" => {
                self.moved = true;
                self.move_delay_ms = delay_ms.unwrap_or(0);
            }
            _ => {}
        }
    }

    /// Frames until one matches `pred` (returned), within `timeout` overall.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Some(v) if pred(&v) => return Ok(v),
                Some(_) => {}
                None => bail!("connection closed while waiting"),
            }
        }
    }
}
