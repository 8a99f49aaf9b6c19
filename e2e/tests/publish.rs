//! The publish API on real Kafka, through the gateway: a backend with an API key sends to a
//! client and to a room, one message or a batch; every answer carries the stored offset, the
//! recipients get the messages (a retried id once), and refusals say why without storing
//! anything.

use rtc_client::http::{publish, send};
use rtc_client::Connection;
use rtc_e2e::stack::{GatewayHandle, Stack};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
const KEY: &str = "billing-key-0123456789";

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"))
}

async fn refused(gw: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let r = send(
        http::Method::POST,
        gw,
        "/api/v1/publish",
        None,
        &headers,
        Some(body),
    )
    .await
    .unwrap();
    (r.status, parse(&r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_publish_to_clients_and_rooms_with_stored_offsets() {
    let kafka = rtc_testkit::kafka::Kafka::from_env(rtc_e2e::stack::SLOTS)
        .await
        .unwrap();
    let stack = Stack::start_full(
        kafka,
        2,
        |b| b.publish_api_keys = Some(format!("billing:{KEY}")),
        |_| {},
    )
    .await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let ep = stack.endpoints();
    let mut bob = Connection::connect(&ep, "bob", None, T).await.unwrap();
    bob.send_text(json!({"type":"join","room":"alerts"}).to_string())
        .await
        .unwrap();
    bob.until(T, |f| f["type"] == "joined").await.unwrap();

    // One direct message: answered with its offset once Kafka has it; from = the key's name.
    let r = publish(
        &gw.addr,
        KEY,
        r#"{"to":"bob","id":"inv-1","data":{"total":42}}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let stored = parse(&r.body);
    assert_eq!(stored["id"], "inv-1");
    let m = bob.until(T, |f| f["type"] == "msg").await.unwrap();
    assert_eq!(
        (&m["from"], &m["id"], &m["offset"], &m["data"]),
        (
            &json!("billing"),
            &json!("inv-1"),
            &stored["offset"],
            &json!({"total":42})
        )
    );

    // A batch: two direct (one from a named sender), one to the room.
    let batch = json!({"messages":[
        {"to":"bob","id":"inv-2","data":2},
        {"room":"alerts","id":"a-1","data":"room"},
        {"to":"bob","id":"inv-3","from":"ledger","data":3},
    ]});
    let r = publish(&gw.addr, KEY, &batch.to_string()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let results = parse(&r.body)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert!(
        results.iter().all(|x| x["offset"].as_i64().is_some()),
        "{results:?}"
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = bob.until(T, |f| f["type"] == "msg").await.unwrap();
        got.push((
            m["from"].as_str().unwrap().to_string(),
            m["id"].as_str().unwrap().to_string(),
            m.get("room").is_some(),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("billing".to_string(), "a-1".to_string(), true),
            ("billing".to_string(), "inv-2".to_string(), false),
            ("ledger".to_string(), "inv-3".to_string(), false),
        ]
    );

    // A retry with the same id is stored again but delivered once.
    let r = publish(
        &gw.addr,
        KEY,
        r#"{"to":"bob","id":"inv-1","data":{"total":42}}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    publish(&gw.addr, KEY, r#"{"to":"bob","id":"inv-4","data":4}"#)
        .await
        .unwrap();
    let m = bob.until(T, |f| f["type"] == "msg").await.unwrap();
    assert_eq!(
        m["id"], "inv-4",
        "the retried inv-1 is not delivered twice: {m}"
    );

    // Refusals: nothing is stored.
    let (s, e) = refused(&gw.addr, None, r#"{"to":"bob","id":"x","data":1}"#).await;
    assert_eq!((s, e["error"].as_str()), (401, Some("unauthorized")), "{e}");
    let (s, e) = refused(
        &gw.addr,
        Some("wrong-key-0123456789"),
        r#"{"to":"bob","id":"x","data":1}"#,
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (401, Some("unauthorized")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("not one of"), "{e}");
    let (s, e) = refused(&gw.addr, Some(KEY), "not json").await;
    assert_eq!((s, e["error"].as_str()), (400, Some("bad_request")), "{e}");
    let bad_batch =
        json!({"messages":[{"to":"bob","id":"ok","data":1},{"to":"","id":"y","data":1}]});
    let (s, e) = refused(&gw.addr, Some(KEY), &bad_batch.to_string()).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("message 1: `to` is empty"),
        "{e}"
    );
    match bob
        .until(Duration::from_millis(800), |f| f["type"] == "msg")
        .await
    {
        Err(_) => {}
        Ok(m) => panic!("nothing of a refused batch is stored: {m}"),
    }
    gw.shutdown().await;
    stack.shutdown().await;
}
