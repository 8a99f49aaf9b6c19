#!/usr/bin/env bash
# Resolve requests per second and latency, straight to the balancer and through the gateway
# (wrk, 2 threads, 64 connections, 10 s each), plus the ring recompute time at 50 nodes × 256
# slots. One line per figure, and the gateway/direct ratio; exits non-zero when a run is invalid
# (wrk socket errors or non-2xx answers).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE_PORT:-23080}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release --bins --examples --quiet
BIN=target/release
LOG=$(mktemp -d)
$BIN/rtc-local --nodes 3 --gateway-port "$BASE" --admin-port $(( BASE + 1 )) --balancer-port $(( BASE + 2 )) --socket-base-port $(( BASE + 10 )) > "$LOG/local.log" 2>&1 &
LOCAL=$!
trap 'kill -INT $LOCAL 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$LOG"' EXIT
for _ in $(seq 1 120); do grep -q "is up" "$LOG/local.log" && break; sleep 0.5; done
grep -q "is up" "$LOG/local.log" || { tail -20 "$LOG/local.log"; exit 1; }
invalid=0
declare -A RPS
for target in balancer gateway; do
  port=$BASE; [ $target = balancer ] && port=$(( BASE + 2 ))
  wrk -t2 -c64 -d10s --latency "http://127.0.0.1:$port/api/v1/resolve?clientId=alice" > "$LOG/wrk-$target.txt"
  rps=$(awk '/Requests\/sec/ {print $2}' "$LOG/wrk-$target.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$LOG/wrk-$target.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$LOG/wrk-$target.txt")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$LOG/wrk-$target.txt")
  errors=$(awk '/Socket errors/ {print $0}' "$LOG/wrk-$target.txt")
  echo "resolve via $target: $rps requests/s, p50 $p50, p99 $p99, non-2xx ${non2xx:-0}${errors:+, $errors}"
  RPS[$target]=$rps
  if [ "${non2xx:-0}" != 0 ] || [ -n "$errors" ] || [ -z "$rps" ]; then invalid=1; fi
done
awk -v g="${RPS[gateway]}" -v b="${RPS[balancer]}" 'BEGIN { printf "resolve gateway/direct: %.2fx\n", g / b }'
$BIN/examples/ring_bench
[ "$invalid" = 0 ] || { echo "invalid run: errors or non-2xx answers above"; exit 1; }
