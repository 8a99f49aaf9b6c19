//! The gateway in front of a real stack: the client path end to end, every refusal, 5,000
//! upgrades with none reset, idle timeouts, and shutdown with close frames.

use futures_util::{SinkExt, StreamExt};
use rtc_client::http::get as http_get;
use rtc_client::{Connection, Endpoints};
use rtc_e2e::stack::{GatewayHandle, Stack};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_path_through_the_gateway_with_resume() {
    let stack = Stack::start(2, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let ep = Endpoints::gateway(&gw.addr);
    let (alice_id, bob_id) = (stack.client_on(0, "alice"), stack.client_on(1, "bob"));
    let mut alice = Connection::connect(&ep, &alice_id, None, T).await.unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    assert_ne!(
        alice.node, bob.node,
        "the two clients live on different nodes"
    );
    alice.send("1", &bob_id, json!("hello")).await.unwrap();
    assert_eq!(
        bob.until(T, |f| f["type"] == "msg").await.unwrap()["data"],
        "hello"
    );
    let resume = bob.offset;
    drop(bob);
    alice.send("2", &bob_id, json!("while away")).await.unwrap();
    alice
        .until(T, |f| f["type"] == "ack" && f["id"] == "2")
        .await
        .unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, resume, T).await.unwrap();
    assert!(bob.recovered);
    assert_eq!(
        bob.until(T, |f| f["type"] == "msg").await.unwrap()["data"],
        "while away"
    );

    let routes: Value =
        serde_json::from_str(&http_get(&gw.admin, "/routes").await.unwrap().body).unwrap();
    assert_eq!(routes.as_object().unwrap().len(), 2, "{routes}");
    let metrics = http_get(&gw.admin, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains("rtc_gateway_upgrades_total{result=\"ok\"}"),
        "{metrics}"
    );
    let page = http_get(&gw.addr, "/").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(r#"from "/sdk/rtc.js""#),
        "the chat page runs on the JavaScript client the gateway serves"
    );
    let sdk = http_get(&gw.addr, "/sdk/rtc.js").await.unwrap();
    assert!(
        sdk.body.contains("/api/v1/resolve"),
        "which resolves through the gateway"
    );
    gw.shutdown().await;
    stack.shutdown().await;
}

