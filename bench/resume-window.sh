#!/usr/bin/env bash
# Resume after an hour offline: replay time of N missed direct messages read back from Kafka, the
# memory it costs, and the longest window the read-back bounds allow. One line per figure; exits
# non-zero when the run did not recover every message in order.
#   bench/resume-window.sh [MINE=10000] [FILL=90000]          (real Kafka broker; KAFKA=mock for the embedded one)
set -euo pipefail
cd "$(dirname "$0")/.."
MINE=${1:-10000}
FILL=${2:-90000}
KAFKA=${KAFKA:-broker}
if [ "$KAFKA" = broker ]; then testkit/tools/kafka/kafka.sh install >/dev/null; fi
cargo build --release -p rtc-e2e --example resume_window --quiet
echo "date=$(date -u +%FT%TZ) host=$(nproc)cpu kafka=$KAFKA mine=$MINE fill=$FILL"
RTC_TEST_KAFKA=$KAFKA target/release/examples/resume_window "$MINE" "$FILL"
