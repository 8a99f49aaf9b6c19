//! rtc-balancer entry point: parse config, init telemetry, build, run until SIGTERM/SIGINT.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = rtc_balancer::config::Config::parse();
    rtc_serverkit::telemetry::init("balancer");
    let server = rtc_balancer::build(cfg).await?;
    let cancel = rtc_serverkit::telemetry::shutdown_on_signal();
    server.run(cancel).await
}
