//! Connection tokens: an HMAC-SHA256 (RING_SECRET) over clientId, nodeId, epoch and expiry, issued
//! by resolve and checked by the socket node before the WebSocket upgrade. Pure logic.
//!
//! Wire form: `v1.<epoch>.<expiry unix seconds>.<hex of the first 16 MAC bytes>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const MAC_BYTES: usize = 16;

/// Why a token was refused. Each maps to a documented HTTP status (docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not match this clientId and node")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

impl TicketError {
    /// Stable code sent to clients and used as a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            TicketError::Malformed | TicketError::BadSignature => "invalid_token",
            TicketError::Expired => "token_expired",
        }
    }
}

/// What a valid token proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub epoch: u64,
    pub expires_at: u64,
}

fn mac(secret: &[u8], client_id: &str, node_id: &str, epoch: u64, expires_at: u64) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    // Lengths first, so no two (clientId, nodeId) pairs share an input.
    for part in [client_id.as_bytes(), node_id.as_bytes()] {
        m.update(&(part.len() as u32).to_be_bytes());
        m.update(part);
    }
    m.update(&epoch.to_be_bytes());
    m.update(&expires_at.to_be_bytes());
    m
}

/// Issues a token for `client_id` on `node_id`.
pub fn issue(secret: &[u8], client_id: &str, node_id: &str, epoch: u64, expires_at: u64) -> String {
    let tag = mac(secret, client_id, node_id, epoch, expires_at)
        .finalize()
        .into_bytes();
    format!("v1.{epoch}.{expires_at}.{}", hex::encode(&tag[..MAC_BYTES]))
}

/// Checks `token` for `client_id` on `node_id` at unix time `now`.
pub fn verify(
    secret: &[u8],
    token: &str,
    client_id: &str,
    node_id: &str,
    now: u64,
) -> Result<Ticket, TicketError> {
    let mut parts = token.split('.');
    let (Some("v1"), Some(epoch), Some(exp), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TicketError::Malformed);
    };
    let epoch: u64 = epoch.parse().map_err(|_| TicketError::Malformed)?;
    let expires_at: u64 = exp.parse().map_err(|_| TicketError::Malformed)?;
    let tag = hex::decode(tag).map_err(|_| TicketError::Malformed)?;
    if tag.len() != MAC_BYTES {
        return Err(TicketError::Malformed);
    }
    mac(secret, client_id, node_id, epoch, expires_at)
        .verify_truncated_left(&tag)
        .map_err(|_| TicketError::BadSignature)?;
    if now >= expires_at {
        return Err(TicketError::Expired);
    }
    Ok(Ticket { epoch, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: &[u8] = b"secret";

    #[test]
    fn roundtrip_and_refusals() {
        let t = issue(K, "alice", "node-1", 42, 1000);
        assert_eq!(
            verify(K, &t, "alice", "node-1", 999),
            Ok(Ticket {
                epoch: 42,
                expires_at: 1000
            })
        );
        assert_eq!(
            verify(K, &t, "alice", "node-1", 1000),
            Err(TicketError::Expired)
        );
        assert_eq!(
            verify(K, &t, "bob", "node-1", 1),
            Err(TicketError::BadSignature)
        );
        assert_eq!(
            verify(K, &t, "alice", "node-2", 1),
            Err(TicketError::BadSignature)
        );
        assert_eq!(
            verify(b"other", &t, "alice", "node-1", 1),
            Err(TicketError::BadSignature)
        );
        let forged = t.replace("v1.42.1000", "v1.42.9999");
        assert_eq!(
            verify(K, &forged, "alice", "node-1", 1),
            Err(TicketError::BadSignature)
        );
        for bad in [
            "",
            "v1",
            "v2.1.2.00",
            "v1.x.2.00",
            "v1.1.2.zz",
            "v1.1.2.00",
            "v1.1.2.00.00",
        ] {
            assert_eq!(
                verify(K, bad, "alice", "node-1", 1),
                Err(TicketError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn fields_are_not_ambiguous() {
        // "ab"+"c" and "a"+"bc" must not share a token.
        let t = issue(K, "ab", "c", 1, 10);
        assert_eq!(verify(K, &t, "a", "bc", 1), Err(TicketError::BadSignature));
    }

    proptest! {
        #[test]
        fn any_issued_token_verifies(c in "\\PC{1,40}", n in "[a-z0-9-]{1,30}", e in any::<u64>(), exp in 1u64..u64::MAX) {
            let t = issue(K, &c, &n, e, exp);
            prop_assert_eq!(verify(K, &t, &c, &n, exp - 1), Ok(Ticket { epoch: e, expires_at: exp }));
        }
    }
}
