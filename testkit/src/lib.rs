//! Fixtures for tests and the local launcher: a Redis server, Kafka (librdkafka's embedded mock
//! cluster or a real broker), child processes owned by PID, free ports, waiting with a deadline.
//! Nothing here knows the servers; the in-process stack lives in `e2e`.

pub mod kafka;
pub mod kube;
pub mod kubelet;
pub mod netns;
pub mod proc;
pub mod proxy;
pub mod redis;

/// A port that was free a moment ago on 127.0.0.1 (for programs that cannot bind port 0 and
/// report it back, like redis-server and the Kafka broker).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 works")
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_for<F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The status of one plain HTTP request (None: no answer within `timeout`).
pub async fn http_status(
    addr: &str,
    method: &str,
    path: &str,
    timeout: std::time::Duration,
) -> Option<u16> {
    let method = http::Method::from_bytes(method.as_bytes()).ok()?;
    rtc_serverkit::http::call(addr, method, path, timeout)
        .await
        .ok()
        .map(|(s, _)| s.as_u16())
}
