//! rtc-gateway entry point: parse config, init telemetry, build, run until SIGTERM/SIGINT.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cfg = rtc_gateway::config::Config::parse();
    rtc_serverkit::telemetry::init("gateway");
    rtc_gateway::build(cfg, rtc_gateway::Trigger::Signals)?.run();
    Ok(())
}
