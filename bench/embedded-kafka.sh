#!/usr/bin/env bash
# Does the local stack's Kafka slow down as it fills? The local stack (release build) at RATE
# msgs/s through the gateway: p99 and Kafka's CPU in a fresh minute, then after TOTAL messages
# (1.5 million by default), in the same kind of minute. One line per figure; exits non-zero when a
# phase is invalid (lost messages, clients that could not connect, or less than 90 % of the load
# offered).
#   bench/embedded-kafka.sh                        (the embedded broker, rtc-embedded-kafka)
#   LOCAL_KAFKA=mock bench/embedded-kafka.sh       (librdkafka's mock cluster)
#   LOCAL_KAFKA=broker bench/embedded-kafka.sh     (Apache Kafka started by the launcher)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${LOCAL_KAFKA:-embedded}
CONNS=${CONNS:-200}
INTERVAL=${INTERVAL:-100}
WINDOW=${WINDOW:-60}
TOTAL=${TOTAL:-1500000}
BASE=${BASE_PORT:-25080}
RATE=$(( CONNS * 1000 / INTERVAL ))
. bench/stack.sh
start_stack "$MODE" 3 "$BASE"
echo "date=$(date -u +%FT%TZ) host=$(nproc)cpu kafka=$MODE rate=${RATE}/s window=${WINDOW}s total=$TOTAL"
invalid=0
sent_total=0
phase() { # name seconds
  local t0 t1
  t0=$(ticks "$KPID")
  $BIN/rtc-loadtest --target "127.0.0.1:$BASE" --connections "$CONNS" --ramp-up 5 --duration "$2" \
    --msg-interval "$INTERVAL" --prefix "$1" --json > "$WORK/$1.json" 2> "$WORK/$1.err" || true
  t1=$(ticks "$KPID")
  python3 - "$WORK/$1.json" "$1" "$2" "$RATE" "$(( t1 - t0 ))" <<'PY' || invalid=1
import json, sys
path, name, secs, rate, ticks = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
try:
    r = json.load(open(path))
except Exception as e:
    sys.exit(f"{name}: no report ({e})")
print(f"{name}: sent {r['sent']} delivered {r['delivered']} lost {r['lost']} p50 {r['latency_ms']['p50']:.1f} ms "
      f"p99 {r['latency_ms']['p99']:.1f} ms kafka_cpu {ticks / 100 / (secs + 5):.2f} cores")
if r["lost"] or r["connect_failures"] or r["sent"] < 0.9 * rate * secs:
    sys.exit(f"{name}: invalid phase: lost {r['lost']}, connect failures {r['connect_failures']}, sent {r['sent']} of {rate * secs:.0f}")
PY
  sent_total=$(( sent_total + $(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('sent', 0))" "$WORK/$1.json" 2>/dev/null || echo 0) ))
}
phase fresh "$WINDOW"
fill=$(( (TOTAL - sent_total - RATE * WINDOW) / RATE ))
[ "$fill" -gt 0 ] && phase fill "$fill"
phase after "$WINDOW"
echo "messages through Kafka: $sent_total"
[ "$invalid" = 0 ] || { echo "invalid run (see above)"; exit 1; }
