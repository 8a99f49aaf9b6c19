# Shared by the bench scripts that measure the local stack (sourced, not run).

# start_stack KAFKA NODES BASE: builds the release binaries and starts rtc-local with
# LOCAL_KAFKA=KAFKA, NODES socket nodes and ports from BASE (gateway BASE, admin BASE+1, balancer
# BASE+2, socket nodes BASE+10 on), then waits until it is up. Sets BIN, WORK (a temporary
# directory, removed at exit unless KEEP=1), LOCAL (rtc-local's pid), NODE_PIDS (the socket
# nodes) and KPID (the process doing Kafka's work: the broker, or rtc-local itself for the
# embedded broker and the mock, which run inside it). Stops the stack at exit.
start_stack() {
  cargo build --release --bins --quiet
  BIN=target/release
  WORK=$(mktemp -d)
  LOCAL_KAFKA=$1 $BIN/rtc-local --nodes "$2" --gateway-port "$3" --admin-port $(( $3 + 1 )) \
    --balancer-port $(( $3 + 2 )) --socket-base-port $(( $3 + 10 )) > "$WORK/local.log" 2>&1 &
  LOCAL=$!
  trap 'kill -INT $LOCAL 2>/dev/null || true; wait $LOCAL 2>/dev/null || true; [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT
  for _ in $(seq 1 360); do grep -q "is up" "$WORK/local.log" && break; sleep 0.5; done
  grep -q "is up" "$WORK/local.log" || { tail -20 "$WORK/local.log"; exit 1; }
  NODE_PIDS=()
  local pid
  for pid in $(ps -o pid= --ppid "$LOCAL"); do
    case "$(tr '\0' ' ' < "/proc/$pid/cmdline")" in *rtc-socket*) NODE_PIDS+=("$pid") ;; esac
  done
  KPID=$LOCAL
  if [ "$1" = broker ]; then
    KPID=$(cat /dev/shm/rtc-kafka-"$LOCAL"-*/kafka.pid 2>/dev/null || cat "${TMPDIR:-/tmp}"/rtc-kafka-"$LOCAL"-*/kafka.pid)
  fi
}

# ticks PID...: CPU time (user + system) of the processes together, in clock ticks.
ticks() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '{ print $14 + $15 }' "/proc/$p/stat") )); done; echo "$t"; }
