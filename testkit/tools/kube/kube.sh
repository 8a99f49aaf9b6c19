#!/usr/bin/env bash
# kube.sh — a real Kubernetes control plane (etcd + kube-apiserver +
# kube-controller-manager) on 127.0.0.1, no kubelet, no scheduler.
#
#   kube.sh install      build (once, then drop the Go caches) and print the bin dir
#   kube.sh start DIR    certs, tokens, kubeconfig, start all three, wait ready
#   kube.sh stop DIR     stop all three (TERM, bounded wait, KILL)
#   kube.sh status DIR   show pids / liveness
#   kube.sh prune        drop GOCACHE + GOMODCACHE (~4 GiB), keep the binaries
#   kube.sh version      print the pinned Kubernetes version
#
# After `start DIR`: DIR/kubeconfig (admin, system:masters), DIR/env (ports,
# URLs, token; sourceable), DIR/*.log, DIR/*.pid.  See README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUBE_VERSION="$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2; exit}' "$HERE/go.mod")"
ETCD_MODULE="go.etcd.io/etcd/server/v3"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/rtc/kube-${KUBE_VERSION}"
BIN="$CACHE/bin"
KUBECTL="${KUBECTL:-kubectl}"
START_TIMEOUT="${KUBE_START_TIMEOUT:-180}"   # seconds, start -> ready
STOP_TIMEOUT="${KUBE_STOP_TIMEOUT:-15}"      # seconds per process, TERM -> KILL

log() { echo "kube.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

find_go() {
  if command -v go >/dev/null 2>&1; then command -v go
  elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
  else die "go not found (need Go >= $(awk '$1=="go"{print $2}' "$HERE/go.mod"))"; fi
}

# Stamp = hash of the inputs that decide the binaries.
stamp() { cat "$HERE/go.mod" "$HERE/go.sum" | sha256sum | cut -c1-16; }

have_bins() {
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/etcd" ] &&
    [ "$(cat "$BIN/.stamp" 2>/dev/null)" = "$(stamp)" ]
}

cmd_install() {
  # Built already: drop the Go caches an earlier install may have left (~4 GiB).
  if have_bins; then [ -d "$CACHE/gocache" ] && cmd_prune 2>/dev/null; echo "$BIN"; return 0; fi
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.install.lock"
  flock 9
  if have_bins; then echo "$BIN"; return 0; fi   # another install finished meanwhile
  local go; go="$(find_go)"
  export GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gocache" GOPATH="$CACHE/gopath"
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"
  local tmp="$CACHE/bin.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  local pkg=k8s.io/component-base/version cgv=k8s.io/client-go/pkg/version
  local ld="-s -w"
  for p in $pkg $cgv; do
    ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  local t0=$SECONDS
  log "building kube-apiserver, kube-controller-manager $KUBE_VERSION and etcd into $BIN (nice 19; cold build takes tens of minutes on 2 cores)"
  ( cd "$HERE" && nice -n 19 "$go" build -trimpath -ldflags="$ld" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager ) \
    || die "go build of kube-apiserver/kube-controller-manager failed"
  if ( cd "$HERE" && nice -n 19 "$go" build -trimpath -ldflags="-s -w" -o "$tmp/etcd" "$ETCD_MODULE" ); then :
  else
    log "go build of $ETCD_MODULE failed; falling back to Debian etcd-server"
    command -v etcd >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2; } \
      || die "no etcd: Go build and apt-get install etcd-server both failed"
    ln -sf "$(command -v etcd)" "$tmp/etcd"
  fi
  stamp >"$tmp/.stamp"
  rm -rf "$BIN"; mv "$tmp" "$BIN"
  log "built in $((SECONDS - t0))s"
  # The Go build and module caches (~4 GiB) are not needed once the binaries are there.
  cmd_prune 2>/dev/null
  echo "$BIN"
}

# --- start -------------------------------------------------------------------

free_ports() { # N distinct free TCP ports on 127.0.0.1
  python3 - "$1" <<'EOF' 2>/dev/null && return 0
import socket, sys
ss = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ss.append(s)
print(" ".join(str(s.getsockname()[1]) for s in ss))
EOF
  # fallback without python: random high ports not in LISTEN
  local out=() p
  while [ "${#out[@]}" -lt "$1" ]; do
    p=$((20000 + RANDOM % 30000))
    ss -Htln "sport = :$p" | grep -q . && continue
    [[ " ${out[*]} " == *" $p "* ]] && continue
    out+=("$p")
  done
  echo "${out[*]}"
}