async fn ws_status(addr: &str, path: &str) -> (u16, Option<String>, String) {
    let url = format!("ws://{addr}{path}");
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => (101, None, String::new()),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => (
            r.status().as_u16(),
            r.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string()),
            r.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        ),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_documented_statuses_and_codes() {
    let stack = Stack::start(2, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let node0 = stack.nodes[0].id.clone();

    // Resolve errors come from the balancer, through the gateway.
    for (q, code) in [
        ("", "bad_request"),
        ("clientId=", "bad_request"),
        ("clientId=a%01b", "bad_request"),
        ("clientId=a%22b", "quote or a backslash"),
        ("clientId=a%5Cb", "quote or a backslash"),
        // Invalid UTF-8 is refused, never decoded lossily (zz%FF and zz%FE would both become
        // "zz\u{FFFD}" and evict each other).
        ("clientId=zz%FF", "not valid UTF-8"),
        ("clientId=ab%FFcd", "not valid UTF-8"),
        ("clientId=zz%FE", "not valid UTF-8"),
        ("clientId=a&clientId=b", "given twice"),
    ] {
        let r = http_get(&gw.addr, &format!("/api/v1/resolve?{q}"))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(r.body.contains(code), "{}", r.body);
    }
    let long = "x".repeat(257);
    assert_eq!(
        http_get(&gw.addr, &format!("/api/v1/resolve?clientId={long}"))
            .await
            .unwrap()
            .status,
        400
    );

    // Unknown node: 404 from the gateway; it never guesses an address.
    let (s, _, body) = ws_status(&gw.addr, "/ws/nope/connect?clientId=a&token=x").await;
    assert_eq!((s, body.contains("not_found")), (404, true), "{body}");
    // Unknown path.
    let r = http_get(&gw.addr, "/nothing").await.unwrap();
    assert_eq!(r.status, 404);
    // A plain GET of the connect path is not an upgrade.
    let r = http_get(&gw.addr, &format!("/ws/{node0}/connect?clientId=a"))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);

    // Socket-node refusals pass through with their JSON body.
    let alice = stack.client_on(0, "alice");
    let (s, _, body) = ws_status(
        &gw.addr,
        &format!("/ws/{node0}/connect?clientId={alice}&token=v1.1.1.00"),
    )
    .await;
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("invalid_token"));
    let secret = rtc_serverkit::config::DEFAULT_RING_SECRET.as_bytes();
    let expired = rtc_protocol::ticket::issue(secret, &alice, &node0, 1, 1);
    let (s, _, body) = ws_status(
        &gw.addr,
        &format!("/ws/{node0}/connect?clientId={alice}&token={expired}"),
    )
    .await;
    assert_eq!((s, body.contains("token_expired")), (401, true), "{body}");
    let bob_on_1 = stack.client_on(1, "bob");
    let far = u64::MAX / 2;
    let wrong_slot = rtc_protocol::ticket::issue(secret, &bob_on_1, &node0, 0, far);
    let (s, _, body) = ws_status(
        &gw.addr,
        &format!("/ws/{node0}/connect?clientId={bob_on_1}&token={wrong_slot}"),
    )
    .await;
    assert_eq!((s, body.contains("slot_not_owned")), (409, true), "{body}");
    let ok_token = rtc_protocol::ticket::issue(secret, &alice, &node0, 0, far);
    let (s, _, body) = ws_status(
        &gw.addr,
        &format!("/ws/{node0}/connect?clientId={alice}&token={ok_token}&resumeOffset=abc"),
    )
    .await;
    assert_eq!((s, body.contains("resumeOffset")), (400, true), "{body}");
    // The node decodes strictly too: a clientId that is not UTF-8 never reaches the token check.
    let (s, _, body) = ws_status(
        &gw.addr,
        &format!("/ws/{node0}/connect?clientId=zz%FF&token={ok_token}"),
    )
    .await;
    assert_eq!(
        (s, body.contains("clientId is not valid UTF-8")),
        (400, true),
        "{body}"
    );

    // In-protocol errors: bad frames get an error frame, oversized ones close with 1009,
    // binary frames with 1003.
    let ep = Endpoints::gateway(&gw.addr);
    let mut c = Connection::connect(&ep, &alice, None, T).await.unwrap();
    c.send_text("{nope".into()).await.unwrap();
    let e = c.until(T, |f| f["type"] == "error").await.unwrap();
    assert_eq!(e["code"], "bad_request");
    c.send_text(json!({"type":"send","id":"big","to":"bob","data":"x".repeat(70_000)}).to_string())
        .await
        .unwrap();
    let close = c.until(T, |f| f["type"] == "close").await.unwrap();
    assert_eq!(close["code"], 1009, "{close}");
    let mut c = Connection::connect(&ep, &alice, None, T).await.unwrap();
    c.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        c.until(T, |f| f["type"] == "close").await.unwrap()["code"],
        1003
    );

    // A draining node's route is not ready: 503 with Retry-After.
    let r = rtc_client::http::post(&stack.nodes[0].addr.to_string(), "/drain")
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    let routes = gw.gw.routes.clone();
    rtc_testkit::wait_for("the route to turn not ready", T, || {
        let r = routes.lookup(&node0);
        async move { r == rtc_gateway::route::Lookup::NotReady }
    })
    .await
    .unwrap();
    let (s, retry, body) = ws_status(
        &gw.addr,
        &format!("/ws/{node0}/connect?clientId={alice}&token={ok_token}"),
    )
    .await;
    assert_eq!((s, retry.as_deref()), (503, Some("1")), "{body}");
    gw.shutdown().await;
    stack.shutdown().await;
}

/// One upgrade through the gateway: true if the 101 came and the welcome frame followed.
async fn upgrade_once(gw: &str, node: &str, client: &str, token: &str) -> bool {
    let url = format!("ws://{gw}/ws/{node}/connect?clientId={client}&token={token}");
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return false;
    };
    let ok = matches!(
        tokio::time::timeout(T, ws.next()).await,
        Ok(Some(Ok(Message::Text(t)))) if t.contains("\"welcome\"")
    );
    let _ = ws.close(None).await;
    ok
}

