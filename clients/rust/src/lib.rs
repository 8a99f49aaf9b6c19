//! Rust client SDK for Reactive RTC.
//!
//! A client resolves its node through the gateway (`GET /api/v1/resolve`), opens a WebSocket to
//! it with the token it got, and exchanges JSON frames (docs/protocol.md). [`Client`] does all
//! of it and stays connected: it follows `move`, reconnects with full-jitter backoff, resumes
//! from the newest offset it received, joins its rooms again and re-sends unanswered direct
//! messages with the same id (delivered once). [`Connection`] is one WebSocket without any of
//! that, for tools that drive frames themselves.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rtc_client::Error> {
//! use rtc_client::{Client, Event, Options};
//! use std::time::Duration;
//!
//! let mut alice = Client::connect(Options::new("127.0.0.1:8080", "alice")).await?;
//! let id = alice.send("bob", &serde_json::json!({"text": "hi"})).await?;
//! loop {
//!     match alice.next_event(Duration::from_secs(30)).await? {
//!         Event::Ack { id: acked, offset } if acked == id => println!("stored at {offset:?}"),
//!         Event::Msg(m) => println!("{} says {}", m.from, m.data.get()),
//!         _ => {}
//!     }
//! }
//! # }
//! ```

#![warn(missing_docs)]

pub mod backoff;
pub mod client;
pub mod connection;
pub mod error;
pub mod event;
pub mod http;

pub use backoff::Backoff;
pub use client::{Client, Options};
pub use connection::Connection;
pub use error::{Error, HttpReply};
pub use event::{Event, Message};
pub use http::{Endpoints, Tls};
pub use rtc_protocol as protocol;
