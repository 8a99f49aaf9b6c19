//! The JavaScript client (clients/js) under Node's test runner against a real stack (gateway,
//! balancer, two socket nodes, Redis, Kafka): send/ack, rooms with history and presence, resume
//! after a dropped connection, the publish API.

use rtc_e2e::stack::{GatewayHandle, Stack};
use std::process::Command;

const KEY: &str = "js-test-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_client_passes_its_tests_against_the_stack() {
    let kafka = rtc_testkit::kafka::Kafka::from_env(rtc_e2e::stack::SLOTS)
        .await
        .unwrap();
    let stack = Stack::start_full(
        kafka,
        2,
        |b| b.publish_api_keys = Some(format!("js:{KEY}")),
        |_| {},
    )
    .await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let version = Command::new("node")
        .arg("--version")
        .output()
        .expect("node is installed");
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "the JavaScript client needs Node.js >= 20, found {version}"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let url = format!("http://{}", gw.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--experimental-websocket", "--test", "test/"])
            .current_dir(dir)
            .env("RTC_URL", url)
            .env("RTC_PUBLISH_KEY", KEY)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed");
    assert!(report.contains("# pass 4"), "all four tests ran and passed");
    gw.shutdown().await;
    stack.shutdown().await;
}
