//! rtc-socket entry point: parse config, init telemetry, build, run until stopped (SIGTERM
//! drains first; see `drain::on_signals`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = rtc_socket::config::Config::parse();
    rtc_serverkit::telemetry::init("socket");
    let socket = rtc_socket::build(cfg).await?;
    let cancel = rtc_socket::drain::on_signals(socket.node.clone());
    socket.run(cancel).await
}
