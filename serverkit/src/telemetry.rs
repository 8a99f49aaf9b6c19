//! Logging set-up and the process-wide shutdown signal.

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Human logs locally, JSON when `LOG_FORMAT=json`; level from `RUST_LOG` (default `info`).
pub fn init(component: &str) {
    started();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    tracing::debug!(component, "telemetry ready");
}

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why registering a metric cannot fail: names are static and unique per registry.
pub const UNIQUE_METRIC: &str = "metric names are static and unique";

/// `registry` in Prometheus text format.
pub fn render(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf);
    let mut text = String::from_utf8(buf).unwrap_or_default();
    // The standard process metric, so that restarts show (`changes()` over it).
    text.push_str(&format!(
        "# HELP process_start_time_seconds Start time of the process since the Unix epoch, seconds\n\
         # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}\n",
        started()
    ));
    text
}

/// When this process started (first asked: `init` asks at start), Unix seconds.
fn started() -> f64 {
    static STARTED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(|| now_ms() as f64 / 1000.0)
}

/// CPU seconds this process has used so far, and its resident bytes.
pub fn process_usage() -> (f64, u64) {
    let hz = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map(|s| ((s.utime + s.stime) as f64 / hz, s.rss * page))
        .unwrap_or((0.0, 0))
}
