//! The answer to `GET /api/v1/resolve?clientId=…`: the client's slot → its owner in a ring, if
//! that owner is alive and not draining, with a token the owner will accept. One function for
//! the balancers and the gateway (which answers resolve itself when it follows the ring).

use crate::auth::Verifier;
use rtc_protocol::ring::Ring;
use rtc_protocol::{connect_path, query, validate_id, ErrorCode, Refusal, Resolved};
use rtc_protocol::{slot::slot_of, ticket};

/// Why a resolve was refused: the metric label (`bad_request`, `unauthorized`, `no_nodes`) and
/// the documented refusal.
pub type Refused = (&'static str, Refusal);

/// Answers a resolve with `query` (the raw query string) and `authorization` (the header).
pub fn answer(
    query_string: Option<&str>,
    authorization: Option<&str>,
    jwt: Option<&Verifier>,
    ring: &Ring,
    is_live: impl Fn(&str) -> bool,
    secret: &[u8],
    token_ttl_secs: u64,
) -> Result<Resolved, Refused> {
    let bad = |msg: &'static str| ("bad_request", Refusal::new(ErrorCode::BadRequest, msg));
    let pairs = query::parse(query_string.unwrap_or("")).map_err(|e| bad(e.reason()))?;
    let client_id = query::get(&pairs, "clientId").ok_or_else(|| bad("clientId is required"))?;
    validate_id(client_id).map_err(|e| bad(e.client_id_reason()))?;
    if let Some(jwt) = jwt {
        jwt.check(authorization, client_id)
            .map_err(|r| ("unauthorized", r))?;
    }
    let slot = slot_of(client_id, ring.slots());
    let node = ring.owner(slot).filter(|n| is_live(n)).ok_or((
        "no_nodes",
        Refusal::new(
            ErrorCode::NoNodes,
            "no live socket node owns this client's slot yet",
        ),
    ))?;
    let expires = crate::telemetry::now_ms() / 1000 + token_ttl_secs;
    Ok(Resolved {
        node_id: node.to_string(),
        url: connect_path(node),
        token: ticket::issue(secret, client_id, node, ring.epoch, expires),
        epoch: ring.epoch,
    })
}
