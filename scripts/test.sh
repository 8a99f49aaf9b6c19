#!/usr/bin/env bash
# The full test suite, installing what it needs (Debian/Ubuntu, as root or with sudo):
#   - build tools for librdkafka (cmake, libcurl headers), redis-server and chromium via apt;
#   - tansu, a real Kafka-protocol broker, via cargo install, cached outside the clone;
# then every test on librdkafka's embedded mock cluster, and the Kafka integration tests again
# on tansu.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v cmake >/dev/null || need+=(cmake)
dpkg-query -W -f='${Status}' libcurl4-openssl-dev 2>/dev/null | grep -q "ok installed" || need+=(libcurl4-openssl-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing with apt-get: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

TANSU_VERSION=0.6.0
TANSU_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/rtc/tansu-$TANSU_VERSION"
export TANSU_BIN="${TANSU_BIN:-$TANSU_ROOT/bin/tansu}"
if [ ! -x "$TANSU_BIN" ]; then
  echo "installing tansu $TANSU_VERSION into $TANSU_ROOT (once; takes several minutes)"
  cargo install "tansu@$TANSU_VERSION" --locked --no-default-features --features dynostore --root "$TANSU_ROOT" --quiet
fi

cargo fmt --all -- --check
# The end-to-end tests start the real binaries (rtc-loadtest) from target/debug.
cargo build --workspace --bins --quiet
echo "== all tests, Kafka = embedded mock cluster"
RTC_TEST_KAFKA=mock cargo test --workspace --no-fail-fast
echo "== Kafka integration tests, Kafka = tansu $TANSU_VERSION"
RTC_TEST_KAFKA=tansu cargo test -p rtc-e2e --test data_path --test drain --no-fail-fast
