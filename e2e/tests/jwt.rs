//! JWT identity at resolve: with a key configured, resolve wants `Authorization: Bearer <jwt>`
//! whose signature verifies, `exp` is ahead, `aud` names the deployment and `sub` is the
//! clientId; every refusal is 401 `unauthorized` with its reason. Through the gateway too, and
//! with the Rust SDK. HS256 (JWT_SECRET) and ES256 (a PEM public key made by openssl here).

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rtc_e2e::stack::{GatewayHandle, Stack};
use serde_json::json;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
const AUD: &str = "rtc-test";

fn now() -> u64 {
    rtc_serverkit::telemetry::now_ms() / 1000
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn resolve(addr: &str, client: &str, token: Option<&str>) -> (u16, String) {
    let r = rtc_client::http::request_with(
        http::Method::GET,
        addr,
        None,
        &format!("/api/v1/resolve?clientId={client}"),
        None,
        token,
    )
    .await
    .unwrap();
    (r.status, r.body)
}

fn assert_refused(what: &str, (status, body): (u16, String), reason: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"], "unauthorized", "{what}: {body}");
    assert_eq!(e["retryable"], false, "{what}: {body}");
    assert!(
        e["message"].as_str().unwrap().contains(reason),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_requires_a_valid_bearer_jwt_whose_sub_is_the_client() {
    let kafka = rtc_testkit::kafka::Kafka::from_env(rtc_e2e::stack::SLOTS)
        .await
        .unwrap();
    let stack = Stack::start_full(
        kafka,
        1,
        |b| {
            b.jwt.jwt_secret = Some(SECRET.into());
            b.jwt.jwt_audience = Some(AUD.into());
        },
        |_| {},
    )
    .await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let bal = stack.balancer.to_string();
    let exp = now() + 300;
    let good = hs256(json!({"sub": "alice", "aud": AUD, "exp": exp}), SECRET);

    let (s, body) = resolve(&bal, "alice", Some(&good)).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = resolve(&gw.addr, "alice", Some(&good)).await;
    assert_eq!(s, 200, "the gateway passes the header on: {body}");

    assert_refused(
        "no token",
        resolve(&bal, "alice", None).await,
        "needs Authorization",
    );
    assert_refused(
        "no token, gateway",
        resolve(&gw.addr, "alice", None).await,
        "needs Authorization",
    );
    assert_refused(
        "not a JWT",
        resolve(&bal, "alice", Some("abc.def")).await,
        "not a JWT",
    );
    let forged = hs256(
        json!({"sub": "alice", "aud": AUD, "exp": exp}),
        "another-secret-of-at-least-32-bytes!!",
    );
    assert_refused(
        "forged",
        resolve(&bal, "alice", Some(&forged)).await,
        "signature",
    );
    let expired = hs256(
        json!({"sub": "alice", "aud": AUD, "exp": now() - 120}),
        SECRET,
    );
    assert_refused(
        "expired",
        resolve(&bal, "alice", Some(&expired)).await,
        "expired",
    );
    let wrong_aud = hs256(
        json!({"sub": "alice", "aud": "someone-else", "exp": exp}),
        SECRET,
    );
    assert_refused(
        "audience",
        resolve(&bal, "alice", Some(&wrong_aud)).await,
        "aud",
    );
    assert_refused(
        "sub",
        resolve(&bal, "bob", Some(&good)).await,
        "sub is not the clientId",
    );
    let no_exp = hs256(json!({"sub": "alice", "aud": AUD}), SECRET);
    assert_refused(
        "no exp",
        resolve(&bal, "alice", Some(&no_exp)).await,
        "required claim",
    );
    let none_alg = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
        "eyJzdWIiOiJhbGljZSIsImF1ZCI6InJ0Yy10ZXN0IiwiZXhwIjo0MTAyNDQ0ODAwfQ"
    );
    let (s, _) = resolve(&bal, "alice", Some(&none_alg)).await;
    assert_eq!(s, 401, "alg none is never accepted");

    // The SDK sends the token it is given, and connects.
    let mut ep = stack.endpoints();
    ep.bearer = Some(good.clone());
    let conn =
        rtc_client::Connection::connect(&ep, "alice", None, std::time::Duration::from_secs(20))
            .await
            .expect("the SDK resolves with its bearer token and connects");
    conn.close().await.ok();
    ep.bearer = None;
    let err =
        rtc_client::Connection::connect(&ep, "alice", None, std::time::Duration::from_secs(20))
            .await
            .err()
            .expect("without a token the SDK is refused");
    assert!(!err.retryable(), "401 is not retryable: {err}");

    // The gateway above has no JWT settings: it sees that the balancers require a JWT and keeps
    // proxying resolve (never answering without the check). A gateway with the same settings
    // answers itself, with the same refusals.
    assert!(gw.gw.local.usable().is_none());
    assert_eq!(gw.gw.metrics.resolves.with_label_values(&["ok"]).get(), 0);
    let jgw = GatewayHandle::start(&stack, |c| {
        c.jwt.jwt_secret = Some(SECRET.into());
        c.jwt.jwt_audience = Some(AUD.into());
    })
    .await;
    rtc_testkit::wait_for(
        "the JWT gateway to agree",
        std::time::Duration::from_secs(20),
        || {
            let ok = jgw.gw.local.usable().is_some();
            async move { ok }
        },
    )
    .await
    .unwrap();
    let (s, body) = resolve(&jgw.addr, "alice", Some(&good)).await;
    assert_eq!(s, 200, "{body}");
    assert_refused(
        "expired, answered by the gateway",
        resolve(&jgw.addr, "alice", Some(&expired)).await,
        "expired",
    );
    assert_refused(
        "sub, answered by the gateway",
        resolve(&jgw.addr, "bob", Some(&good)).await,
        "sub is not the clientId",
    );
    let local = |r: &str| jgw.gw.metrics.resolves.with_label_values(&[r]).get();
    assert_eq!((local("ok"), local("unauthorized")), (1, 2));
    jgw.shutdown().await;

    gw.shutdown().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_from_a_pem_public_key() {
    let dir = std::env::temp_dir().join(format!("rtc-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, public) = (dir.join("key.pem"), dir.join("pub.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap()
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl made an EC key pair");
    let kafka = rtc_testkit::kafka::Kafka::from_env(rtc_e2e::stack::SLOTS)
        .await
        .unwrap();
    let public_path = public.clone();
    let stack = Stack::start_full(
        kafka,
        1,
        move |b| {
            b.jwt.jwt_public_key_file = Some(public_path);
            b.jwt.jwt_audience = Some(AUD.into());
            b.jwt.jwt_issuer = Some("https://auth.example".into());
        },
        |_| {},
    )
    .await;
    let bal = stack.balancer.to_string();
    let signing = EncodingKey::from_ec_pem(&std::fs::read(&key).unwrap()).unwrap();
    let token = |claims: serde_json::Value| {
        encode(&Header::new(Algorithm::ES256), &claims, &signing).unwrap()
    };
    let exp = now() + 300;
    let good =
        token(json!({"sub": "carol", "aud": AUD, "exp": exp, "iss": "https://auth.example"}));
    let (s, body) = resolve(&bal, "carol", Some(&good)).await;
    assert_eq!(s, 200, "{body}");
    let wrong_iss =
        token(json!({"sub": "carol", "aud": AUD, "exp": exp, "iss": "https://evil.example"}));
    assert_refused(
        "issuer",
        resolve(&bal, "carol", Some(&wrong_iss)).await,
        "iss",
    );
    // An HS256 token signed with the public key's bytes (the classic confusion attack).
    let confused = hs256(
        json!({"sub": "carol", "aud": AUD, "exp": exp, "iss": "https://auth.example"}),
        &std::fs::read_to_string(&public).unwrap(),
    );
    assert_refused(
        "alg confusion",
        resolve(&bal, "carol", Some(&confused)).await,
        "signature",
    );
    stack.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
