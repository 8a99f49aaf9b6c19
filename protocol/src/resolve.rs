//! The answer to `GET /api/v1/resolve` and the connect path it names.

use serde::{Deserialize, Serialize};

/// The answer to `GET /api/v1/resolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// The socket node that owns the client's slot.
    pub node_id: String,
    /// The path to open the WebSocket on (through the gateway).
    pub url: String,
    /// The connection ticket (see [`crate::ticket`]).
    pub token: String,
    /// The ring epoch the answer comes from.
    pub epoch: u64,
}

/// The path a client connects to for `node_id`.
pub fn connect_path(node_id: &str) -> String {
    format!("/ws/{node_id}/connect")
}
