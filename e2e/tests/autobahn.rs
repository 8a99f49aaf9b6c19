//! Autobahn|Testsuite (`wstest -m fuzzingclient`) through the gateway, to a plain echo upstream
//! registered the way socket nodes are (a heartbeat in Redis), and straight to that echo as the
//! baseline. Fails on any FAILED behaviour or close behaviour; prints the summary. Compression
//! cases (12.*, 13.*) are excluded: neither side negotiates permessage-deflate.
//!
//! wstest comes from `testkit/tools/autobahn/install.sh` (scripts/test.sh runs it), or
//! AUTOBAHN_WSTEST.

use futures_util::{SinkExt, StreamExt};
use rtc_e2e::stack::{GatewayHandle, Stack};
use rtc_protocol::Heartbeat;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

fn wstest() -> PathBuf {
    if let Some(p) = std::env::var_os("AUTOBAHN_WSTEST") {
        return p.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("rtc/autobahn-25.10.1/venv27/bin/wstest")
}

/// A WebSocket echo server on `listener`: every text and binary message comes back as it was; a
/// client that breaks the protocol gets the close a socket node sends it (1002, or 1007 for
/// invalid UTF-8) before it is dropped.
async fn echo(listener: tokio::net::TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            use tokio_tungstenite::tungstenite::{protocol::frame::coding::CloseCode, Error};
            loop {
                let code = match ws.next().await {
                    // Pings and closes are answered by tungstenite itself.
                    Some(Ok(m)) => {
                        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Err(Error::Protocol(_))) => CloseCode::Protocol,
                    Some(Err(Error::Utf8(_))) => CloseCode::Invalid,
                    _ => return,
                };
                let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code,
                    reason: "".into(),
                };
                let _ = ws.close(Some(frame)).await;
                // Read what the client still sends until it closes: closing a socket with
                // unread bytes sends a reset, which can overtake the close frame.
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let tcp = ws.get_mut();
                let _ = tcp.shutdown().await;
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                return;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_fuzzingclient_through_the_gateway() {
    let wstest = wstest();
    assert!(
        wstest.is_file(),
        "{} is missing: run testkit/tools/autobahn/install.sh (or set AUTOBAHN_WSTEST)",
        wstest.display()
    );
    let stack = Stack::start(1, |_| {}).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(echo(listener));
    // Registered like a socket node: the gateway learns it from its heartbeat.
    let mut redis = rtc_serverkit::store::connect(&stack.redis.url)
        .await
        .unwrap();
    let hb = Heartbeat {
        node_id: "echo".into(),
        addr: echo_addr.clone(),
        ready: true,
        ts_ms: rtc_serverkit::telemetry::now_ms(),
        ..Heartbeat::default()
    };
    rtc_serverkit::store::put_heartbeat(&mut redis, &hb, 600)
        .await
        .unwrap();
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let routes = gw.gw.routes.clone();
    rtc_testkit::wait_for(
        "the gateway to route to the echo",
        Duration::from_secs(20),
        || {
            let ready = matches!(routes.lookup("echo"), rtc_gateway::route::Lookup::Ready(_));
            async move { ready }
        },
    )
    .await
    .unwrap();

    let dir = std::env::temp_dir().join(format!("rtc-autobahn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = serde_json::json!({
        "outdir": dir.join("reports").display().to_string(),
        "servers": [
            {"agent": "gateway", "url": format!("ws://{}/ws/echo/connect", gw.addr)},
            {"agent": "echo-direct", "url": format!("ws://{echo_addr}")},
        ],
        "cases": ["*"],
        "exclude-cases": ["12.*", "13.*"],
        "exclude-agent-cases": {},
    });
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(&wstest)
            .args(["-m", "fuzzingclient", "-s"])
            .arg(&spec_path)
            .current_dir(&dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("wstest finishes within 10 minutes")
    .expect("wstest runs");
    // wstest exits 0 even when it could not connect: the report is what counts.
    let index = dir.join("reports/index.json");
    let text = std::fs::read_to_string(&index).unwrap_or_else(|e| {
        panic!(
            "no {} ({e}); wstest said: {}{}",
            index.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let report: BTreeMap<String, BTreeMap<String, serde_json::Value>> =
        serde_json::from_str(&text).unwrap();
    let mut failed = Vec::new();
    for agent in ["gateway", "echo-direct"] {
        let cases = report
            .get(agent)
            .unwrap_or_else(|| panic!("no results for {agent}"));
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut closes: BTreeMap<String, usize> = BTreeMap::new();
        for (case, r) in cases {
            let behavior = r["behavior"].as_str().unwrap_or("?").to_string();
            let close = r["behaviorClose"].as_str().unwrap_or("?").to_string();
            // Close behaviour must be OK too (INFORMATIONAL cases have no verdict).
            let close_ok = matches!(close.as_str(), "OK" | "INFORMATIONAL");
            if behavior == "FAILED" || !close_ok {
                failed.push(format!("{agent} {case}: {behavior}, close {close}"));
            }
            *counts.entry(behavior).or_default() += 1;
            *closes.entry(close).or_default() += 1;
        }
        println!(
            "autobahn {agent}: {} cases, behaviour {counts:?}, close behaviour {closes:?}",
            cases.len()
        );
    }
    assert!(
        cases_ran(&report) > 200,
        "too few cases ran: {}",
        cases_ran(&report)
    );
    assert!(
        failed.is_empty(),
        "cases not OK (reports in {}):\n{}",
        dir.display(),
        failed.join("\n")
    );
    // The reports stay only when something failed (above); a passing run cleans up.
    let _ = std::fs::remove_dir_all(&dir);
    gw.shutdown().await;
    stack.shutdown().await;
}

fn cases_ran(report: &BTreeMap<String, BTreeMap<String, serde_json::Value>>) -> usize {
    report.get("gateway").map_or(0, |c| c.len())
}
