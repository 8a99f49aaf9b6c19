//! `GET /api/v1/resolve?clientId=…`: the client's slot → its owner in the current ring, with a
//! token the owner will accept.

use crate::Balancer;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use rtc_protocol::{connect_path, query, validate_id, ErrorCode, Refusal, Resolved};
use rtc_protocol::{slot::slot_of, ticket};
use rtc_serverkit::http::refusal;
use std::sync::Arc;

pub async fn resolve(
    State(bal): State<Arc<Balancer>>,
    headers: http::HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let pairs = match query::parse(q.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return bad(&bal, e.reason()),
    };
    let Some(client_id) = query::get(&pairs, "clientId") else {
        return bad(&bal, "clientId is required");
    };
    if let Err(e) = validate_id(client_id) {
        return bad(&bal, e.client_id_reason());
    }
    if let Some(jwt) = &bal.jwt {
        let auth = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(r) = jwt.check(auth, client_id) {
            bal.metrics
                .resolves
                .with_label_values(&["unauthorized"])
                .inc();
            return refusal(r);
        }
    }
    let ring = bal.ring();
    let slot = slot_of(client_id, ring.slots());
    let Some(node) = ring.owner(slot).filter(|n| bal.is_live(n)) else {
        bal.metrics.resolves.with_label_values(&["no_nodes"]).inc();
        return refusal(Refusal::new(
            ErrorCode::NoNodes,
            "no live socket node owns this client's slot yet",
        ));
    };
    let expires = rtc_serverkit::telemetry::now_ms() / 1000 + bal.cfg.token_ttl_secs;
    let token = ticket::issue(&bal.secret, client_id, node, ring.epoch, expires);
    bal.metrics.resolves.with_label_values(&["ok"]).inc();
    axum::Json(Resolved {
        node_id: node.to_string(),
        url: connect_path(node),
        token,
        epoch: ring.epoch,
    })
    .into_response()
}

fn bad(bal: &Balancer, msg: &'static str) -> Response {
    bal.metrics
        .resolves
        .with_label_values(&["bad_request"])
        .inc();
    refusal(Refusal::new(ErrorCode::BadRequest, msg))
}
