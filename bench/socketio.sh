#!/usr/bin/env bash
# Reactive RTC against Socket.IO with its Redis adapter (from npm), two nodes each, same load:
# N clients, a direct message every INTERVAL ms to a peer. One line per figure: messages/s
# delivered, latency p50/p99, memory per connection of the serving processes.
#   bench/socketio.sh        (N=2000, INTERVAL=1000, SECS=20)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}; INTERVAL=${INTERVAL:-1000}; SECS=${SECS:-20}
BASE=${BASE_PORT:-25080}
command -v node >/dev/null || { echo "node (Node.js) is needed for the Socket.IO side"; exit 1; }
(cd bench/socketio && npm install --no-audit --no-fund --silent >/dev/null)
cargo build --release --bins --quiet
BIN=target/release
LOG=$(mktemp -d)
REDIS_PORT=$(( BASE + 9 ))
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no > "$LOG/redis.log" 2>&1 &
REDIS=$!
rss_kib() { local t=0; for p in "$@"; do t=$(( t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) )); done; echo $t; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; kill "$REDIS" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$LOG"; }
trap cleanup EXIT
sleep 1

# Socket.IO: two nodes.
node bench/socketio/server.js $(( BASE + 1 )) "redis://127.0.0.1:$REDIS_PORT" > "$LOG/sio1.log" 2>&1 & S1=$!; PIDS+=("$S1")
node bench/socketio/server.js $(( BASE + 2 )) "redis://127.0.0.1:$REDIS_PORT" > "$LOG/sio2.log" 2>&1 & S2=$!; PIDS+=("$S2")
sleep 2
kill -0 "$S1" && kill -0 "$S2" || { cat "$LOG"/sio*.log; echo "a Socket.IO node did not start"; exit 1; }
before=$(rss_kib "$S1" "$S2")
node bench/socketio/client.js "$(( BASE + 1 )),$(( BASE + 2 ))" "$N" "$INTERVAL" "$SECS" > "$LOG/sio.json" 2> "$LOG/sio.err" &
C=$!; PIDS+=("$C")
for _ in $(seq 1 240); do grep -q "clients connected" "$LOG/sio.err" && break; sleep 0.5; done
sleep $(( SECS / 2 ))
during=$(rss_kib "$S1" "$S2")
wait "$C" || true
python3 - "$LOG/sio.json" "$N" "$before" "$during" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); n = int(sys.argv[2]); b, d = int(sys.argv[3]), int(sys.argv[4])
print(f"socket.io (2 nodes, redis adapter): {r['msgs_per_sec']:.0f} msgs/s delivered, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, lost {r['lost']}, {(d - b) * 1024 / n:.0f} bytes per connection")
PY
kill "$S1" "$S2" 2>/dev/null || true

# Reactive RTC: two socket nodes, same load, WebSockets straight to the nodes.
$BIN/rtc-local --nodes 2 --gateway-port "$BASE" --admin-port $(( BASE + 3 )) --balancer-port $(( BASE + 4 )) --socket-base-port $(( BASE + 10 )) > "$LOG/local.log" 2>&1 &
LOCAL=$!; PIDS+=("$LOCAL")
for _ in $(seq 1 120); do grep -q "is up" "$LOG/local.log" && break; sleep 0.5; done
sleep 2
NODES_PIDS=$(for p in $(ps -o pid= --ppid "$LOCAL"); do case "$(tr '\0' ' ' < /proc/$p/cmdline)" in *rtc-socket*) echo "$p";; esac; done)
before=$(rss_kib $NODES_PIDS)
$BIN/rtc-loadtest --target "127.0.0.1:$BASE" --node-routes "127.0.0.1:$(( BASE + 3 ))" --connections "$N" --ramp-up 5 --duration "$SECS" \
  --msg-interval "$INTERVAL" --prefix sio-cmp --json > "$LOG/rtc.json" 2> "$LOG/rtc.err" &
C=$!
for _ in $(seq 1 240); do grep -q "clients connected" "$LOG/rtc.err" && break; sleep 0.5; done
sleep $(( SECS / 2 ))
during=$(rss_kib $NODES_PIDS)
wait "$C" || true
python3 - "$LOG/rtc.json" "$N" "$before" "$during" "$SECS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); n = int(sys.argv[2]); b, d = int(sys.argv[3]), int(sys.argv[4]); secs = float(sys.argv[5])
print(f"reactive rtc (2 nodes, kafka mock): {r['delivered'] / secs:.0f} msgs/s delivered, p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms, lost {r['lost']}, {(d - b) * 1024 / n:.0f} bytes per connection")
PY
