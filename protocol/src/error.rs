//! Error codes (in `error` frames and HTTP refusals) with the HTTP status and Retry-After each one
//! carries, the refusal body, and the WebSocket close codes. One table: the socket node, the
//! balancer and the gateway all refuse through [`Refusal`], so a code always means one status.

use serde::{Deserialize, Serialize};

/// WebSocket close codes the server uses (1000–1011 are RFC 6455; 4000+ are ours).
pub mod close {
    /// A normal close.
    pub const NORMAL: u16 = 1000;
    /// The node is shutting down; reconnect through resolve.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke RFC 6455 (reserved bits, unknown opcode, bad fragmentation, …).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Binary frames are not part of the protocol.
    pub const UNSUPPORTED: u16 = 1003;
    /// A close frame without a code (never sent; what a receiver reports for one).
    pub const NO_STATUS: u16 = 1005;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A frame over the message-size limit.
    pub const TOO_BIG: u16 = 1009;
    /// An unexpected server error, or the gateway lost the node's connection.
    pub const INTERNAL: u16 = 1011;
    /// The client did not read fast enough; its send queue passed its byte bound.
    pub const SLOW_CONSUMER: u16 = 4001;
    /// The client ignored a `move` past its deadline, or its slot left this node.
    pub const MOVED: u16 = 4002;
    /// The same clientId connected again; the newer connection wins.
    pub const REPLACED: u16 = 4003;
}

/// Error codes in `error` frames and HTTP refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    InvalidToken,
    TokenExpired,
    WrongNode,
    SlotNotOwned,
    SlotLoading,
    Draining,
    TooManyConnections,
    NoNodes,
    NotFound,
    NotReady,
    RateLimited,
    MessageTooBig,
    KafkaUnavailable,
    /// Redis (presence) did not answer.
    StoreUnavailable,
    Overloaded,
    UpstreamUnavailable,
    Internal,
    /// A code this version does not know (a newer server); treated as not retryable.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Whether the same request may succeed if retried later (`slot_not_owned`: after
    /// resolving again).
    pub fn retryable(self) -> bool {
        self.retry_after().is_some() || self == ErrorCode::SlotNotOwned
    }

    /// The HTTP status of a refusal with this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::Unknown => 400,
            ErrorCode::Unauthorized | ErrorCode::InvalidToken | ErrorCode::TokenExpired => 401,
            ErrorCode::WrongNode | ErrorCode::NotFound => 404,
            ErrorCode::SlotNotOwned => 409,
            ErrorCode::MessageTooBig => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::UpstreamUnavailable => 502,
            ErrorCode::SlotLoading
            | ErrorCode::Draining
            | ErrorCode::TooManyConnections
            | ErrorCode::NoNodes
            | ErrorCode::NotReady
            | ErrorCode::KafkaUnavailable
            | ErrorCode::StoreUnavailable
            | ErrorCode::Overloaded => 503,
        }
    }

    /// Seconds to wait before retrying (the `Retry-After` header), for retryable codes. A
    /// `slot_not_owned` refusal is answered by resolving again at once, so it has none.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            ErrorCode::TooManyConnections => Some(5),
            ErrorCode::SlotLoading
            | ErrorCode::Draining
            | ErrorCode::NoNodes
            | ErrorCode::NotReady
            | ErrorCode::RateLimited
            | ErrorCode::KafkaUnavailable
            | ErrorCode::StoreUnavailable
            | ErrorCode::Overloaded
            | ErrorCode::UpstreamUnavailable => Some(1),
            _ => None,
        }
    }

    /// The code as it appears on the wire and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::WrongNode => "wrong_node",
            ErrorCode::SlotNotOwned => "slot_not_owned",
            ErrorCode::SlotLoading => "slot_loading",
            ErrorCode::Draining => "draining",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::NoNodes => "no_nodes",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::MessageTooBig => "message_too_big",
            ErrorCode::KafkaUnavailable => "kafka_unavailable",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// The JSON body of every HTTP refusal: `{"error":code,"message":…,"retryable":bool}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpError<'a> {
    pub error: ErrorCode,
    #[serde(borrow)]
    pub message: std::borrow::Cow<'a, str>,
    pub retryable: bool,
}

impl<'a> HttpError<'a> {
    pub fn new(error: ErrorCode, message: &'a str) -> Self {
        HttpError {
            error,
            message: message.into(),
            retryable: error.retryable(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("error bodies always serialize")
    }
}

/// A request refused before it was served: the code decides the status and Retry-After.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: &'static str,
    /// A status other than the code's own (426 for a wrong WebSocket version).
    status: Option<u16>,
}

impl Refusal {
    pub const fn new(code: ErrorCode, message: &'static str) -> Self {
        Refusal {
            code,
            message,
            status: None,
        }
    }

    /// The same refusal with another HTTP status (the code and its Retry-After stay).
    pub const fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn status(&self) -> u16 {
        self.status.unwrap_or_else(|| self.code.status())
    }

    pub fn retry_after(&self) -> Option<u32> {
        self.code.retry_after()
    }

    /// The documented JSON body.
    pub fn body(&self) -> String {
        HttpError::new(self.code, self.message).to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_one_status_and_retry_after() {
        // The documented table (docs/protocol.md), as the three servers send it.
        let table = [
            (ErrorCode::BadRequest, 400, None),
            (ErrorCode::InvalidToken, 401, None),
            (ErrorCode::TokenExpired, 401, None),
            (ErrorCode::WrongNode, 404, None),
            (ErrorCode::NotFound, 404, None),
            (ErrorCode::SlotNotOwned, 409, None),
            (ErrorCode::SlotLoading, 503, Some(1)),
            (ErrorCode::Draining, 503, Some(1)),
            (ErrorCode::NotReady, 503, Some(1)),
            (ErrorCode::NoNodes, 503, Some(1)),
            (ErrorCode::TooManyConnections, 503, Some(5)),
            (ErrorCode::UpstreamUnavailable, 502, Some(1)),
        ];
        for (code, status, retry) in table {
            assert_eq!(
                (code.status(), code.retry_after()),
                (status, retry),
                "{code:?}"
            );
            assert_eq!(
                code.retryable(),
                retry.is_some() || code == ErrorCode::SlotNotOwned,
                "{code:?}"
            );
        }
    }

    #[test]
    fn refusal_bodies_are_documented_json() {
        let r = Refusal::new(ErrorCode::NoNodes, "x");
        assert_eq!(
            r.body(),
            r#"{"error":"no_nodes","message":"x","retryable":true}"#
        );
        let v = Refusal::new(ErrorCode::BadRequest, "v13").with_status(426);
        assert_eq!((v.status(), v.retry_after()), (426, None));
        let body = r.body();
        let back: HttpError = serde_json::from_str(&body).unwrap();
        assert_eq!(back.error, ErrorCode::NoNodes);
        let unknown: HttpError =
            serde_json::from_str(r#"{"error":"brand_new","message":"m","retryable":false}"#)
                .unwrap();
        assert_eq!(unknown.error, ErrorCode::Unknown);
    }
}
