//! The admin listener: `/healthz` (alive), `/readyz` (fails first on SIGTERM), `/routes` (the
//! live route table as JSON) and `/metrics`.

use crate::Gateway;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct Admin {
    pub gw: Arc<Gateway>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => reply(200, "text/plain", b"ok".to_vec()),
            "/readyz" if self.gw.ready.load(Ordering::Relaxed) => {
                reply(200, "text/plain", b"ready".to_vec())
            }
            "/readyz" => reply(503, "text/plain", b"shutting down".to_vec()),
            "/routes" => reply(
                200,
                "application/json",
                serde_json::to_vec(&*self.gw.routes.snapshot()).unwrap_or_default(),
            ),
            "/metrics" => reply(
                200,
                "text/plain; version=0.0.4",
                self.gw.metrics.render().into_bytes(),
            ),
            _ => reply(
                404,
                "application/json",
                br#"{"error":"not_found","message":"no such path","retryable":false}"#.to_vec(),
            ),
        }
    }
}
