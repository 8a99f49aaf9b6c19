#!/usr/bin/env bash
# The gateway against nginx 1.22 (Debian), side by side in one run: same socket node upstream,
# same client (rtc-loadtest), nginx configured as the replaced design had it (worker_connections
# 100000, 3600 s timeouts, Upgrade/Connection headers). Prints one line per figure:
#   - WebSocket round trips (ping → pong, answered by the node, no Kafka): achieved rate and
#     latency direct to the node, through the gateway and through nginx;
#   - memory per proxied idle WebSocket at IDLE connections;
#   - failed upgrades in each run.
# Exits non-zero when a run is invalid: a failed upgrade, or a client that could not offer its
# load (fewer than 90 % of the round trips asked for were answered).
#   bench/gateway-vs-nginx.sh      (CONNS=1000 clients, INTERVAL=50 ms each, IDLE=9000)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-1000}
INTERVAL=${INTERVAL:-50}
SECS=${SECS:-15}
IDLE=${IDLE:-9000}
BASE=${BASE_PORT:-21080}
NGX=$(( BASE + 5 ))
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
cargo build --release --bins --quiet
BIN=target/release
LOG=$(mktemp -d)
export CONN_PER_POD=${CONN_PER_POD:-1000000}
$BIN/rtc-local --nodes 1 --gateway-port "$BASE" --admin-port $(( BASE + 1 )) --balancer-port $(( BASE + 2 )) --socket-base-port $(( BASE + 10 )) > "$LOG/local.log" 2>&1 &
LOCAL=$!
mkdir -p "$LOG/nginx"
cat > "$LOG/nginx/nginx.conf" <<NGINX
worker_processes 2;
worker_rlimit_nofile 20000;
pid $LOG/nginx/nginx.pid;
error_log $LOG/nginx/error.log warn;
events { worker_connections 100000; }
http {
  access_log off;
  client_body_temp_path $LOG/nginx/body; proxy_temp_path $LOG/nginx/proxy;
  fastcgi_temp_path $LOG/nginx/fcgi; uwsgi_temp_path $LOG/nginx/uwsgi; scgi_temp_path $LOG/nginx/scgi;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream balancer { server 127.0.0.1:$(( BASE + 2 )); }
  upstream socket { server 127.0.0.1:$(( BASE + 10 )); }
  server {
    listen 127.0.0.1:$NGX;
    proxy_connect_timeout 3600s; proxy_read_timeout 3600s; proxy_send_timeout 3600s;
    location /api/ { proxy_pass http://balancer; }
    location /ws/ {
      proxy_pass http://socket;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
    }
  }
}
NGINX
nginx -p "$LOG/nginx" -c "$LOG/nginx/nginx.conf" -g 'daemon off;' 2> "$LOG/nginx/stderr" &
NGINX_PID=$!
cleanup() { kill -QUIT "$NGINX_PID" 2>/dev/null || true; kill -INT "$LOCAL" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$LOG"; }
trap cleanup EXIT
for _ in $(seq 1 120); do grep -q "is up" "$LOG/local.log" && break; sleep 0.5; done
grep -q "is up" "$LOG/local.log" || { tail -20 "$LOG/local.log"; exit 1; }
sleep 2
GW_PID=""
INVALID=0
for pid in $(ps -o pid= --ppid "$LOCAL"); do
  case "$(tr '\0' ' ' < "/proc/$pid/cmdline")" in *rtc-gateway*) GW_PID=$pid ;; esac
done
rss_kib() { local t=0; for p in "$@"; do t=$(( t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) )); done; echo $t; }
nginx_pids() { echo "$NGINX_PID" $(ps -o pid= --ppid "$NGINX_PID"); }
# CPU seconds (user + system) used so far by the given processes.
cpu_secs() { local t=0; for p in "$@"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done; echo "$t"; }

echo "round trips: $CONNS clients, one ping every $INTERVAL ms each, $SECS s"
for target in direct gateway nginx; do
  case $target in
    direct) args=(--target "127.0.0.1:$(( BASE + 2 ))" --node-routes "127.0.0.1:$(( BASE + 1 ))"); proxy="" ;;
    gateway) args=(--target "127.0.0.1:$BASE"); proxy=$GW_PID ;;
    nginx) args=(--target "127.0.0.1:$NGX"); proxy=$(nginx_pids) ;;
  esac
  cpu0=$(cpu_secs $proxy)
  $BIN/rtc-loadtest "${args[@]}" --connections "$CONNS" --ramp-up 3 --duration "$SECS" --msg-interval "$INTERVAL" \
    --pattern ping --prefix "rt-$target" --json 2>/dev/null > "$LOG/$target.json" || true
  cpu1=$(cpu_secs $proxy)
  python3 - "$LOG/$target.json" "$target" "$SECS" "$(( cpu1 - cpu0 ))" "$CONNS" "$INTERVAL" <<'PY' || INVALID=1
import json, sys
t = sys.argv[2]; secs = float(sys.argv[3]); ticks = int(sys.argv[4])
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"{t:>8}: no report ({e})")
cpu = f"proxy CPU {ticks * 1e4 / max(1, r['pongs']):5.1f} us/round trip" if t != "direct" else ""
print(f"{t:>8}: {r['pongs'] / secs:8.0f} round trips/s  p50 {r['latency_ms']['p50']:6.2f} ms  p99 {r['latency_ms']['p99']:7.2f} ms  failed upgrades {r['connect_failures']}  {cpu}")
asked = int(sys.argv[5]) * secs * 1000 / int(sys.argv[6])
if r["connect_failures"] or r["pongs"] < 0.9 * asked:
    sys.exit(f"{t:>8}: invalid run: {r['connect_failures']} failed upgrades, {r['pongs']} of {asked:.0f} round trips answered")
PY
done

[ "${SKIP_IDLE:-0}" = 1 ] && exit "$INVALID"
echo "memory per proxied idle WebSocket at $IDLE connections"
for target in gateway nginx; do
  if [ $target = gateway ]; then port=$BASE; pids=$GW_PID; else port=$NGX; pids=$(nginx_pids); fi
  before=$(rss_kib $pids)
  $BIN/rtc-loadtest --target "127.0.0.1:$port" --connections "$IDLE" --ramp-up 8 --duration 12 --msg-interval 36000000 \
    --prefix "idle-$target" --json 2>"$LOG/idle-$target.err" > "$LOG/idle-$target.json" &
  LT=$!
  for _ in $(seq 1 240); do grep -q "clients connected" "$LOG/idle-$target.err" && break; sleep 0.5; done
  sleep 4
  [ $target = nginx ] && pids=$(nginx_pids)
  after=$(rss_kib $pids)
  wait "$LT" || true
  failed=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['connect_failures'])" "$LOG/idle-$target.json")
  awk -v a="$after" -v b="$before" -v n="$IDLE" -v t="$target" -v f="$failed" 'BEGIN { printf "%8s: %6.0f bytes per idle connection (failed upgrades %d)\n", t, (a - b) * 1024 / n, f }'
  sleep 3
done
[ "$INVALID" = 0 ] || { echo "invalid run (see above)"; exit 1; }
