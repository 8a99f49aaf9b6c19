//! Identifiers: clientIds, room names and the client-chosen frame `id`, and the rules they follow.

/// Longest clientId or room name, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest client-chosen frame `id`, in bytes.
pub const MAX_FRAME_ID_BYTES: usize = 64;

/// Why an identifier is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_ID_BYTES} bytes")]
    TooLong,
    #[error("contains a control character")]
    Control,
    #[error("contains a quote or a backslash")]
    Escaped,
}

impl IdError {
    /// The reason given when a clientId is refused (HTTP 400 at resolve and connect).
    pub fn client_id_reason(self) -> &'static str {
        match self {
            IdError::Empty => "clientId is empty",
            IdError::TooLong => "clientId is longer than 256 bytes",
            IdError::Control => "clientId contains a control character",
            IdError::Escaped => "clientId contains a quote or a backslash",
        }
    }
}

/// Checks a clientId or room name: 1–256 bytes of UTF-8 without control characters, quotes or
/// backslashes (identifiers travel as plain JSON strings, never escaped).
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        Err(IdError::Empty)
    } else if id.len() > MAX_ID_BYTES {
        Err(IdError::TooLong)
    } else if id.chars().any(char::is_control) {
        Err(IdError::Control)
    } else if id.contains(['"', '\\']) {
        Err(IdError::Escaped)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(validate_id(&"a".repeat(257)), Err(IdError::TooLong));
        assert_eq!(validate_id("a\nb"), Err(IdError::Control));
        assert_eq!(validate_id("a\"b"), Err(IdError::Escaped));
        assert_eq!(validate_id("a\\b"), Err(IdError::Escaped));
        assert_eq!(validate_id(&"é".repeat(128)), Ok(()));
    }
}