gen_pki() { # $1 = DIR
  local d="$1/pki"; mkdir -p "$d"
  [ -f "$d/sa.pub" ] && return 0
  ( cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=rtc-kube-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    cat >serving.ext <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile serving.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 600 ./*.key )
}

write_kubeconfig() { # file server token user
  local ca; ca="$(base64 -w0 <"$DIR/pki/ca.crt")"
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: rtc
  cluster:
    server: $2
    certificate-authority-data: $ca
users:
- name: $4
  user:
    token: $3
contexts:
- name: rtc
  context: {cluster: rtc, user: $4, namespace: default}
current-context: rtc
EOF
  chmod 600 "$1"
}

alive() { # pidfile -> 0 if its process is alive and belongs to DIR
  local pf="$1" pid i
  [ -f "$pf" ] || return 1
  pid="$(cat "$pf")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # /proc/PID/cmdline reads empty while the process is inside execve (and for zombies): retry.
  for i in 1 2 3 4 5; do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR" && return 0
    sleep 0.05
  done
  return 1
}

launch() { # name cmd...
  local name="$1"; shift
  setsid "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

fail_start() {
  log "error: $*"
  local n
  for n in etcd kube-apiserver kube-controller-manager; do
    [ -f "$DIR/$n.log" ] && { log "--- tail $DIR/$n.log"; tail -n 15 "$DIR/$n.log" >&2; }
  done
  cmd_stop >/dev/null 2>&1 || true
  exit 1
}

cmd_start() {
  [ -n "${DIR:-}" ] || die "usage: kube.sh start DIR"
  mkdir -p "$DIR"; DIR="$(cd "$DIR" && pwd)"
  local n
  for n in etcd kube-apiserver kube-controller-manager; do
    alive "$DIR/$n.pid" && die "$n already running in $DIR (pid $(cat "$DIR/$n.pid")); run: kube.sh stop $DIR"
  done
  command -v "$KUBECTL" >/dev/null || die "kubectl not found"
  command -v openssl >/dev/null || die "openssl not found"
  cmd_install >/dev/null
  local t0; t0=$(date +%s.%N)

  gen_pki "$DIR"
  local admin_token kcm_token
  if [ -f "$DIR/tokens.csv" ]; then
    admin_token="$(awk -F, '$2=="admin"{print $1}' "$DIR/tokens.csv")"
    kcm_token="$(awk -F, '$2=="system:kube-controller-manager"{print $1}' "$DIR/tokens.csv")"
  else
    admin_token="$(openssl rand -hex 24)"; kcm_token="$(openssl rand -hex 24)"
    printf '%s,admin,admin,"system:masters"\n%s,system:kube-controller-manager,kcm\n' \
      "$admin_token" "$kcm_token" >"$DIR/tokens.csv"
    chmod 600 "$DIR/tokens.csv"
  fi

  local ports etcd_port peer_port api_port kcm_port
  read -r etcd_port peer_port api_port kcm_port <<<"$(free_ports 4)"
  local etcd_url="http://127.0.0.1:$etcd_port" api_url="https://127.0.0.1:$api_port"
  write_kubeconfig "$DIR/kubeconfig" "$api_url" "$admin_token" admin
  write_kubeconfig "$DIR/kcm.kubeconfig" "$api_url" "$kcm_token" system:kube-controller-manager
  cat >"$DIR/env" <<EOF
KUBE_VERSION=$KUBE_VERSION
KUBECONFIG=$DIR/kubeconfig
KUBE_APISERVER_URL=$api_url
KUBE_ADMIN_TOKEN=$admin_token
KUBE_CA_FILE=$DIR/pki/ca.crt
ETCD_URL=$etcd_url
KCM_HEALTHZ_URL=https://127.0.0.1:$kcm_port/healthz
EOF

  launch etcd "$BIN/etcd" \
    --name=rtc --data-dir="$DIR/etcd-data" \
    --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="rtc=http://127.0.0.1:$peer_port" --initial-cluster-state=new \
    --unsafe-no-fsync=true --log-level=warn ${ETCD_EXTRA_ARGS:-}

  # apiserver retries etcd itself; no need to wait here.
  # shellcheck disable=SC2086
  launch kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="$etcd_url" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
    --endpoint-reconciler-type=none \
    --shutdown-watch-termination-grace-period=2s \
    --tls-cert-file="$DIR/pki/apiserver.crt" --tls-private-key-file="$DIR/pki/apiserver.key" \
    --client-ca-file="$DIR/pki/ca.crt" \
    --token-auth-file="$DIR/tokens.csv" \
    --authorization-mode=RBAC \
    --service-cluster-ip-range=10.96.0.0/16 \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$DIR/pki/sa.pub" \
    --service-account-signing-key-file="$DIR/pki/sa.key" \
    --profiling=false ${KUBE_APISERVER_EXTRA_ARGS:-}

  local kcfg=(--kubeconfig "$DIR/kubeconfig")
  local deadline=$(( $(date +%s) + START_TIMEOUT )) ready=""
  while [ "$(date +%s)" -lt "$deadline" ]; do
    alive "$DIR/etcd.pid" || fail_start "etcd exited"
    alive "$DIR/kube-apiserver.pid" || fail_start "kube-apiserver exited"
    if [ "$("$KUBECTL" "${kcfg[@]}" get --raw /readyz 2>/dev/null)" = ok ]; then ready=1; break; fi
    sleep 0.2
  done
  [ -n "$ready" ] || fail_start "kube-apiserver not ready within ${START_TIMEOUT}s"
  local t_api; t_api=$(date +%s.%N)

  # shellcheck disable=SC2086
  launch kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$DIR/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" \
    --leader-elect=false \
    --controllers='*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$DIR/pki/sa.key" \
    --root-ca-file="$DIR/pki/ca.crt" \
    --cluster-signing-cert-file="$DIR/pki/ca.crt" --cluster-signing-key-file="$DIR/pki/ca.key" \
    --cluster-name=rtc \
    --profiling=false ${KCM_EXTRA_ARGS:-}

  ready=""
  while [ "$(date +%s)" -lt "$deadline" ]; do
    alive "$DIR/kube-controller-manager.pid" || fail_start "kube-controller-manager exited"
    if "$KUBECTL" "${kcfg[@]}" get namespace default -o name >/dev/null 2>&1 &&
       "$KUBECTL" "${kcfg[@]}" -n default get serviceaccount default -o name >/dev/null 2>&1; then
      ready=1; break
    fi
    sleep 0.2
  done
  [ -n "$ready" ] || fail_start "namespace default / serviceaccount default not present within ${START_TIMEOUT}s"
  local t1; t1=$(date +%s.%N)
  log "ready in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s (apiserver /readyz after $(awk -v a="$t0" -v b="$t_api" 'BEGIN{printf "%.1f", b-a}')s); $api_url"
  echo "$DIR/kubeconfig"
}

# --- stop --------------------------------------------------------------------

stop_one() { # name
  local pf="$DIR/$1.pid" pid i
  [ -f "$pf" ] || return 0
  pid="$(cat "$pf")"
  if alive "$pf"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      alive "$pf" || break
      sleep 0.1
    done
    if alive "$pf"; then log "$1 (pid $pid) ignored TERM for ${STOP_TIMEOUT}s; KILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$pf"
}

cmd_stop() {
  [ -n "${DIR:-}" ] || die "usage: kube.sh stop DIR"
  [ -d "$DIR" ] || return 0
  DIR="$(cd "$DIR" && pwd)"
  stop_one kube-controller-manager
  stop_one kube-apiserver
  stop_one etcd
}

cmd_status() {
  [ -n "${DIR:-}" ] || die "usage: kube.sh status DIR"
  DIR="$(cd "$DIR" && pwd)"
  local n rc=0
  for n in etcd kube-apiserver kube-controller-manager; do
    if alive "$DIR/$n.pid"; then echo "$n running pid $(cat "$DIR/$n.pid")"; else echo "$n stopped"; rc=1; fi
  done
  return $rc
}

cmd_prune() {
  [ -d "$CACHE/gomod" ] && chmod -R u+w "$CACHE/gomod"
  rm -rf "$CACHE/gomod" "$CACHE/gocache" "$CACHE/gopath"
  du -sh "$CACHE" >&2
}

case "${1:-}" in
  install) cmd_install ;;
  start) DIR="${2:-}"; cmd_start ;;
  stop) DIR="${2:-}"; cmd_stop ;;
  status) DIR="${2:-}"; cmd_status ;;
  prune) cmd_prune ;;
  version) echo "$KUBE_VERSION" ;;
  *) echo "usage: $0 {install|start DIR|stop DIR|status DIR|prune|version}" >&2; exit 2 ;;
esac
