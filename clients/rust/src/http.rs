//! HTTP/1.1 for resolve and small admin calls (over TLS when the endpoints say so), and TCP
//! connections from a chosen source address (so one machine can spread many clients over
//! 127.0.0.x sources).

use crate::error::{Error, HttpReply};
use http_body_util::{BodyExt, Full};
use rtc_protocol::Resolved;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;

/// Maps a nodeId to the `host:port` its WebSocket path is opened on.
pub type NodeAddr = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where a client resolves, and how it reaches a node's WebSocket URL.
#[derive(Clone)]
pub struct Endpoints {
    /// `host:port` serving `/api/v1/resolve` (the gateway, or a balancer directly).
    pub resolve: String,
    /// `host:port` to open `/ws/<node>/connect` on, given the nodeId (the gateway for every
    /// node, or a node's own address when there is no gateway).
    pub ws: NodeAddr,
    /// Local address to connect from (None: the system's choice).
    pub bind: Option<IpAddr>,
    /// A JWT sent with resolve as `Authorization: Bearer …`, for deployments that require one
    /// (its `sub` must be the clientId).
    pub bearer: Option<String>,
    /// TLS for resolve (`https://`) and the WebSocket (`wss://`); None for plain HTTP and `ws://`.
    pub tls: Option<Tls>,
}

/// Which certificate authorities a client trusts for `https://` and `wss://`.
#[derive(Clone)]
pub struct Tls(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

impl Tls {
    /// Trusting the system's certificate authorities (as `/etc/ssl/certs` holds them).
    pub fn system_roots() -> Result<Tls, Error> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(Error::Tls(format!(
                "no usable system CA certificate ({:?})",
                found.errors
            )));
        }
        Tls::with_roots(roots)
    }

    /// Trusting only the certificate authorities in `pem` (one or more PEM certificates), as a
    /// private CA or a test needs.
    pub fn with_ca_pem(pem: &[u8]) -> Result<Tls, Error> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Tls(format!("reading the CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("a CA certificate is not usable: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls("no certificate in the CA PEM".into()));
        }
        Tls::with_roots(roots)
    }

    /// The application's own rustls configuration (client certificates, pinning, …).
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> Tls {
        Tls(config)
    }

    fn with_roots(roots: rustls::RootCertStore) -> Result<Tls, Error> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Tls(Arc::new(config)))
    }
}

/// The host of `host:port` (`[v6]:port` included), as TLS checks the certificate against it.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A connection to `addr` (from `bind` when given), through TLS when `tls` is given.
pub async fn open(
    addr: &str,
    bind: Option<IpAddr>,
    tls: Option<&Tls>,
) -> Result<MaybeTlsStream<TcpStream>, Error> {
    let tcp = tcp_connect(addr, bind).await?;
    let Some(tls) = tls else {
        return Ok(MaybeTlsStream::Plain(tcp));
    };
    let host = host_of(addr);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| Error::Invalid(format!("{host} is not a TLS server name: {e}")))?;
    match tokio_rustls::TlsConnector::from(tls.0.clone())
        .connect(name, tcp)
        .await
    {
        Ok(s) => Ok(MaybeTlsStream::Rustls(s)),
        // rustls's own verdicts (untrusted, wrong name, expired) are not worth a retry.
        Err(e) if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
            Err(Error::Tls(format!("{addr}: {e}")))
        }
        Err(e) => Err(e.into()),
    }
}

impl Endpoints {
    /// Everything through one gateway address (`host:port`), as applications use it.
    pub fn gateway(addr: &str) -> Self {
        let a = addr.to_string();
        Endpoints {
            resolve: a.clone(),
            ws: Arc::new(move |_| Some(a.clone())),
            bind: None,
            bearer: None,
            tls: None,
        }
    }

    /// Everything through one gateway address over TLS (`https://` and `wss://`).
    pub fn gateway_tls(addr: &str, tls: Tls) -> Self {
        Endpoints {
            tls: Some(tls),
            ..Endpoints::gateway(addr)
        }
    }
}

