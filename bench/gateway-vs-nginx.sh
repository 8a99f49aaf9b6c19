#!/usr/bin/env bash
# The gateway against nginx (Debian's), side by side at saturation. Same upstream (`rtc-echo
# serve`, a WebSocket echo server), same client (`rtc-echo run`: closed loop, each of CONNS
# connections keeps one message in flight, so the rate is what the path carries), nginx configured
# as the replaced design had it (2 workers, worker_connections 100000, 3600 s timeouts,
# Upgrade/Connection headers). The gateway routes /ws/echo-0/connect to the echo server, which the
# script registers in Redis as a node's heartbeat would.
#
# RUNS rounds, each measuring direct, gateway and nginx in a rotated order. Prints one line per
# run and per figure:
#   - echoes/s, p50, p99, proxy CPU per echo (user+system of the proxy's processes / echoes),
#     and with PERF=1 syscalls and context switches per echo (perf stat);
#   - memory per proxied idle WebSocket at IDLE connections (RSS growth / IDLE);
#   - failed upgrades among UPGRADES upgrade → echo → close cycles;
#   - the ranges over the runs and the ratios gateway/nginx.
# Exits non-zero when a run is invalid: a failed upgrade or broken connection, or a run that
# carried fewer than 1,000 echoes/s.
#   bench/gateway-vs-nginx.sh     (CONNS=1000 SECS=10 RUNS=3 IDLE=9000 UPGRADES=20000)
# EXTRA="sockmap uring" adds two measurement-only byte splices from bench/kernel-splice/ (C,
# built here with clang, libbpf and liburing) as further targets of the echo runs: the kernel's
# sockmap redirect, which never wakes the proxy, and an io_uring loop with no epoll. Machine CPU
# per echo (all processes and kernel threads) is printed for every target, since a sockmap's
# work runs in kworkers and is nobody's process time.
# The sockmap target needs root (CAP_BPF and CAP_NET_ADMIN) and a kernel with
# CONFIG_BPF_STREAM_PARSER; io_uring needs it not disabled (kernel.io_uring_disabled = 0).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-1000}
SECS=${SECS:-10}
RUNS=${RUNS:-3}
IDLE=${IDLE:-9000}
UPGRADES=${UPGRADES:-20000}
SIZE=${SIZE:-32}
BASE=${BASE_PORT:-21080}
GW=$BASE ADMIN=$(( BASE + 1 )) ECHO=$(( BASE + 3 )) NGX=$(( BASE + 5 )) REDIS=$(( BASE + 6 ))
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
if [ "${PERF:-0}" = 1 ] && ! command -v perf >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
cargo build --release --bins --quiet
BIN=target/release
LOG=$(mktemp -d)
EXTRA=${EXTRA:-}
case " $EXTRA " in *" sockmap "*|*" uring "*)
  dpkg -s clang libbpf-dev liburing-dev >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libbpf-dev liburing-dev >/dev/null; }
  K=bench/kernel-splice
  clang -O2 -g -target bpf -I"/usr/include/$(gcc -dumpmachine)" -c $K/splice.bpf.c -o "$LOG/splice.bpf.o"
  cc -O2 $K/sockmap.c -o "$LOG/sockmap" -lbpf
  cc -O2 $K/uring.c -o "$LOG/uring" -luring ;;
esac
SOCKMAP=$(( BASE + 8 )) URING=$(( BASE + 9 ))
PIDS=()
cleanup() {
  # The io_uring splice's second worker is a child of the first.
  [ -n "${URING_PID:-}" ] && kill $(ps -o pid= --ppid "$URING_PID") 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$LOG/nginx/nginx.pid" ] && kill -QUIT "$(cat "$LOG/nginx/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$LOG"
}
trap cleanup EXIT

redis-server --bind 127.0.0.1 --port "$REDIS" --save '' --appendonly no > "$LOG/redis.log" 2>&1 &
PIDS+=($!)
$BIN/rtc-echo serve --listen "127.0.0.1:$ECHO" --threads 1 > "$LOG/echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=($ECHO_PID)
for _ in $(seq 1 50); do redis-cli -p "$REDIS" ping >/dev/null 2>&1 && break; sleep 0.2; done
redis-cli -p "$REDIS" set rtc:node:echo-0 \
  "{\"nodeId\":\"echo-0\",\"addr\":\"127.0.0.1:$ECHO\",\"connections\":0,\"msgsPerSec\":0,\"p95Ms\":0,\"cpu\":0,\"memBytes\":0,\"draining\":false,\"ready\":true,\"slots\":[],\"epoch\":0,\"tsMs\":0}" \
  EX 36000 > /dev/null
LISTEN_ADDR=127.0.0.1:$GW ADMIN_ADDR=127.0.0.1:$ADMIN REDIS_URL=redis://127.0.0.1:$REDIS \
  BALANCER_ADDRS=127.0.0.1:$(( BASE + 7 )) RESOLVE_IN_GATEWAY=false RUST_LOG=warn \
  $BIN/rtc-gateway > "$LOG/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)

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
  upstream socket { server 127.0.0.1:$ECHO; }
  server {
    listen 127.0.0.1:$NGX;
    proxy_connect_timeout 3600s; proxy_read_timeout 3600s; proxy_send_timeout 3600s;
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
PIDS+=($NGINX_PID)

# Ready when an upgrade through the gateway (which needs discovery to have seen echo-0) succeeds.
for _ in $(seq 1 60); do
  r=$($BIN/rtc-echo upgrades --target "127.0.0.1:$GW" --path /ws/echo-0/connect --count 1 --concurrency 1 2>/dev/null || true)
  case $r in *'"ok":1'*) break ;; esac
  sleep 0.5
done
case $r in *'"ok":1'*) ;; *) echo "the gateway never routed to the echo server: $r"; tail -5 "$LOG/gateway.log"; exit 1 ;; esac

