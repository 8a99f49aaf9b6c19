#!/usr/bin/env bash
# How long clients of moved slots wait: the time until every slot a node owns also serves
# (rtc_socket_owned_slots = rtc_socket_serving_slots), on the real Kafka broker by default.
#   - start: from rtc-local's "is up" until every node serves all the slots it owns;
#   - drain: `POST /drain` on the last node; the others take its slots over while their deliver
#     consumers are busy fetching, and the figure is from the moment they own all SLOTS until
#     they serve all of them.
# Prints one line per figure; exits non-zero when a phase does not finish within LIMIT seconds.
#   bench/takeover.sh        (NODES=3 KAFKA=broker|mock SETTLE=20 LIMIT=120)
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-3}
KAFKA=${KAFKA:-broker}
SETTLE=${SETTLE:-20}
LIMIT=${LIMIT:-120}
SLOTS=${SLOTS:-256}
BASE=${BASE_PORT:-27180}
export SLOTS
export KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:-UsePerfData -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}
export KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}
cargo build --release --bins --quiet
WORK=$(mktemp -d)
LOCAL_KAFKA=$KAFKA target/release/rtc-local --nodes "$NODES" --gateway-port "$BASE" --admin-port $(( BASE + 1 )) \
  --balancer-port $(( BASE + 2 )) --socket-base-port $(( BASE + 10 )) > "$WORK/local.log" 2>&1 &
LOCAL=$!
trap 'kill -INT $LOCAL 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 360); do grep -q "is up" "$WORK/local.log" && break; sleep 0.5; done
grep -q "is up" "$WORK/local.log" || { tail -20 "$WORK/local.log"; exit 1; }
echo "date=$(date -u +%FT%TZ) host=$(nproc)cpu nodes=$NODES slots=$SLOTS kafka=$KAFKA"

now() { date +%s.%N; }
# "owned serving" summed over nodes FIRST..LAST (indices).
slots() {
  local first=$1 last=$2 o=0 s=0 m
  for i in $(seq "$first" "$last"); do
    m=$(curl -s --max-time 2 "127.0.0.1:$(( BASE + 10 + i ))/metrics" || true)
    o=$(( o + $(awk '/^rtc_socket_owned_slots/ {print $2}' <<<"$m" | head -1 || echo 0) ))
    s=$(( s + $(awk '/^rtc_socket_serving_slots/ {print $2}' <<<"$m" | head -1 || echo 0) ))
  done
  echo "$o $s"
}
# Waits until nodes FIRST..LAST own WANT slots (any, when WANT is empty) and serve all they own.
until_serving() {
  local first=$1 last=$2 want=$3 deadline o s
  deadline=$(( $(date +%s) + LIMIT ))
  while :; do
    read -r o s < <(slots "$first" "$last")
    if [ "$o" -gt 0 ] && [ "$o" = "$s" ] && { [ -z "$want" ] || [ "$o" = "$want" ]; }; then return 0; fi
    [ "$(date +%s)" -lt "$deadline" ] || { echo "invalid: nodes $first..$last own $o, serve $s after ${LIMIT}s"; return 1; }
    sleep 0.05
  done
}

t0=$(now)
until_serving 0 $(( NODES - 1 )) "$SLOTS" || exit 1
echo "start: every owned slot serves $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }') s after 'is up'"

sleep "$SETTLE"
last=$(( NODES - 1 ))
curl -s -X POST "127.0.0.1:$(( BASE + 10 + last ))/drain" > /dev/null
t0=$(now)
deadline=$(( $(date +%s) + LIMIT ))
while read -r o _ < <(slots 0 $(( last - 1 ))); [ "$o" != "$SLOTS" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "invalid: the others own $o of $SLOTS after ${LIMIT}s"; exit 1; }
  sleep 0.05
done
t1=$(now)
until_serving 0 $(( last - 1 )) "$SLOTS" || exit 1
echo "drain: the others own all $SLOTS slots $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s after POST /drain and serve them $(awk -v a="$t1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }') s later"
