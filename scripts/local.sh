#!/usr/bin/env bash
# Runs the whole system locally: builds every binary, then starts Redis, embedded Kafka (or the
# broker in KAFKA_BOOTSTRAP), a balancer, three socket nodes and the gateway. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null || ! dpkg-query -W -f='${Status}' libcurl4-openssl-dev 2>/dev/null | grep -q "ok installed"; then
  echo "installing build dependencies (cmake, libcurl headers) with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake libcurl4-openssl-dev pkg-config >/dev/null
fi
cargo build --bins --quiet
exec target/debug/rtc-local "$@"
