//! `wss://` on the gateway: a TLS listener with the certificate from files, a WebSocket through
//! it to a socket node, and a renewed certificate picked up without a restart (open connections
//! keep working; a broken file is refused and the last good certificate stays).

use futures_util::{SinkExt, StreamExt};
use rtc_e2e::stack::{GatewayHandle, Stack};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

fn openssl(args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl {args:?}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A test CA (cert, key), made by openssl.
fn make_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=rtc-test-ca",
        "-keyout",
        path(&key),
        "-out",
        path(&cert),
    ]);
    (cert, key)
}

/// A server certificate for 127.0.0.1 and localhost signed by the CA: (cert, key) PEM files.
fn make_cert(dir: &Path, ca: &(PathBuf, PathBuf), name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let (csr, ext) = (
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        path(&key),
        "-out",
        path(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&csr),
        "-CA",
        path(&ca.0),
        "-CAkey",
        path(&ca.1),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        path(&ext),
        "-out",
        path(&cert),
    ]);
    (cert, key)
}

/// Opens a WebSocket over TLS to `addr` trusting only `ca`; returns it and the leaf the server
/// presented.
async fn wss(addr: &str, ca: &Path, path: &str) -> anyhow::Result<(Wss, Vec<u8>)> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let url = format!("wss://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await?;
    Ok((ws, leaf))
}

async fn next_text(ws: &mut Wss) -> serde_json::Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn connect_path(stack: &Stack, client: &str) -> String {
    let r = rtc_client::http::resolve(&stack.endpoints(), client)
        .await
        .unwrap();
    format!("{}?clientId={client}&token={}", r.url, r.token)
}

fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_the_gateway_with_a_certificate_renewed_in_place() {
    let dir = std::env::temp_dir().join(format!("rtc-wss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = make_ca(&dir);
    let (a_cert, a_key) = make_cert(&dir, &ca, "first");
    let (b_cert, b_key) = make_cert(&dir, &ca, "second");
    let (live_cert, live_key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::copy(&a_cert, &live_cert).unwrap();
    std::fs::copy(&a_key, &live_key).unwrap();

    let stack = Stack::start(1, |_| {}).await;
    let tls_addr = format!("127.0.0.1:{}", rtc_testkit::free_port());
    let gw = GatewayHandle::start(&stack, |c| {
        c.tls_listen_addr = Some(tls_addr.clone());
        c.tls_cert_file = Some(live_cert.clone());
        c.tls_key_file = Some(live_key.clone());
        c.tls_reload_secs = 1;
    })
    .await;

    // A client on wss:// gets its welcome and answers, and the first certificate was presented.
    let (mut ws, leaf) = wss(&tls_addr, &ca.0, &connect_path(&stack, "tls-alice").await)
        .await
        .unwrap();
    assert_eq!(leaf, der(&a_cert));
    assert_eq!(next_text(&mut ws).await["type"], "welcome");
    ws.send(Message::Text(r#"{"type":"ping","id":"p1"}"#.into()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await["id"], "p1");

    // The Rust SDK over TLS: resolve over https and its WebSocket over wss, trusting the test
    // CA; a direct message between two such clients.
    let tls = rtc_client::Tls::with_ca_pem(&std::fs::read(&ca.0).unwrap()).unwrap();
    let ep = rtc_client::Endpoints::gateway_tls(&tls_addr, tls);
    let t = Duration::from_secs(20);
    let mut dave = rtc_client::Connection::connect(&ep, "tls-dave", None, t)
        .await
        .unwrap();
    let mut erin = rtc_client::Connection::connect(&ep, "tls-erin", None, t)
        .await
        .unwrap();
    assert!(matches!(
        dave.ws.get_ref(),
        tokio_tungstenite::MaybeTlsStream::Rustls(_)
    ));
    dave.send("s1", "tls-erin", "over tls").await.unwrap();
    let ack = dave.until(t, |f| f["id"] == "s1").await.unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
    let msg = erin.until(t, |f| f["type"] == "msg").await.unwrap();
    assert_eq!(
        (msg["from"].as_str(), msg["data"].as_str()),
        (Some("tls-dave"), Some("over tls"))
    );
    // A client that trusts another CA stops at the handshake with a TLS error, not retried.
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let other_ca = make_ca(&elsewhere);
    let distrust = rtc_client::Tls::with_ca_pem(&std::fs::read(&other_ca.0).unwrap()).unwrap();
    let err = rtc_client::Connection::connect(
        &rtc_client::Endpoints::gateway_tls(&tls_addr, distrust),
        "tls-frank",
        None,
        t,
    )
    .await
    .err()
    .expect("an untrusted certificate is refused");
    assert!(matches!(err, rtc_client::Error::Tls(_)), "{err}");
    assert!(!err.retryable());

    // Renewal: the files are replaced (as a Secret update does, by rename).
    let tmp = dir.join("tmp");
    std::fs::copy(&b_key, &tmp).unwrap();
    std::fs::rename(&tmp, &live_key).unwrap();
    std::fs::copy(&b_cert, &tmp).unwrap();
    std::fs::rename(&tmp, &live_cert).unwrap();
    let renewed = Instant::now();
    // New connections get the new certificate once it is loaded.
    let mut ws2 = loop {
        let (ws2, leaf) = wss(&tls_addr, &ca.0, &connect_path(&stack, "tls-bob").await)
            .await
            .unwrap();
        if leaf == der(&b_cert) {
            break ws2;
        }
        assert_eq!(leaf, der(&a_cert));
        assert!(renewed.elapsed() < Duration::from_secs(15), "never renewed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(next_text(&mut ws2).await["type"], "welcome");
    let took = renewed.elapsed();
    // The connection made before the renewal still works.
    ws.send(Message::Text(r#"{"type":"ping","id":"p2"}"#.into()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await["id"], "p2");

    // A broken file is refused; the renewed certificate stays in use.
    std::fs::write(&live_cert, "not a certificate").unwrap();
    let failed = || {
        gw.gw
            .metrics
            .tls_reloads
            .with_label_values(&["failed"])
            .get()
    };
    rtc_testkit::wait_for(
        "the broken file to be refused",
        Duration::from_secs(10),
        || {
            let n = failed();
            async move { n > 0 }
        },
    )
    .await
    .unwrap();
    let (_ws3, leaf) = wss(&tls_addr, &ca.0, &connect_path(&stack, "tls-carol").await)
        .await
        .unwrap();
    assert_eq!(leaf, der(&b_cert));
    println!("wss: renewed certificate presented {took:?} after the files changed");
    gw.shutdown().await;
    stack.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
