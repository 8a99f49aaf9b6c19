//! The SDK's error type: every failure says whether trying again can help.

use rtc_protocol::ErrorCode;

/// An HTTP answer that was not a success: status, `Retry-After` and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// The HTTP status.
    pub status: u16,
    /// The `Retry-After` header, seconds, when there was one.
    pub retry_after: Option<String>,
    /// The body: the documented JSON refusal, or whatever a proxy said.
    pub body: String,
}

impl HttpReply {
    /// The documented error code in the body (`{"error":code,…}`), when there is one.
    pub fn code(&self) -> Option<ErrorCode> {
        serde_json::from_str::<rtc_protocol::HttpError>(&self.body)
            .ok()
            .map(|e| e.error)
    }
}

/// What can go wrong talking to Reactive RTC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Resolve or the WebSocket upgrade was refused with an HTTP status (docs/protocol.md).
    #[error("refused with {}: {}", .0.status, .0.body)]
    Refused(HttpReply),
    /// The server closed the WebSocket with this code and reason.
    #[error("closed by the server with {code}: {reason}")]
    Closed {
        /// The close code (docs/protocol.md).
        code: u16,
        /// The reason the server gave.
        reason: String,
    },
    /// A connection-level failure (DNS, TCP, a connection reset during the TLS handshake).
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP exchange of resolve failed.
    #[error("HTTP failed: {0}")]
    Http(String),
    /// The WebSocket failed.
    #[error("WebSocket failed: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server said something this client cannot read.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Nothing arrived within the time asked for.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The arguments cannot work (an invalid clientId, an unknown node address).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The TLS handshake failed on the certificates (not trusted, wrong name, expired): retrying
    /// will not help until the server's certificate or the client's trust changes.
    #[error("TLS failed: {0}")]
    Tls(String),
}

impl Error {
    /// Whether the same operation may succeed if tried again (after a backoff, and after
    /// resolving again). Refusals say so themselves: 400/401 never, 404/409 (the ring moved)
    /// and 5xx yes; a close says so by its code.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Refused(r) => match r.code() {
                Some(c) if c != ErrorCode::Unknown => {
                    c.retryable() || matches!(c, ErrorCode::WrongNode | ErrorCode::NotFound)
                }
                _ => r.status >= 500 || r.status == 404 || r.status == 409 || r.status == 429,
            },
            Error::Closed { code, .. } => close_is_retryable(*code),
            Error::Io(_) | Error::Http(_) | Error::WebSocket(_) | Error::Timeout(_) => true,
            Error::Protocol(_) | Error::Invalid(_) | Error::Tls(_) => false,
        }
    }
}

/// Whether a connection closed with `code` should reconnect: not when a newer connection of
/// the same client replaced it (4003) or when the client broke the protocol (1003, 1009).
pub fn close_is_retryable(code: u16) -> bool {
    use rtc_protocol::close;
    !matches!(code, close::REPLACED | close::UNSUPPORTED | close::TOO_BIG)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, body: &str) -> Error {
        Error::Refused(HttpReply {
            status,
            retry_after: None,
            body: body.into(),
        })
    }

    #[test]
    fn refusals_say_whether_to_retry() {
        assert!(!refused(
            400,
            r#"{"error":"bad_request","message":"x","retryable":false}"#
        )
        .retryable());
        assert!(!refused(
            401,
            r#"{"error":"invalid_token","message":"x","retryable":false}"#
        )
        .retryable());
        assert!(refused(
            404,
            r#"{"error":"wrong_node","message":"x","retryable":false}"#
        )
        .retryable());
        assert!(refused(
            409,
            r#"{"error":"slot_not_owned","message":"x","retryable":true}"#
        )
        .retryable());
        assert!(refused(
            503,
            r#"{"error":"draining","message":"x","retryable":true}"#
        )
        .retryable());
        assert!(refused(502, "<html>bad gateway</html>").retryable());
        assert!(!Error::Closed {
            code: 4003,
            reason: String::new()
        }
        .retryable());
        assert!(Error::Closed {
            code: 1001,
            reason: String::new()
        }
        .retryable());
        assert!(Error::Closed {
            code: 4001,
            reason: String::new()
        }
        .retryable());
    }
}
