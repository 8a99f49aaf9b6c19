#!/usr/bin/env bash
# Self-check of kafka.sh with Kafka's own CLI classes (same classpath): start a broker, create a
# 256-partition topic, produce and consume 1000 records, stop it, wait, start it again on the same
# DIR and check that the records are still there. Prints timings and the broker's RSS.
#   smoke.sh [PORT] [PAUSE_SECONDS]      (defaults 19092 and 10)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K="$HERE/kafka.sh"
PORT="${1:-19092}"
PAUSE="${2:-10}"
BS="127.0.0.1:$PORT"
DIR="$(mktemp -d /tmp/rtc-kafka-smoke.XXXXXX)"
ms() { date +%s%3N; }
rss() { echo "$(( $(ps -o rss= -p "$(cat "$DIR/kafka.pid")") / 1024 )) MB"; }
cleanup() { "$K" stop "$DIR" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

t=$(ms); "$K" install >/dev/null; echo "install: $(( $(ms) - t )) ms"
t=$(ms); "$K" start "$DIR" "$PORT"; echo "start: $(( $(ms) - t )) ms, RSS $(rss)"

t=$(ms)
"$K" run org.apache.kafka.tools.TopicCommand --bootstrap-server "$BS" --create --topic smoke \
  --partitions 256 --replication-factor 1 >/dev/null
echo "create 256-partition topic (CLI, incl. its JVM start): $(( $(ms) - t )) ms, RSS $(rss)"
parts=$("$K" run org.apache.kafka.tools.TopicCommand --bootstrap-server "$BS" --describe --topic smoke \
  | grep -c 'Leader: 1')
[ "$parts" = 256 ] || { echo "FAIL: $parts partitions with a leader"; exit 1; }

t=$(ms)
seq 1 1000 | sed 's/.*/k&:v&/' | "$K" run org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BS" \
  --topic smoke --reader-property parse.key=true --reader-property key.separator=: \
  --command-property acks=all 2>/dev/null
echo "produce 1000 (CLI): $(( $(ms) - t )) ms"
count() {
  "$K" run org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$BS" --topic smoke 2>/dev/null \
    | awk -F: '{s+=$3} END {print s+0}'
}
n=$(count); [ "$n" = 1000 ] || { echo "FAIL: end offsets sum to $n"; exit 1; }
t=$(ms)
got=$("$K" run org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$BS" --topic smoke \
  --from-beginning --max-messages 1000 --timeout-ms 30000 2>/dev/null | grep -c '^v')
echo "consume $got (CLI): $(( $(ms) - t )) ms"
[ "$got" = 1000 ] || { echo "FAIL: consumed $got"; exit 1; }

"$K" stop "$DIR"
sleep "$PAUSE"
t=$(ms); "$K" start "$DIR" "$PORT"; echo "restart after ${PAUSE}s down: $(( $(ms) - t )) ms, RSS $(rss)"
n=$(count); [ "$n" = 1000 ] || { echo "FAIL: after restart, end offsets sum to $n"; exit 1; }
echo "after restart: 1000 records still there"
echo "smoke: 1 passed, 0 failed"
