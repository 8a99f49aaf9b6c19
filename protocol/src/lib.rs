//! The protocol of Reactive RTC and the pure logic every side shares: identifiers, the slot hash,
//! the ring, connection tickets, every frame in both directions, error and close codes, and the
//! records on Kafka and in Redis. Serde only: no tokio, no I/O, so clients link it for free and
//! everything here can be tested exhaustively. The wire format is documented in docs/protocol.md.

pub mod client_frame;
pub mod error;
pub mod id;
pub mod query;
pub mod record;
pub mod resolve;
pub mod ring;
pub mod server_frame;
pub mod slot;
pub mod ticket;

pub use client_frame::{ClientFrame, FrameError};
pub use error::{close, ErrorCode, HttpError, Refusal};
pub use id::{validate_id, IdError, MAX_FRAME_ID_BYTES, MAX_ID_BYTES};
pub use record::{Envelope, Heartbeat};
pub use resolve::{connect_path, Resolved};
pub use server_frame::ServerFrame;
