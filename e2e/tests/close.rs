//! The WebSocket closing handshake (RFC 6455 §5.5.1, §7.1.1) on real sockets, straight to a node
//! and through the gateway, in both directions: a close is answered with a close of the same
//! code, then TCP is closed promptly by the server's side; the gateway passes codes and reasons
//! through and says 1011 only when the node's connection really broke.

use futures_util::{SinkExt, StreamExt};
use rtc_client::{Connection, Endpoints};
use rtc_e2e::stack::{GatewayHandle, Stack};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);
/// Longest a completed closing handshake may leave the TCP connection open. The gateway used to
/// hold it for its 2 s read-back wait.
const PROMPT: Duration = Duration::from_millis(1500);

/// The client closes with `code`; returns the server's answering close (code, reason) and how
/// long after it the TCP connection ended.
async fn client_closes(c: &mut Connection, code: u16) -> ((u16, String), Duration) {
    c.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let answer = loop {
        match tokio::time::timeout(T, c.ws.next())
            .await
            .expect("an answer")
        {
            Some(Ok(Message::Close(f))) => {
                break f.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                })
            }
            Some(Ok(_)) => continue,
            other => panic!("no close frame in answer: {other:?}"),
        }
    };
    let at = Instant::now();
    let end = tokio::time::timeout(T, c.ws.next())
        .await
        .expect("TCP ends");
    assert!(
        matches!(end, None | Some(Err(_))),
        "nothing after the close: {end:?}"
    );
    (answer, at.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_by_the_node_and_the_gateway() {
    let stack = Stack::start(1, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let paths = [
        ("node", stack.endpoints()),
        ("gateway", Endpoints::gateway(&gw.addr)),
    ];
    for (path, ep) in paths {
        for code in [1000u16, 4000] {
            let id = format!("closer-{path}-{code}");
            let mut c = Connection::connect(&ep, &id, None, T).await.unwrap();
            let ((got, _), lingered) = client_closes(&mut c, code).await;
            assert_eq!(
                got, code,
                "{path}: the close is answered with the same code"
            );
            assert!(
                lingered < PROMPT,
                "{path}: TCP stayed open {lingered:?} after the closing handshake"
            );
        }
    }
    let metrics = rtc_client::http::get(&gw.admin, "/metrics")
        .await
        .unwrap()
        .body;
    assert!(
        !metrics.contains("result=\"closed_node_lost\""),
        "a normal close is not a lost node connection: {metrics}"
    );
    gw.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_close_reaches_the_client_unchanged_and_tcp_ends_after_its_answer() {
    let stack = Stack::start(1, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    for (path, ep) in [
        ("node", stack.endpoints()),
        ("gateway", Endpoints::gateway(&gw.addr)),
    ] {
        // A second connection of the same client replaces the first: the server closes the
        // first with 4003.
        let id = format!("replaced-{path}");
        let mut first = Connection::connect(&ep, &id, None, T).await.unwrap();
        let _second = Connection::connect(&ep, &id, None, T).await.unwrap();
        let frame = loop {
            match tokio::time::timeout(T, first.ws.next())
                .await
                .expect("a close")
            {
                Some(Ok(Message::Close(f))) => break f.expect("a close code"),
                Some(Ok(_)) => continue,
                other => panic!("{path}: no close frame: {other:?}"),
            }
        };
        assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (4003, "replaced by a newer connection"),
            "{path}: code and reason pass through unchanged"
        );
        // tungstenite answered the close when it read it; the server then ends TCP.
        let at = Instant::now();
        let end = tokio::time::timeout(T, first.ws.next())
            .await
            .expect("TCP ends");
        assert!(matches!(end, None | Some(Err(_))), "{path}: {end:?}");
        assert!(
            at.elapsed() < PROMPT,
            "{path}: TCP stayed open {:?} after the closing handshake",
            at.elapsed()
        );
    }
    gw.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_violation_is_answered_with_1002_through_the_gateway_too() {
    use tokio::io::AsyncWriteExt;
    let stack = Stack::start(1, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    for (path, ep) in [
        ("node", stack.endpoints()),
        ("gateway", Endpoints::gateway(&gw.addr)),
    ] {
        let mut c = Connection::connect(&ep, &format!("rude-{path}"), None, T)
            .await
            .unwrap();
        // A masked one-byte text frame with RSV1 set: no extension was negotiated.
        let frame = [0xC1u8, 0x81, 1, 2, 3, 4, b'x' ^ 1];
        match c.ws.get_mut() {
            tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.write_all(&frame).await.unwrap(),
            _ => unreachable!("plain TCP"),
        }
        let code = loop {
            match tokio::time::timeout(T, c.ws.next())
                .await
                .expect("an answer")
            {
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("{path}: dropped without a close frame: {other:?}"),
            }
        };
        assert_eq!(code, Some(1002), "{path}");
    }
    gw.shutdown().await;
    stack.shutdown().await;
}