/// A TCP connection to `addr`, from local address `bind` (any port) when given.
pub async fn tcp_connect(addr: &str, bind: Option<IpAddr>) -> Result<TcpStream, Error> {
    let target = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| Error::Invalid(format!("no address for {addr}")))?;
    let stream = match bind {
        None => TcpStream::connect(target).await?,
        Some(ip) => {
            let sock = if target.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.bind(std::net::SocketAddr::new(ip, 0))?;
            sock.connect(target).await?
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One request with an empty body over a fresh HTTP/1.1 connection.
pub async fn request(
    method: http::Method,
    addr: &str,
    path_and_query: &str,
    bind: Option<IpAddr>,
) -> Result<HttpReply, Error> {
    request_with(method, addr, None, path_and_query, bind, None).await
}

/// [`request`] with an `Authorization: Bearer` header when `bearer` is given, over TLS
/// (`https://`) when `tls` is given.
pub async fn request_with(
    method: http::Method,
    addr: &str,
    tls: Option<&Tls>,
    path_and_query: &str,
    bind: Option<IpAddr>,
    bearer: Option<&str>,
) -> Result<HttpReply, Error> {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send_over(method, addr, tls, path_and_query, bind, &headers, None).await
}

/// One request over a fresh HTTP/1.1 connection, with extra `headers` and a JSON `body`.
pub async fn send(
    method: http::Method,
    addr: &str,
    path_and_query: &str,
    bind: Option<IpAddr>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<HttpReply, Error> {
    send_over(method, addr, None, path_and_query, bind, headers, body).await
}

/// [`send`] over TLS (`https://`) when `tls` is given.
pub async fn send_over(
    method: http::Method,
    addr: &str,
    tls: Option<&Tls>,
    path_and_query: &str,
    bind: Option<IpAddr>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<HttpReply, Error> {
    let http_err = |e: &dyn std::fmt::Display| Error::Http(format!("{addr}{path_and_query}: {e}"));
    let stream = open(addr, bind, tls).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| http_err(&e))?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::HOST, addr);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        // The server closes first, so TIME_WAIT stays on its side and a client making many
        // requests does not run out of local ports.
        .header(http::header::CONNECTION, "close")
        .body(Full::new(bytes::Bytes::from(
            body.unwrap_or_default().to_string(),
        )))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http_err(&e))?
        .to_bytes();
    Ok(HttpReply {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `POST /api/v1/publish` at `addr` (the gateway) with `api_key`: `body` is one message
/// (`{"to"|"room","id","data"}`) or a batch (`{"messages":[…]}`); docs/protocol.md §7.
pub async fn publish(addr: &str, api_key: &str, body: &str) -> Result<HttpReply, Error> {
    let auth = format!("Bearer {api_key}");
    send(
        http::Method::POST,
        addr,
        "/api/v1/publish",
        None,
        &[("authorization", &auth)],
        Some(body),
    )
    .await
}

/// `GET http://{addr}{path_and_query}`.
pub async fn get(addr: &str, path_and_query: &str) -> Result<HttpReply, Error> {
    request(http::Method::GET, addr, path_and_query, None).await
}

/// `POST http://{addr}{path}` with an empty body.
pub async fn post(addr: &str, path: &str) -> Result<HttpReply, Error> {
    request(http::Method::POST, addr, path, None).await
}

/// `s` escaped for a query string value.
pub(crate) fn query_escape(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q[1..].to_string())
        .unwrap_or_default()
}

/// `GET /api/v1/resolve?clientId=…`: which node serves `client_id`, with a token for it. A
/// refusal comes back as [`Error::Refused`].
pub async fn resolve(ep: &Endpoints, client_id: &str) -> Result<Resolved, Error> {
    let path = format!("/api/v1/resolve?clientId={}", query_escape(client_id));
    let r = request_with(
        http::Method::GET,
        &ep.resolve,
        ep.tls.as_ref(),
        &path,
        ep.bind,
        ep.bearer.as_deref(),
    )
    .await?;
    if r.status != 200 {
        return Err(Error::Refused(r));
    }
    serde_json::from_str(&r.body)
        .map_err(|e| Error::Protocol(format!("resolve answered {:?}: {e}", r.body)))
}
