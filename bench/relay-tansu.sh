#!/usr/bin/env bash
# Cross-node relay through a real Kafka-protocol broker (tansu 0.6; the tests now use Apache Kafka, see testkit/tools/kafka):
# the local stack with three socket nodes on tansu, N clients sending direct messages to peers
# on other nodes at a fixed rate; prints achieved throughput, latency and loss, one line each.
#   bench/relay-tansu.sh      (N=1000 clients, INTERVAL=500 ms each, SECS=20)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}; INTERVAL=${INTERVAL:-500}; SECS=${SECS:-20}
BASE=${BASE_PORT:-26080}
TANSU=${TANSU_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/rtc/tansu-0.6.0/bin/tansu}
[ -x "$TANSU" ] || { echo "tansu not installed: cargo install tansu@0.6.0 --locked --no-default-features --features dynostore --root ${XDG_CACHE_HOME:-$HOME/.cache}/rtc/tansu-0.6.0 (or set TANSU_BIN)"; exit 1; }
cargo build --release --bins --quiet
BIN=target/release
LOG=$(mktemp -d)
KPORT=$(( BASE + 9 ))
RUST_LOG=warn "$TANSU" broker --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" --storage-engine memory://tansu/ > "$LOG/tansu.log" 2>&1 &
TANSU_PID=$!
for _ in $(seq 1 60); do (exec 3<>/dev/tcp/127.0.0.1/$KPORT) 2>/dev/null && break; sleep 0.5; done
KAFKA_BOOTSTRAP=127.0.0.1:$KPORT $BIN/rtc-local --nodes 3 --gateway-port "$BASE" --admin-port $(( BASE + 1 )) --balancer-port $(( BASE + 2 )) --socket-base-port $(( BASE + 10 )) > "$LOG/local.log" 2>&1 &
LOCAL=$!
cleanup() { kill -INT "$LOCAL" 2>/dev/null || true; sleep 2; kill "$TANSU_PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$LOG"; }
trap cleanup EXIT
for _ in $(seq 1 240); do grep -q "is up" "$LOG/local.log" && break; sleep 0.5; done
grep -q "is up" "$LOG/local.log" || { tail -20 "$LOG/local.log"; exit 1; }
sleep 2
$BIN/rtc-loadtest --target "127.0.0.1:$BASE" --node-routes "127.0.0.1:$(( BASE + 1 ))" --connections "$N" --ramp-up 5 \
  --duration "$SECS" --msg-interval "$INTERVAL" --prefix relay --json 2> "$LOG/lt.err" > "$LOG/lt.json" || true
python3 - "$LOG/lt.json" "$SECS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); secs = float(sys.argv[2])
print(f"relay through tansu: {r['delivered'] / secs:.0f} msgs/s delivered ({r['sent']} sent, {r['acked']} acked)")
print(f"latency ms p50 {r['latency_ms']['p50']:.1f} p99 {r['latency_ms']['p99']:.1f} p99.9 {r['latency_ms']['p999']:.1f}")
print(f"lost {r['lost']} duplicated {r['duplicated']} errors {r['errors']}")
PY
