//! `GET /api/v1/resolve?clientId=…`: the client's slot → its owner in the current ring, with a
//! token the owner will accept (`rtc_serverkit::resolve`).

use crate::Balancer;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use rtc_serverkit::http::refusal;
use std::sync::Arc;

pub async fn resolve(
    State(bal): State<Arc<Balancer>>,
    headers: http::HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let auth = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let ring = bal.ring();
    match rtc_serverkit::resolve::answer(
        q.as_deref(),
        auth,
        bal.jwt.as_ref(),
        &ring,
        |n| bal.is_live(n),
        &bal.secret,
        bal.cfg.token_ttl_secs,
    ) {
        Ok(r) => {
            bal.metrics.resolves.with_label_values(&["ok"]).inc();
            axum::Json(r).into_response()
        }
        Err((label, r)) => {
            bal.metrics.resolves.with_label_values(&[label]).inc();
            refusal(r)
        }
    }
}
