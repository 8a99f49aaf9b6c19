#!/usr/bin/env bash
# Relay cost on a real Kafka broker (Apache Kafka, started by rtc-local with LOCAL_KAFKA=broker;
# the broker's JVM gets the full JIT and a 1 GiB heap here, not the tests' quick-start flags).
# The local stack with NODES socket nodes; rtc-loadtest clients connect straight to the nodes
# (no gateway on the path) and send direct messages to peers, mostly on other nodes, so every
# message crosses Kafka from one node to another. Prints one line per figure:
#   - idle: CPU of each idle node (no clients), in cores;
#   - per offered rate (RATES, msgs/s): delivered/s, p50/p99 (whole run), and over the steady
#     window (3 s after the ramp-up to 3 s before the end, messages counted by the nodes' own
#     delivered counters) socket-node CPU per delivered message, delivered messages per second
#     per core of socket-node CPU, and the broker's CPU;
#   - half saturation: p99 at half the highest delivered rate.
# Exits non-zero when a run is invalid: lost messages or connect failures, or (below saturation)
# less than 90 % of the offered load delivered.
#   bench/relay.sh      (NODES=3 CONNS=1000 SECS=20 RATES="2000 10000 20000" WARMUP_SECS=60;
#                        KEEP=1 keeps the load test's reports and logs and prints where)
# KAFKA=embedded runs the same against the local stack's embedded broker (in rtc-local's process,
# whose CPU is then reported as the broker's), to separate what the broker adds.
# Before the measured rates, WARMUP_SECS of load at WARMUP_RATE (2,000 msgs/s) are run and not
# counted: the broker's JVM is still compiling its hot paths for the first minute or so (JFR:
# C2 took a quarter of a core 70–90 s after start), and the figures are meant for a warm system.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-3}
KAFKA=${KAFKA:-broker}
CONNS=${CONNS:-1000}
SECS=${SECS:-20}
RATES=${RATES:-2000 10000 20000}
IDLE_SECS=${IDLE_SECS:-20}
WARMUP_SECS=${WARMUP_SECS:-60}
WARMUP_RATE=${WARMUP_RATE:-2000}
BASE=${BASE_PORT:-27080}
export KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:-UsePerfData -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}
export KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}
. bench/stack.sh
start_stack "$KAFKA" "$NODES" "$BASE"
HZ=$(getconf CLK_TCK)
echo "date=$(date -u +%FT%TZ) host=$(nproc)cpu nodes=$NODES conns=$CONNS secs=$SECS kafka=$KAFKA"

# Idle: the stack settles, then nothing happens for IDLE_SECS.
sleep 10
idle=()
for p in "${NODE_PIDS[@]}"; do idle+=("$(ticks "$p")"); done
k0=$(ticks "$KPID")
sleep "$IDLE_SECS"
line="idle nodes:"
for i in "${!NODE_PIDS[@]}"; do
  t=$(ticks "${NODE_PIDS[$i]}")
  line+=" $(awk -v d=$(( t - ${idle[$i]} )) -v hz="$HZ" -v s="$IDLE_SECS" 'BEGIN { printf "%.4f", d / hz / s }')"
done
echo "$line cores each; broker $(awk -v d=$(( $(ticks "$KPID") - k0 )) -v hz="$HZ" -v s="$IDLE_SECS" 'BEGIN { printf "%.3f", d / hz / s }') cores"

delivered_sum() { # messages the nodes have delivered so far, from their metrics
  local t=0 i n
  for i in "${!NODE_PIDS[@]}"; do
    n=$(curl -sf "http://127.0.0.1:$(( BASE + 10 + i ))/metrics" | awk '/^rtc_socket_messages_total\{.*kind="delivered"/ { print $2 }')
    t=$(( t + ${n:-0} ))
  done
  echo "$t"
}
# The steady window of a run: from 3 s after the ramp-up to 3 s before the end, so connecting
# and disconnecting the clients do not count against the messages.
STEADY=$(( SECS > 10 ? SECS - 6 : 4 ))
steady() { # → "node-ticks broker-ticks delivered" over the window, into $1
  sleep 8
  local t0 k0 d0
  t0=$(ticks "${NODE_PIDS[@]}"); k0=$(ticks "$KPID"); d0=$(delivered_sum)
  sleep "$STEADY"
  echo "$(( $(ticks "${NODE_PIDS[@]}") - t0 )) $(( $(ticks "$KPID") - k0 )) $(( $(delivered_sum) - d0 ))" > "$1"
}

invalid=0
run() { # rate label → prints one line, appends "delivered/s" to $WORK/rates
  local rate=$1 label=$2 interval
  interval=$(( CONNS * 1000 / rate ))
  steady "$WORK/$label.steady" &
  local sampler=$!
  $BIN/rtc-loadtest --target "127.0.0.1:$BASE" --node-routes "127.0.0.1:$(( BASE + 1 ))" --connections "$CONNS" \
    --ramp-up 5 --duration "$SECS" --msg-interval "$interval" --prefix "r$rate-$label" --json \
    > "$WORK/$label.json" 2> "$WORK/$label.err" || true
  wait "$sampler"
  python3 - "$WORK/$label.json" "$label" "$rate" "$SECS" "$HZ" "$WORK/rates" "$STEADY" "$(cat "$WORK/$label.steady")" <<'PY' || invalid=1
import json, sys
path, label, rate, secs, hz, rates, steady_secs, steady = sys.argv[1:9]
rate, secs, hz = int(rate), float(secs), int(hz)
try:
    r = json.load(open(path))
except Exception as e:
    sys.exit(f"{label}: invalid: no report ({e})")
delivered = r["delivered"]
# CPU per message over the steady window (node metrics count the messages delivered in it).
s_node, s_kafka, s_delivered = (int(x) for x in steady.split())
s_secs = float(steady_secs)
node_cpu = s_node / hz
per_msg = node_cpu * 1e6 / max(1, s_delivered)
per_core = s_delivered / max(node_cpu, 1e-9)
lat = r["latency_ms"]
print(f"{label}: {delivered / secs:7.0f} msgs/s delivered of {rate} offered  p50 {lat['p50']:6.1f} ms  p99 {lat['p99']:7.1f} ms  "
      f"node CPU {per_msg:6.1f} us/msg = {per_core:7.0f} msgs/s per node core ({s_delivered / s_secs:.0f} msgs/s, {node_cpu / s_secs:.2f} node cores)  "
      f"broker {s_kafka / hz / s_secs:.2f} cores  lost {r['lost']} dup {r['duplicated']}")
open(rates, "a").write(f"{delivered / secs:.0f} {per_core:.0f}\n")
bad = r["lost"] or r["connect_failures"]
if label.startswith("offered") and delivered < 0.9 * rate * secs:
    print(f"{label}: saturated (delivered {delivered / secs:.0f} of {rate}/s)")
if bad:
    sys.exit(f"{label}: invalid: lost {r['lost']}, connect failures {r['connect_failures']}")
PY
}
if [ "$WARMUP_SECS" -gt 0 ]; then
  SECS=$WARMUP_SECS run "$WARMUP_RATE" "warm-up"
  : > "$WORK/rates"
fi
for rate in $RATES; do
  run "$rate" "offered-$rate"
done
sat=$(sort -n "$WORK/rates" | tail -1 | cut -d' ' -f1)
best=$(sort -k2 -n "$WORK/rates" | tail -1 | cut -d' ' -f2)
echo "saturation: $sat msgs/s delivered; best $best msgs/s per node core"
half=$(( sat / 2 ))
run "$half" "half-saturation"
[ "$invalid" = 0 ] || { echo "invalid run (see above)"; exit 1; }
