//! A short run of the real `rtc-loadtest` binary against a real stack behind the gateway, so the
//! harness does not rot: worker processes, every pattern, JSON and HTML output. Not timed.

use rtc_e2e::stack::{GatewayHandle, Stack};
use std::process::Command;

fn loadtest(gw: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(rtc_e2e::workspace_bin("rtc-loadtest"))
        .args([
            "--target",
            gw,
            "--ramp-up",
            "1",
            "--duration",
            "2",
            "--msg-interval",
            "200",
            "--json",
        ])
        .args(extra)
        .output()
        .expect("rtc-loadtest runs");
    assert!(
        out.status.success(),
        "{extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_runs_every_pattern_through_the_gateway() {
    let stack = Stack::start(2, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let addr = gw.addr.clone();
    let html = std::env::temp_dir().join(format!("rtc-smoke-{}.html", std::process::id()));
    let html_arg = html.display().to_string();
    let (direct, room, ping) = tokio::task::spawn_blocking(move || {
        (
            loadtest(
                &addr,
                &[
                    "--connections",
                    "40",
                    "--workers",
                    "2",
                    "--pattern",
                    "direct",
                    "--html",
                    &html_arg,
                    "--fail-if",
                    "lost==0",
                ],
            ),
            loadtest(
                &addr,
                &[
                    "--connections",
                    "20",
                    "--pattern",
                    "room",
                    "--rooms",
                    "2",
                    "--prefix",
                    "roomer",
                ],
            ),
            loadtest(
                &addr,
                &[
                    "--connections",
                    "10",
                    "--pattern",
                    "ping",
                    "--prefix",
                    "pinger",
                    "--source-addrs",
                    "127.0.0.1-127.0.0.2",
                ],
            ),
        )
    })
    .await
    .unwrap();
    assert_eq!(direct["clients"], 40);
    assert_eq!(direct["workers"], 2);
    assert!(
        direct["delivered"].as_u64().unwrap() > 0 && direct["lost"] == 0,
        "{direct}"
    );
    assert!(room["room_delivered"].as_u64().unwrap() > 0, "{room}");
    assert!(
        ping["pongs"].as_u64().unwrap() > 0 && ping["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{ping}"
    );
    let page = std::fs::read_to_string(&html).expect("HTML report written");
    assert!(page.contains("Throughput per second") && page.contains("<polyline"));
    let _ = std::fs::remove_file(html);
    gw.shutdown().await;
    stack.shutdown().await;
}
