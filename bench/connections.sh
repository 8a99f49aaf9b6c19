#!/usr/bin/env bash
# How many concurrent connections one machine holds, and what each costs the client: starts the
# local stack with NODES socket nodes (release build), then rtc-loadtest opens N clients —
# resolve through the gateway, WebSockets straight to the nodes (one gateway process cannot hold
# 2 fds × 100k under a 20k open-file cap), sharded over worker processes — holds them while each
# sends a message every MSG_INTERVAL ms, and checks nothing was lost. Then a short ping run
# measures client CPU per round trip (user and kernel) beside the kernel floor of plain TCP on
# loopback (bench/tcp-floor.py). One line per figure.
#   bench/connections.sh [N]       (default 100000; NODES defaults to ceil(N/16000))
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
NODES=${NODES:-$(( (N + 15999) / 16000 ))}
HOLD=${HOLD:-30}
RAMP=${RAMP:-$(( N / 1500 + 5 ))}
MSG_INTERVAL=${MSG_INTERVAL:-30000}
BASE=${BASE_PORT:-28080}
# Capacity far above the test, so the ring does not rebalance while everyone ramps up together.
export CONN_PER_POD=${CONN_PER_POD:-1000000}
cargo build --release --bins --quiet
BIN=target/release
LOG=$(mktemp -d)
$BIN/rtc-local --nodes "$NODES" --gateway-port "$BASE" --admin-port $(( BASE + 1 )) --balancer-port $(( BASE + 2 )) --socket-base-port $(( BASE + 10 )) > "$LOG/local.log" 2>&1 &
LOCAL=$!
cleanup() { kill -INT "$LOCAL" 2>/dev/null || true; [ -n "${LT:-}" ] && kill "$LT" 2>/dev/null || true; wait 2>/dev/null || true; if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $LOG"; else rm -rf "$LOG"; fi; }
trap cleanup EXIT
for _ in $(seq 1 240); do grep -q "is up" "$LOG/local.log" && break; sleep 0.5; done
grep -q "is up" "$LOG/local.log" || { tail -20 "$LOG/local.log"; exit 1; }
sleep 3
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
$BIN/rtc-loadtest --target "127.0.0.1:$BASE" --node-routes "127.0.0.1:$(( BASE + 1 ))" --connections "$N" --ramp-up "$RAMP" \
  --duration "$HOLD" --msg-interval "$MSG_INTERVAL" --handshakes 512 --prefix "c$N" --json > "$LOG/lt.json" 2> "$LOG/lt.err" &
LT=$!
# Sample the clients' memory while all are connected.
for _ in $(seq 1 $(( RAMP * 4 + 600 ))); do [ "$(grep -c 'clients connected' "$LOG/lt.err" || true)" -ge 1 ] && break; sleep 0.5; done
sleep $(( HOLD / 2 ))
workers_kib=$(( $(rss_kib "$LT") ))
for pid in $(ps -o pid= --ppid "$LT"); do workers_kib=$(( workers_kib + $(rss_kib "$pid") )); done
peak_sockets=0
for pid in $(ps -o pid= --ppid "$LOCAL"); do
  case "$(tr '\0' ' ' < "/proc/$pid/cmdline")" in *rtc-socket*) peak_sockets=$(( peak_sockets + $(ls "/proc/$pid/fd" | wc -l) )) ;; esac
done
wait "$LT" || true
LT=
python3 - "$LOG/lt.json" "$N" "$workers_kib" "$peak_sockets" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); n = int(sys.argv[2]); kib = int(sys.argv[3])
print(f"connections requested: {n}")
print(f"connections held (clients that ended connected): {r['clients'] - r['connect_failures']}")
print(f"open fds on socket nodes while held: {sys.argv[4]}")
print(f"client RSS per connection: {kib * 1024 / max(1, r['clients']):.0f} bytes")
print(f"messages sent {r['sent']} acked {r['acked']} unacked {r['unacked']} delivered {r['delivered']} lost {r['lost']} duplicated {r['duplicated']} connect failures {r['connect_failures']}")
print(f"latency ms p50 {r['latency_ms']['p50']:.1f} p99 {r['latency_ms']['p99']:.1f}")
PY
# Client CPU per round trip: ping round trips answered by the nodes.
$BIN/rtc-loadtest --target "127.0.0.1:$BASE" --node-routes "127.0.0.1:$(( BASE + 1 ))" --connections 1000 --ramp-up 2 \
  --duration 10 --msg-interval 100 --pattern ping --prefix cpu --json 2>/dev/null > "$LOG/cpu.json" || true
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"client CPU per round trip: {r['client_cpu_us_per_msg']:.1f} us = {r['client_user_us_per_msg']:.1f} user + {r['client_sys_us_per_msg']:.1f} kernel ({r['pongs']} round trips, p99 {r['latency_ms']['p99']:.1f} ms)\")" "$LOG/cpu.json"
# The kernel's floor for the same traffic (1 send + 1 receive per round trip) without us.
python3 bench/tcp-floor.py 1000 10000 10
