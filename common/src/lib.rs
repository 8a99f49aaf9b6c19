//! Shared pieces of Reactive RTC. Pure logic (`slot`, `ring`, `ticket`, `protocol`) does no I/O;
//! `kafka`, `store` and `http` hold the I/O helpers more than one binary needs.

pub mod config;
pub mod http;
pub mod kafka;
pub mod protocol;
pub mod ring;
pub mod slot;
pub mod store;
pub mod telemetry;
pub mod ticket;
