//! rtc-socket entry point: parse config, init telemetry, build, run until SIGTERM/SIGINT.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = rtc_socket::config::Config::parse();
    rtc_serverkit::telemetry::init("socket");
    let socket = rtc_socket::build(cfg).await?;
    let cancel = rtc_serverkit::telemetry::shutdown_on_signal();
    socket.run(cancel).await
}
