#!/usr/bin/env bash
# Where a socket node's CPU goes, thread by thread, on the real broker: the local stack with
# three nodes (LOCAL_KAFKA=broker unless KAFKA=embedded), a warm-up at 2,000 msgs/s, then for each
# offered rate a 10 s window inside a 25 s load-test run. Prints one line per rate (delivered,
# p50/p99, CPU of all nodes) and one line per busy thread of node 0: cores and voluntary context
# switches per second, from /proc/<pid>/task/*/{stat,status}. Settings pass through the
# environment to the nodes (e.g. DELIVER_FETCH_BATCH_MS=10, SLOTS=32).
#   bench/relay-threads.sh     (RATES="2000 8000" WARMUP_SECS=40 CONNS=1000)
# Exits non-zero when a run lost messages or its load test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-2000 8000}
WARMUP_SECS=${WARMUP_SECS:-40}
CONNS=${CONNS:-1000}
KAFKA=${KAFKA:-broker}
BASE=${BASE_PORT:-27180}
export KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:-UsePerfData -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}
export KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}
. bench/stack.sh
start_stack "$KAFKA" 3 "$BASE"
N=${NODE_PIDS[0]}
HZ=$(getconf CLK_TCK)
echo "date=$(date -u +%FT%TZ) host=$(nproc)cpu kafka=$KAFKA conns=$CONNS node0=$N"

threads() { # tid|comm|voluntary switches|ticks, one line per thread of node 0
  for t in /proc/"$N"/task/*; do
    echo "$(basename "$t")|$(cat "$t/comm")|$(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status")|$(awk '{ print $14 + $15 }' "$t/stat")"
  done | sort
}
load() { # rate secs label → the load test's JSON report in $WORK/label.json
  $BIN/rtc-loadtest --target "127.0.0.1:$BASE" --node-routes "127.0.0.1:$(( BASE + 1 ))" --connections "$CONNS" \
    --ramp-up 5 --duration "$2" --msg-interval $(( CONNS * 1000 / $1 )) --prefix "t$1-$3" --json \
    > "$WORK/$3.json" 2> "$WORK/$3.err"
}

load 2000 "$WARMUP_SECS" warm-up
invalid=0
for rate in $RATES; do
  load "$rate" 25 "r$rate" & lp=$!
  sleep 12
  threads > "$WORK/t0"; a=$(ticks "${NODE_PIDS[@]}")
  sleep 10
  threads > "$WORK/t1"; b=$(ticks "${NODE_PIDS[@]}")
  wait "$lp" || invalid=1
  python3 - "$WORK/r$rate.json" "$rate" "$(( b - a ))" "$HZ" <<'PY' || invalid=1
import json, sys
path, rate, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = json.load(open(path))
lat = r["latency_ms"]
print(f"offered {rate}: delivered {r['delivered'] / 25:.0f}/s  p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms  "
      f"all nodes {ticks / hz / 10:.3f} cores  lost {r['lost']} dup {r['duplicated']}")
if r["lost"] or r["connect_failures"]:
    sys.exit(f"offered {rate}: invalid: lost {r['lost']}, connect failures {r['connect_failures']}")
PY
  join -t'|' "$WORK/t0" "$WORK/t1" | awk -F'|' -v hz="$HZ" '{
    cs = ($6 - $3) / 10; cores = ($7 - $4) / hz / 10
    if (cores >= 0.002) printf "  node0 %-24s %6.3f cores %6.0f switches/s\n", $2, cores, cs }'
done
[ "$invalid" = 0 ] || { echo "invalid run (see above)"; exit 1; }
