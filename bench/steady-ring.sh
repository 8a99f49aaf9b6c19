#!/usr/bin/env bash
# steady-ring.sh — does the ring stay put under steady load? The local stack (release build,
# 3 socket nodes, embedded Kafka) under a constant direct-message load; counts the balancer's
# ring decisions after placement and records the heartbeats it saw, one round per second
# (bench/out/steady-heartbeats.jsonl: a JSON array of heartbeats per line, slot lists emptied).
#
#   bench/steady-ring.sh [CONNECTIONS] [MSG_INTERVAL_MS] [SECONDS]     default 2000 200 300 (10k msgs/s, 5 min)
#
# Prints one line per figure; exits non-zero when the run is invalid (the stack did not come up,
# or the load test lost messages or could not connect its clients).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
CONNS="${1:-2000}"; INTERVAL="${2:-200}"; SECS="${3:-300}"
OUT=bench/out; mkdir -p "$OUT"
cargo build --release --quiet --bins
BIN=target/release
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
read -r REDIS GW ADMIN BAL SOCK <<<"$(free_ports 4 3)"
redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
NODES=3 GATEWAY_PORT=$GW GATEWAY_ADMIN_PORT=$ADMIN BALANCER_PORT=$BAL SOCKET_BASE_PORT=$SOCK \
  REDIS_URL="redis://127.0.0.1:$REDIS/" RUST_LOG=info LOG_FORMAT=json "$BIN/rtc-local" >"$WORK/local.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$ADMIN/readyz" || { tail -20 "$WORK/local.log"; echo "invalid run: the stack did not come up"; exit 1; }
sleep 3
placed=$(grep -c "ring decision" "$WORK/local.log" || true)

# Record the heartbeats once a second while the load runs.
(
  while :; do
    keys=$(redis-cli -p "$REDIS" --scan --pattern 'rtc:node:*' | sort)
    [ -n "$keys" ] && redis-cli -p "$REDIS" mget $keys | python3 -c '
import json,sys
hbs=[json.loads(l) for l in sys.stdin if l.strip().startswith("{")]
for h in hbs: h["slots"]=[]
print(json.dumps(hbs))'
    sleep 1
  done
) >"$OUT/steady-heartbeats.jsonl" &
PIDS+=($!)

"$BIN/rtc-loadtest" --target "127.0.0.1:$GW" --connections "$CONNS" --ramp-up 10 --duration "$SECS" \
  --msg-interval "$INTERVAL" --json >"$WORK/report.json" 2>"$WORK/loadtest.err" || true
valid=1
python3 - "$WORK/report.json" <<'EOF' || { tail -3 "$WORK/loadtest.err"; valid=0; }
import json, sys
r = json.load(open(sys.argv[1]))
print(f"load: {r['clients']} clients, {r['sent']} sent, {r['delivered']} delivered, lost {r['lost']}, "
      f"p99 {r['latency_ms']['p99']:.0f} ms, connect failures {r['connect_failures']}")
if r["lost"] or r["connect_failures"] or r["sent"] == 0:
    sys.exit("invalid run: lost messages or clients that could not connect")
EOF
total=$(grep -c "ring decision" "$WORK/local.log" || true)
moves=$(grep "ring decision" "$WORK/local.log" | tail -n +"$((placed + 1))" | sed -nE 's/.*"moved":([0-9]+).*/\1/p' | awk '{s+=$1} END {print s+0}')
echo "ring decisions at placement: $placed"
echo "ring decisions during the steady run: $((total - placed)) (slots moved: ${moves:-0})"
echo "heartbeat rounds recorded: $(wc -l <"$OUT/steady-heartbeats.jsonl") ($OUT/steady-heartbeats.jsonl)"
[ "$valid" = 1 ] || { echo "invalid run (see above)"; exit 1; }
