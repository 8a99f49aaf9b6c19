//! Keep-alive connections that asked for resolve are served by hyper after their first request.
//! Pingora's per-request HTTP/1 work costs more than the answer itself (resolve answered in the
//! gateway ran at 0.76× the balancer's own rate through Pingora); hyper's HTTP/1 server is what
//! the balancer uses. So once a connection's first request was a resolve (answered by Pingora),
//! the connection is taken out of Pingora (as WebSockets are, `proxy.rs`) — only if Pingora
//! would have kept it alive and read nothing beyond the request — and its next requests are
//! served here: resolve (answered here, or forwarded to a balancer while the gateway cannot),
//! `/api/v1/publish` (forwarded to a balancer), the page and the JavaScript client. A WebSocket
//! upgrade on such a connection is refused with 503 and `Connection: close`, so the client
//! retries on a new connection (clients open one per WebSocket anyway). Idle connections close
//! after WS_IDLE_TIMEOUT_SECS' HTTP counterpart (60 s), and all close when the gateway stops.

use crate::Gateway;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rtc_protocol::{ErrorCode, Refusal};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// How long a taken-over connection may stay idle between requests.
const IDLE: Duration = Duration::from_secs(60);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Response<Full<Bytes>>;

fn reply(status: u16, content_type: &'static str, body: Bytes) -> Reply {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn refusal(gw: &Gateway, r: Refusal) -> Reply {
    gw.metrics
        .refused
        .with_label_values(&[r.code.as_str()])
        .inc();
    let mut resp = reply(r.status(), "application/json", Bytes::from(r.body()));
    if let Some(s) = r.retry_after() {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(s));
    }
    resp
}

/// Serves the rest of a taken-over connection until it closes, idles out, or the gateway stops.
pub async fn serve(gw: Arc<Gateway>, stream: pingora::protocols::Stream) {
    let service = {
        let gw = gw.clone();
        hyper::service::service_fn(move |req| {
            let gw = gw.clone();
            async move { Ok::<_, Infallible>(handle(&gw, req).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = gw.going_away.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

async fn handle(gw: &Arc<Gateway>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path();
    if let Some((content_type, body)) = crate::proxy::static_file(path) {
        gw.metrics.requests.with_label_values(&["page"]).inc();
        return reply(200, content_type, Bytes::from_static(body));
    }
    match path {
        "/api/v1/resolve" => {
            gw.metrics.requests.with_label_values(&["resolve"]).inc();
            let Some(ring) = gw.local.usable() else {
                gw.metrics.resolves.with_label_values(&["proxied"]).inc();
                return forward(gw, req).await;
            };
            match crate::resolver::answer(gw, &ring, req.uri().query(), req.headers()) {
                Ok(body) => reply(200, "application/json", body),
                Err(r) => refusal(gw, r),
            }
        }
        "/api/v1/publish" => {
            gw.metrics.requests.with_label_values(&["publish"]).inc();
            forward(gw, req).await
        }
        _ if crate::route::ws_node(path).is_some() => {
            let mut r = refusal(
                gw,
                Refusal::new(
                    ErrorCode::NotReady,
                    "open the WebSocket on a new connection",
                ),
            );
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            r
        }
        _ => {
            gw.metrics.requests.with_label_values(&["other"]).inc();
            refusal(gw, Refusal::new(ErrorCode::NotFound, "no such path"))
        }
    }
}

/// Sends `req` to a healthy balancer on a fresh connection and relays its answer.
async fn forward(gw: &Gateway, req: Request<Incoming>) -> Reply {
    let unavailable = || {
        refusal(
            gw,
            Refusal::new(
                ErrorCode::UpstreamUnavailable,
                "no balancer answered; retry",
            ),
        )
    };
    let Some(backend) = gw.balancers.select(b"", 64) else {
        return unavailable();
    };
    let Some(addr) = backend.addr.as_inet().copied() else {
        return unavailable();
    };
    let work = async {
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut out = Request::builder().method(parts.method).uri(
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
        );
        for (k, v) in &parts.headers {
            if k != http::header::CONNECTION {
                out = out.header(k, v);
            }
        }
        let res = send.send_request(out.body(Full::new(body))?).await?;
        let (rparts, rbody) = res.into_parts();
        let rbody = rbody.collect().await?.to_bytes();
        let mut r = Response::new(Full::new(rbody));
        *r.status_mut() = rparts.status;
        for (k, v) in &rparts.headers {
            if k != http::header::CONNECTION && k != http::header::TRANSFER_ENCODING {
                r.headers_mut().insert(k, v.clone());
            }
        }
        Ok::<_, anyhow::Error>(r)
    };
    match tokio::time::timeout(FORWARD_TIMEOUT, work).await {
        Ok(Ok(r)) => r,
        _ => unavailable(),
    }
}