for extra in $EXTRA; do
  case $extra in
    sockmap) "$LOG/sockmap" "$SOCKMAP" "$ECHO" "$LOG/splice.bpf.o" > "$LOG/sockmap.log" 2>&1 & SOCKMAP_PID=$! ;;
    uring) "$LOG/uring" "$URING" "$ECHO" 2 > "$LOG/uring.log" 2>&1 & URING_PID=$! ;;
    *) echo "unknown EXTRA target $extra"; exit 1 ;;
  esac
  PIDS+=($!)
done
sleep 0.5

with_children() { echo "$1" $(ps -o pid= --ppid "$1"); }
pids_of() {
  case $1 in
    gateway) echo "$GW_PID" ;; nginx) with_children "$NGINX_PID" ;;
    sockmap) echo "$SOCKMAP_PID" ;; uring) with_children "$URING_PID" ;; *) echo "" ;;
  esac
}
port_of() {
  case $1 in
    gateway) echo "$GW" ;; nginx) echo "$NGX" ;; direct) echo "$ECHO" ;; sockmap) echo "$SOCKMAP" ;; uring) echo "$URING" ;;
  esac
}
# CPU clock ticks (user + system) used so far by the given processes.
ticks() { local t=0; for p in "$@"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done; echo "$t"; }
# Busy clock ticks of the whole machine so far (user, nice, system, irq, softirq).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
rss_kib() { local t=0; for p in "$@"; do t=$(( t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) )); done; echo $t; }

INVALID=0
RESULTS=$LOG/results.jsonl
REPORT="python3 bench/echo_report.py"
echo "closed-loop echo: $CONNS connections, $SIZE-byte messages, $SECS s per run, $RUNS runs"
TARGETS=(direct gateway nginx $EXTRA)
for run in $(seq 1 "$RUNS"); do
  # Each run starts one target later than the one before.
  shift_by=$(( (run - 1) % ${#TARGETS[@]} ))
  for target in "${TARGETS[@]:$shift_by}" "${TARGETS[@]:0:$shift_by}"; do
    pids=$(pids_of $target)
    perf_out=""
    if [ "${PERF:-0}" = 1 ] && [ -n "$pids" ]; then
      perf_out=$LOG/perf-$target-$run
      perf stat -e raw_syscalls:sys_enter,context-switches -x, -o "$perf_out" \
        -p "$(echo $pids | tr ' ' ,)" -- sleep $(( SECS + 2 )) &
      PERF_PID=$!
    fi
    if [ -n "${PROFILE:-}" ] && [ "$PROFILE" = "$target" ] && [ "$run" = 1 ]; then
      # PROFILE=gateway|nginx: a CPU profile of that proxy's first run, for `perf report -i`.
      perf record -F 999 -g -o "bench/out/perf-$target.data" -p "$(echo $pids | tr ' ' ,)" -- sleep $(( SECS + 2 )) 2>/dev/null &
      PERF_PID=$!
    fi
    c0=$(ticks $pids) m0=$(machine_ticks)
    $BIN/rtc-echo run --target "127.0.0.1:$(port_of $target)" --path /ws/echo-0/connect \
      --connections "$CONNS" --secs "$SECS" --warmup 2 --size "$SIZE" > "$LOG/$target-$run.json" 2>/dev/null || true
    c1=$(ticks $pids) m1=$(machine_ticks)
    [ -n "${PERF_PID:-}" ] && { wait "$PERF_PID" || true; PERF_PID=""; }
    $REPORT run "$RESULTS" "$LOG/$target-$run.json" "$target" "$run" "$(( c1 - c0 ))" "$(( m1 - m0 ))" "$(getconf CLK_TCK)" "$SECS" 2 $perf_out || INVALID=1
    sleep 1
  done
done

if [ "${ONLY_ECHO:-0}" = 1 ]; then $REPORT summary "$RESULTS"; exit "$INVALID"; fi
echo "memory per proxied idle WebSocket at $IDLE connections"
for target in gateway nginx; do
  pids=$(pids_of $target)
  before=$(rss_kib $pids)
  $BIN/rtc-echo run --target "127.0.0.1:$(port_of $target)" --path /ws/echo-0/connect --connections "$IDLE" \
    --idle --secs 6 --warmup 0 --threads 1 > "$LOG/idle-$target.json" 2> "$LOG/idle-$target.err" &
  LT=$!
  for _ in $(seq 1 240); do grep -q "clients connected" "$LOG/idle-$target.err" && break; sleep 0.5; done
  sleep 3
  pids=$(pids_of $target)
  after=$(rss_kib $pids)
  wait "$LT" || true
  $REPORT idle "$RESULTS" "$LOG/idle-$target.json" "$target" "$before" "$after" "$IDLE" || INVALID=1
  sleep 3
done

echo "upgrade → echo → close, $UPGRADES times"
for target in gateway nginx; do
  $BIN/rtc-echo upgrades --target "127.0.0.1:$(port_of $target)" --path /ws/echo-0/connect \
    --count "$UPGRADES" --concurrency 100 > "$LOG/upgrades-$target.json" 2>/dev/null || true
  $REPORT upgrades "$RESULTS" "$LOG/upgrades-$target.json" "$target" || INVALID=1
done

echo "summary (ranges over $RUNS runs; ratio gateway/nginx within each run)"
$REPORT summary "$RESULTS"
[ "$INVALID" = 0 ] || { echo "invalid run (see above)"; exit 1; }