/// 5,000 upgrades, half one after another and half 50 at a time: none may fail. (Pingora's own
/// upgrade path resets 0.3–0.7 % of them; see tunnel.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_upgrades_none_reset() {
    let stack = Stack::start(1, |c| c.max_connections = 10_000).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let node = stack.nodes[0].id.clone();
    let secret = rtc_serverkit::config::DEFAULT_RING_SECRET.as_bytes();
    let far = u64::MAX / 2;
    let token = |c: &str| rtc_protocol::ticket::issue(secret, c, &node, 0, far);
    let mut failed = 0;
    for i in 0..2_500 {
        let c = format!("seq-{i}");
        if !upgrade_once(&gw.addr, &node, &c, &token(&c)).await {
            failed += 1;
        }
    }
    let mut set = tokio::task::JoinSet::new();
    let mut concurrent_failed = 0;
    for i in 0..2_500 {
        let (addr, node, c) = (gw.addr.clone(), node.clone(), format!("par-{i}"));
        let t = token(&c);
        set.spawn(async move { upgrade_once(&addr, &node, &c, &t).await });
        if set.len() >= 50 {
            concurrent_failed += usize::from(!set.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(r) = set.join_next().await {
        concurrent_failed += usize::from(!r.unwrap());
    }
    eprintln!("upgrades: 5000 attempted, sequential failed {failed}, concurrent failed {concurrent_failed}");
    assert_eq!((failed, concurrent_failed), (0, 0));
    gw.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_is_ours_not_pingoras() {
    // A short timeout proves the setting governs idle WebSockets (Pingora's default is 60 s).
    let stack = Stack::start(1, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |c| c.ws_idle_timeout_secs = 2).await;
    let ep = Endpoints::gateway(&gw.addr);
    let mut c = Connection::connect(&ep, &stack.client_on(0, "idle"), None, T)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let end = c
        .next(Duration::from_secs(15))
        .await
        .unwrap()
        .expect("a close frame");
    let waited = started.elapsed();
    assert_eq!(
        (end["code"].as_u64(), end["reason"].as_str()),
        (Some(1001), Some("idle timeout")),
        "{end}"
    );
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
    gw.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_readiness_and_sends_close_frames() {
    let stack = Stack::start(1, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |c| c.shutdown_delay_secs = 1).await;
    let ep = Endpoints::gateway(&gw.addr);
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(
            Connection::connect(&ep, &stack.client_on(0, &format!("c{i}")), None, T)
                .await
                .unwrap(),
        );
    }
    gw.trigger_shutdown();
    let admin = gw.admin.clone();
    rtc_testkit::wait_for("readiness to fail", T, || {
        let admin = admin.clone();
        async move {
            http_get(&admin, "/readyz")
                .await
                .is_ok_and(|r| r.status == 503)
        }
    })
    .await
    .unwrap();
    for c in clients.iter_mut() {
        let f = c.until(T, |f| f["type"] == "close").await.unwrap();
        assert_eq!(f["code"], 1001, "a close frame, not a reset: {f}");
    }
    gw.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_connection_cap_refuses_with_503() {
    let stack = Stack::start(1, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |c| c.max_connections = 2).await;
    let ep = Endpoints::gateway(&gw.addr);
    let _a = Connection::connect(&ep, "cap-a", None, T).await.unwrap();
    let _b = Connection::connect(&ep, "cap-b", None, T).await.unwrap();
    rtc_e2e::expect_refusal(&ep, "cap-c", 503, Some("5"), "too_many_connections").await;
    drop(_a);
    // The slot frees when a tunnel ends.
    rtc_testkit::wait_for("a freed slot", T, || {
        let ep = ep.clone();
        async move { Connection::connect_once(&ep, "cap-d", None).await.is_ok() }
    })
    .await
    .unwrap();
    gw.shutdown().await;
    stack.shutdown().await;
}

fn resolves(gw: &GatewayHandle, result: &str) -> u64 {
    gw.gw.metrics.resolves.with_label_values(&[result]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_resolve_itself_only_when_it_agrees_with_the_balancers() {
    let stack = Stack::start(2, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    // A second gateway with another RING_SECRET: its tokens would be refused, so it must keep
    // proxying.
    let odd = GatewayHandle::start(&stack, |c| c.ring_secret = "another-ring-secret".into()).await;
    rtc_testkit::wait_for("the gateway to follow the ring and agree", T, || {
        let ok = gw.gw.local.usable().is_some();
        async move { ok }
    })
    .await
    .unwrap();
    let ep = Endpoints::gateway(&gw.addr);
    let before = resolves(&gw, "ok");
    let (alice_id, bob_id) = (stack.client_on(0, "alice"), stack.client_on(1, "bob"));
    let mut alice = Connection::connect(&ep, &alice_id, None, T).await.unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    assert!(resolves(&gw, "ok") >= before + 2, "answered in the gateway");
    assert_eq!(alice.node, stack.nodes[0].id, "the ring's owner");
    alice.send("1", &bob_id, json!("hi")).await.unwrap();
    assert_eq!(
        bob.until(T, |f| f["type"] == "msg").await.unwrap()["data"],
        "hi"
    );
    // The same refusals as the balancers'.
    let r = http_get(&gw.addr, "/api/v1/resolve?clientId=")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(resolves(&gw, "bad_request"), 1);

    // The disagreeing gateway never answers itself, and still works (proxied).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(odd.gw.local.usable().is_none());
    let ep = Endpoints::gateway(&odd.addr);
    let c = Connection::connect(&ep, &stack.client_on(1, "carol"), None, T)
        .await
        .unwrap();
    assert_eq!(c.node, stack.nodes[1].id);
    assert!(resolves(&odd, "proxied") >= 1);
    assert_eq!(resolves(&odd, "ok"), 0);
    odd.shutdown().await;
    gw.shutdown().await;
    stack.shutdown().await;
}

/// One HTTP/1.1 request on an open keep-alive connection; (status, headers, body).
async fn keepalive_request(
    tcp: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    head: &str,
    body: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "{head}\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut headers = String::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        tcp.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        headers.push_str(&line);
    }
    let status: u16 = headers.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await.unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_connection_that_resolved_is_served_after_its_first_request() {
    let stack = Stack::start(2, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    rtc_testkit::wait_for("the gateway to agree", T, || {
        let ok = gw.gw.local.usable().is_some();
        async move { ok }
    })
    .await
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(&gw.addr).await.unwrap();
    let mut tcp = tokio::io::BufReader::new(tcp);
    // The first resolve goes through Pingora, the next ones through the taken-over connection:
    // the same answers.
    let mut nodes = Vec::new();
    for client in ["ka-1", "ka-2", "ka-3"] {
        let (s, _, body) = keepalive_request(
            &mut tcp,
            &format!("GET /api/v1/resolve?clientId={client} HTTP/1.1"),
            "",
        )
        .await;
        assert_eq!(s, 200, "{body}");
        let r: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(r["nodeId"].as_str(), stack.owner_of(client).as_deref());
        nodes.push(r["nodeId"].as_str().unwrap().to_string());
    }
    assert_eq!(resolves(&gw, "ok"), 3);
    let (s, _, body) =
        keepalive_request(&mut tcp, "GET /api/v1/resolve?clientId= HTTP/1.1", "").await;
    assert_eq!(s, 400, "{body}");
    // The other routes still answer on it.
    let (s, _, body) = keepalive_request(&mut tcp, "GET /sdk/rtc.js HTTP/1.1", "").await;
    assert_eq!(s, 200);
    assert!(body.contains("export class RtcClient"));
    let (s, _, body) = keepalive_request(
        &mut tcp,
        "POST /api/v1/publish HTTP/1.1\r\nContent-Type: application/json",
        r#"{"to":"ka-1","id":"1","data":1}"#,
    )
    .await;
    assert_eq!(s, 401, "forwarded to a balancer (no API key): {body}");
    // A WebSocket upgrade is sent to a new connection.
    let (s, headers, body) = keepalive_request(
        &mut tcp,
        &format!(
            "GET /ws/{}/connect?clientId=ka-1&token=x HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13",
            nodes[0]
        ),
        "",
    )
    .await;
    assert_eq!(s, 503, "{body}");
    assert!(
        headers.to_ascii_lowercase().contains("connection: close"),
        "{headers}"
    );
    gw.shutdown().await;
    stack.shutdown().await;
}
