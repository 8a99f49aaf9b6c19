//! A client that stops reading while 3,000 × 1 KiB messages are sent to it: the node closes it
//! with 4001 once SEND_QUEUE_BYTES wait for it (memory stays bounded), counts that close once,
//! and when the client reconnects with its resume offset it gets all 3,000 — the in-memory
//! history keeps 1,000, the rest is read back from Kafka — in order and none twice.

use futures_util::StreamExt;
use rtc_client::Connection;
use rtc_e2e::stack::Stack;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(30);
const N: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_then_resumes_everything_from_kafka() {
    let stack = Stack::start(1, |c| {
        c.rate_limit_per_sec = 100_000;
        c.rate_limit_burst = 100_000;
        c.send_queue_bytes = 256 * 1024;
        c.history_max_messages = 1000;
    })
    .await;
    let ep = stack.endpoints();
    let (alice_id, bob_id) = (stack.client_on(0, "alice"), stack.client_on(0, "bob"));

    // bob connects with a tiny receive buffer and then stops reading.
    let resolved = rtc_client::http::resolve(&ep, &bob_id).await.unwrap();
    let addr = (ep.ws)(&resolved.node_id).unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr.parse().unwrap()).await.unwrap();
    let url = format!(
        "ws://{addr}{}?clientId={bob_id}&token={}",
        resolved.url, resolved.token
    );
    let (mut bob, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let welcome = bob.next().await.unwrap().unwrap();
    let welcome: serde_json::Value = serde_json::from_str(welcome.to_text().unwrap()).unwrap();
    let mut resume = welcome["offset"].as_i64().unwrap();

    let mut alice = Connection::connect(&ep, &alice_id, None, T).await.unwrap();
    let pad = "x".repeat(1024);
    for i in 0..N {
        alice
            .send(&format!("m{i}"), &bob_id, json!({"i": i, "pad": pad}))
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < N {
        let f = alice.next(T).await.unwrap().expect("alice stays connected");
        match f["type"].as_str() {
            Some("ack") => acked += 1,
            Some("error") => panic!("a send was refused: {f}"),
            _ => {}
        }
    }

    // Now bob reads: what the kernel buffers held, then the 4001 close.
    let mut got: Vec<usize> = Vec::new();
    let close = loop {
        match tokio::time::timeout(T, bob.next())
            .await
            .expect("bob's close")
        {
            Some(Ok(Message::Text(t))) => {
                let f: serde_json::Value = serde_json::from_str(&t).unwrap();
                if f["type"] == "msg" {
                    got.push(f["data"]["i"].as_u64().unwrap() as usize);
                    resume = f["offset"].as_i64().unwrap();
                }
            }
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close, Some(4001), "closed as a slow consumer");
    let before = got.len();
    assert!(
        before < N,
        "the queue bound closed bob before everything was sent to him"
    );
    let metrics = stack.nodes[0].node.metrics.render();
    assert!(
        metrics.contains("rtc_socket_closed_total{code=\"4001\",node=")
            && metrics.lines().any(
                |l| l.starts_with("rtc_socket_closed_total{code=\"4001\"") && l.ends_with(" 1")
            ),
        "one slow-consumer close counted once: {metrics}"
    );

    let mut bob = Connection::connect(&ep, &bob_id, Some(resume), T)
        .await
        .unwrap();
    assert!(bob.recovered, "the resume is complete (Kafka read back)");
    while got.len() < N {
        let f = bob.next(T).await.unwrap().expect("bob stays connected");
        if f["type"] == "msg" {
            got.push(f["data"]["i"].as_u64().unwrap() as usize);
        }
    }
    println!(
        "slow consumer: {before} delivered before the 4001 close, {} after the resume (history 1,000; the rest read back)",
        N - before
    );
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "all of them, in order, none twice"
    );
    // Nothing more (no duplicate) arrives.
    let extra = bob.next(Duration::from_millis(500)).await;
    assert!(
        !matches!(&extra, Ok(Some(f)) if f["type"] == "msg"),
        "{extra:?}"
    );
    stack.shutdown().await;
}
