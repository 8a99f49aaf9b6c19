//! The checks a WebSocket upgrade passes before it is accepted, in the order a client can act
//! on them: the node, the query (clientId, token, resumeOffset), the ticket, the slot's state
//! here, and the upgrade headers. Each failure is one documented refusal.

use crate::node::Node;
use rtc_protocol::{query, slot::slot_of, ticket, validate_id, ErrorCode, Refusal};

/// An upgrade that passed every check.
pub struct Admitted {
    pub client_id: String,
    pub slot: u32,
    pub resume: Option<i64>,
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
}

struct Params {
    client_id: String,
    token: String,
    resume: Option<i64>,
}

fn parse_query(q: Option<&str>) -> Result<Params, &'static str> {
    let pairs = query::parse(q.unwrap_or("")).map_err(|e| e.reason())?;
    let get = |k: &str| query::get(&pairs, k).map(str::to_string);
    let client_id = get("clientId").ok_or("clientId is required")?;
    validate_id(&client_id).map_err(|e| e.client_id_reason())?;
    let token = get("token").unwrap_or_default();
    let resume = match get("resumeOffset").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<i64>()
                .ok()
                .filter(|&r| r >= -1)
                .ok_or("resumeOffset must be an integer >= -1")?,
        ),
    };
    Ok(Params {
        client_id,
        token,
        resume,
    })
}

fn header_has(headers: &http::HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
}

/// Checks an upgrade of `node_id` with `query` and `headers` against this node.
pub fn check(
    node: &Node,
    node_id: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> Result<Admitted, Refusal> {
    if node_id != node.id {
        return Err(Refusal::new(
            ErrorCode::WrongNode,
            "no such node here; resolve again",
        ));
    }
    let p = parse_query(query).map_err(|msg| Refusal::new(ErrorCode::BadRequest, msg))?;
    let now = rtc_serverkit::telemetry::now_ms() / 1000;
    let t = ticket::verify(&node.secret, &p.token, &p.client_id, &node.id, now).map_err(
        |e| match e {
            ticket::TicketError::Expired => {
                Refusal::new(ErrorCode::TokenExpired, "the token expired; resolve again")
            }
            _ => Refusal::new(
                ErrorCode::InvalidToken,
                "the token is not valid for this client and node",
            ),
        },
    )?;
    let slot = slot_of(&p.client_id, node.slots);
    node.admit(slot, t.epoch)?;
    let key = match headers.get("sec-websocket-key") {
        Some(k)
            if header_has(headers, http::header::UPGRADE, "websocket")
                && header_has(headers, http::header::CONNECTION, "upgrade") =>
        {
            k
        }
        _ => {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "not a WebSocket upgrade request",
            ))
        }
    };
    if headers.get("sec-websocket-version").map(|v| v.as_bytes()) != Some(b"13") {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            "only WebSocket version 13 is supported",
        )
        .with_status(426));
    }
    Ok(Admitted {
        accept: tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        client_id: p.client_id,
        slot,
        resume: p.resume,
    })
}
