//! The I/O the servers (socket node, balancer, gateway) share: settings read from the
//! environment, Kafka clients and topic set-up, the Redis store, telemetry and metrics, the
//! HTTP accept loop. Pure logic lives in `rtc-protocol`; nothing here is linked by clients.

pub mod auth;
pub mod config;
pub mod continuity;
pub mod http;
pub mod kafka;
pub mod kube;
pub mod resolve;
pub mod store;
pub mod telemetry;
