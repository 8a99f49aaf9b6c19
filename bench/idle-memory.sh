#!/usr/bin/env bash
# Memory per idle WebSocket: starts the local stack (release build), opens N clients through the
# gateway (resolve, connect, welcome) that then stay idle, and prints one line per figure: the
# growth of resident memory per connection of the socket nodes, the gateway and the client.
#   bench/idle-memory.sh [N]        (default 6000; each proxied connection costs the gateway 2 fds)
#   NODES=1 DIRECT=1 bench/idle-memory.sh 10000   (WebSockets straight to one node: its figure at N)
#   NODES=3 DIRECT=1 bench/idle-memory.sh 50000   (50,000 over three nodes: one process here may
#                                                   hold at most 20,000 open files)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-6000}
HOLD=${HOLD:-20}
cargo build --release --bins --quiet
BIN=target/release
LOG=$(mktemp -d)
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
ports() { echo "--gateway-port $1 --admin-port $(( $1 + 1 )) --balancer-port $(( $1 + 2 )) --socket-base-port $(( $1 + 10 ))"; }
BASE=${BASE_PORT:-18080}
# shellcheck disable=SC2046
$BIN/rtc-local --nodes "${NODES:-3}" $(ports "$BASE") > "$LOG/local.log" 2>&1 &
LOCAL=$!
cleanup() { kill -INT "$LOCAL" 2>/dev/null || true; [ -n "${LT:-}" ] && kill "$LT" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$LOG"; }
trap cleanup EXIT
for _ in $(seq 1 120); do grep -q "is up" "$LOG/local.log" && break; sleep 0.5; done
grep -q "is up" "$LOG/local.log" || { cat "$LOG/local.log"; exit 1; }
sleep 3
declare -A ROLE
for pid in $(ps -o pid= --ppid "$LOCAL"); do
  case "$(tr '\0' ' ' < "/proc/$pid/cmdline")" in
    *rtc-socket*) ROLE[$pid]=socket ;;
    *rtc-gateway*) ROLE[$pid]=gateway ;;
  esac
done
declare -A BEFORE
for pid in "${!ROLE[@]}"; do BEFORE[$pid]=$(rss_kib "$pid"); done
"$BIN/rtc-loadtest" --target "127.0.0.1:$BASE" ${DIRECT:+--node-routes "127.0.0.1:$(( BASE + 1 ))"} --connections "$N" --ramp-up 10 --duration "$HOLD" --msg-interval 36000000 --prefix idle > "$LOG/lt.log" 2>&1 &
LT=$!
for _ in $(seq 1 240); do grep -q "clients connected" "$LOG/lt.log" && break; sleep 0.5; done
grep -q "clients connected" "$LOG/lt.log" || { cat "$LOG/lt.log"; exit 1; }
sleep 5
sock_delta=0; gw_delta=0
for pid in "${!ROLE[@]}"; do
  d=$(( $(rss_kib "$pid") - BEFORE[$pid] ))
  if [ "${ROLE[$pid]}" = socket ]; then sock_delta=$(( sock_delta + d )); else gw_delta=$(( gw_delta + d )); fi
done
# The client, and its worker processes when it sharded itself past the open-file cap.
client=$(rss_kib "$LT")
for pid in $(ps -o pid= --ppid "$LT"); do client=$(( client + $(rss_kib "$pid") )); done
echo "idle connections: $N"
awk -v d="$sock_delta" -v n="$N" 'BEGIN { printf "socket node RSS per idle connection: %.0f bytes\n", d * 1024 / n }'
awk -v d="$gw_delta" -v n="$N" 'BEGIN { printf "gateway RSS per proxied idle connection: %.0f bytes\n", d * 1024 / n }'
awk -v d="$client" -v n="$N" 'BEGIN { printf "load-test client RSS per connection (total/N): %.0f bytes\n", d * 1024 / n }'
wait "$LT" || true
tail -2 "$LOG/lt.log"
