//! Query strings of resolve and connect (`clientId=…&token=…&resumeOffset=…`), decoded strictly:
//! a value whose percent-decoded bytes are not UTF-8 is refused, never patched with U+FFFD —
//! otherwise `zz%FF` and `zz%FE` would decode to the same clientId and evict each other.

use percent_encoding::percent_decode_str;

/// Why a query string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{0} is not valid UTF-8 once percent-decoded")]
    NotUtf8(String),
    #[error("{0} is given twice")]
    Repeated(String),
}

impl QueryError {
    /// The reason given in the 400 refusal (a fixed text per parameter we read).
    pub fn reason(&self) -> &'static str {
        match self {
            QueryError::NotUtf8(n) if n == "clientId" => "clientId is not valid UTF-8",
            QueryError::NotUtf8(n) if n == "token" => "token is not valid UTF-8",
            QueryError::NotUtf8(_) => "a query parameter is not valid UTF-8",
            QueryError::Repeated(n) if n == "clientId" => "clientId is given twice",
            QueryError::Repeated(_) => "a query parameter is given twice",
        }
    }
}

/// The decoded `name=value` pairs of `query` (`+` is a space, as in forms). A name given twice
/// is refused: which one counts would be a guess.
pub fn parse(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k).map_err(|_| QueryError::NotUtf8("a parameter name".into()))?;
        let value = decode(v).map_err(|_| QueryError::NotUtf8(key.clone()))?;
        if out.iter().any(|(n, _)| *n == key) {
            return Err(QueryError::Repeated(key));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, std::str::Utf8Error> {
    let plus = s.replace('+', " ");
    percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
}

/// The value of `name` in decoded `pairs`.
pub fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_and_plus() {
        let q = parse("clientId=al%C3%A9+x&token=v1.2&resumeOffset=").unwrap();
        assert_eq!(get(&q, "clientId"), Some("alé x"));
        assert_eq!(get(&q, "token"), Some("v1.2"));
        assert_eq!(get(&q, "resumeOffset"), Some(""));
        assert_eq!(get(&q, "nope"), None);
    }

    #[test]
    fn invalid_utf8_is_refused_not_replaced() {
        for bad in [
            "clientId=zz%FF",
            "clientId=zz%FE",
            "clientId=ab%FFcd",
            "clientId=%C3",
        ] {
            assert_eq!(
                parse(bad),
                Err(QueryError::NotUtf8("clientId".into())),
                "{bad}"
            );
        }
        // The real U+FFFD is a valid character, distinct from any refused id.
        assert_eq!(
            get(&parse("clientId=zz%EF%BF%BD").unwrap(), "clientId"),
            Some("zz\u{FFFD}")
        );
        assert_eq!(
            parse("clientId=a&clientId=b"),
            Err(QueryError::Repeated("clientId".into()))
        );
    }
}
