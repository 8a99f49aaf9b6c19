#!/usr/bin/env bash
# image-smoke.sh — builds the image from the Dockerfile with podman and runs the system from it:
# balancer, three socket nodes and the gateway as containers (host network, loopback ports),
# against Redis and a real Kafka broker on loopback, then a short rtc-loadtest run — from the
# image too — that must lose nothing.
#
# No Docker engine and no registry here (../shared/TESTING.md): the runtime base image is made
# once with debootstrap and cached; the builder stage is replaced by binaries built on the host
# (`--build-context builder=DIR`), so CI does not compile twice. Users build with plain
# `docker build .` / `podman build .`, which runs the builder stage.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. scripts/lib.sh
BIN_DIR="${BIN_DIR:-$ROOT/target/debug}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/rtc/images"
IMAGE="${IMAGE:-reactive-rtc:ci}"
BASE="docker.io/library/debian:bookworm-slim"
mkdir -p "$CACHE"
log() { echo "image-smoke: $*" >&2; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing podman and debootstrap (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman buildah \
    skopeo runc catatonit debootstrap uidmap containernetworking-plugins >/dev/null
fi
# crun fails on this kernel's cgroups and there is no CAP_SYS_RESOURCE for the default ulimits.
printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n' \
  >"$CACHE/containers.conf"
export CONTAINERS_CONF="$CACHE/containers.conf"

if ! podman image exists "$BASE"; then
  if [ ! -s "$CACHE/bookworm-minbase.tar" ]; then
    log "making the runtime base image with debootstrap (once, ~1 min)"
    root="$(mktemp -d)"
    debootstrap --variant=minbase bookworm "$root" >/dev/null
    tar -C "$root" --numeric-owner -cf "$CACHE/bookworm-minbase.tar.tmp" .
    mv "$CACHE/bookworm-minbase.tar.tmp" "$CACHE/bookworm-minbase.tar"
    rm -rf "$root"
  fi
  podman import "$CACHE/bookworm-minbase.tar" "$BASE" >/dev/null
fi

CTX="$(mktemp -d)"
NAMES=()
PIDS=()
WORK="$(mktemp -d)"
cleanup() {
  for n in "${NAMES[@]}"; do podman rm -f -t 2 "$n" >/dev/null 2>&1 || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ -d "$WORK/kafka" ] && testkit/tools/kafka/kafka.sh stop "$WORK/kafka" >/dev/null 2>&1 || true
  rm -rf "$CTX" "$WORK"
  # The image and the untagged ones earlier runs left (~400 MB each) would fill the disk.
  podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true
}
trap cleanup EXIT

mkdir -p "$CTX/out"
for b in rtc-gateway rtc-balancer rtc-socket rtc-loadtest; do cp "$BIN_DIR/$b" "$CTX/out/"; done
log "building $IMAGE"
podman build -q --pull=never --build-context "builder=$CTX" -t "$IMAGE" . >/dev/null
user="$(podman image inspect -f '{{.Config.User}}' "$IMAGE")"
[ "$user" = "10001:10001" ] || { log "image user is '$user', not 10001:10001"; exit 1; }
for b in rtc-gateway rtc-balancer rtc-socket rtc-loadtest; do
  # Every shared library the binary needs is in the image (it would not start otherwise).
  podman run --rm --network host "$IMAGE" "/usr/local/bin/$b" --version >/dev/null
done
log "image: user $user, size $(podman image inspect -f '{{.Size}}' "$IMAGE") bytes, all four binaries start"

read -r REDIS KAFKA BAL GW ADMIN S0 S1 S2 <<<"$(free_ports 8)"

redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
testkit/tools/kafka/kafka.sh install >/dev/null
testkit/tools/kafka/kafka.sh start "$WORK/kafka" "$KAFKA" >/dev/null

SHARED=(-e "KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA" -e "REDIS_URL=redis://127.0.0.1:$REDIS/" -e SLOTS=16
        -e RING_SECRET=image-smoke-secret -e RUST_LOG=warn)
run() { # name command env...
  local name="rtc-smoke-$1-$$"; shift
  local cmd="$1"; shift
  podman run -d --name "$name" --network host "$@" "$IMAGE" "$cmd" >/dev/null
  NAMES+=("$name")
}
run balancer /usr/local/bin/rtc-balancer "${SHARED[@]}" -e "LISTEN_ADDR=127.0.0.1:$BAL" -e RING_INTERVAL_MS=500
i=0
for p in "$S0" "$S1" "$S2"; do
  run "socket-$i" /usr/local/bin/rtc-socket "${SHARED[@]}" -e "NODE_ID=socket-$i" \
    -e "LISTEN_ADDR=127.0.0.1:$p" -e HEARTBEAT_INTERVAL_MS=500
  i=$((i + 1))
done
run gateway /usr/local/bin/rtc-gateway -e "LISTEN_ADDR=127.0.0.1:$GW" -e "ADMIN_ADDR=127.0.0.1:$ADMIN" \
  -e "BALANCER_ADDRS=127.0.0.1:$BAL" -e "REDIS_URL=redis://127.0.0.1:$REDIS/" -e RUST_LOG=warn

wait_ok() { # url
  wait_http "$1" && return 0
  for n in "${NAMES[@]}"; do podman logs --tail 20 "$n" >&2 || true; done
  exit 1
}
for url in "http://127.0.0.1:$BAL/healthz" "http://127.0.0.1:$S0/healthz" "http://127.0.0.1:$S1/healthz" \
           "http://127.0.0.1:$S2/healthz" "http://127.0.0.1:$ADMIN/healthz"; do wait_ok "$url"; done
wait_ok "http://127.0.0.1:$ADMIN/readyz"
for _ in $(seq 1 120); do
  [ "$(curl -fsS "http://127.0.0.1:$BAL/metrics" | awk '/^rtc_lb_ring_nodes /{print $2}')" = 3 ] && break
  sleep 0.5
done
log "five containers healthy; the ring has $(curl -fsS "http://127.0.0.1:$BAL/metrics" | awk '/^rtc_lb_ring_nodes /{print $2}') nodes"

log "rtc-loadtest from the image: 300 connections, 10 s"
podman run --rm --network host "$IMAGE" /usr/local/bin/rtc-loadtest --target "127.0.0.1:$GW" \
  --connections 300 --ramp-up 2 --duration 10 --msg-interval 500 --fail-if 'lost==0' \
  | tail -n 25
log "passed: the system runs from the image and lost nothing"
