//! The HTTP/1.1 accept loop shared by the balancer and the socket node: an axum router served
//! with upgrades enabled, on a listener we own (so tests bind port 0 and we control the IO type
//! a WebSocket upgrade hands back).

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `app` on `listener` until `cancel`; every connection task is tracked by `tracker`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

/// A response with a JSON body and status.
pub fn json_response(status: http::StatusCode, body: String) -> axum::response::Response {
    let mut r = axum::response::Response::new(axum::body::Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A refusal as its documented JSON body, status and `Retry-After` header.
pub fn refusal(r: rtc_protocol::Refusal) -> axum::response::Response {
    let status =
        http::StatusCode::from_u16(r.status()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let retry_after = r.retry_after();
    let mut r = json_response(status, r.body());
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(s));
    }
    r
}

/// One plain HTTP/1.1 request to `addr` (`host:port`) on a fresh connection, bounded by
/// `timeout`: the status and the body. For the balancer's calls to socket nodes (drain).
pub async fn call(
    addr: &str,
    method: http::Method,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(http::StatusCode, String)> {
    use http_body_util::BodyExt;
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr)
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let res = send.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow::anyhow!("{addr}{path}: no answer within {timeout:?}"))?
}
