#!/usr/bin/env bash
# minikube-demo.sh — the whole system on minikube, one command:
#   scripts/minikube-demo.sh          start (or update) the demo and print where to connect
#   scripts/minikube-demo.sh --down   remove it (the namespace, the tunnel, the minikube profile)
#
# Needs: minikube (>= 1.33), kubectl, and a container runtime minikube can use (docker or
# podman driver). Sizes: MINIKUBE_CPUS (4), MINIKUBE_MEMORY (8192 MB). The image is built
# inside minikube (`minikube image build`), so no registry is involved. KEDA is optional: when
# its CRD is missing, the backup ScaledObject is left out (the leader balancer scales anyway).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PROFILE="${MINIKUBE_PROFILE:-rtc}"
CPUS="${MINIKUBE_CPUS:-4}"
MEMORY="${MINIKUBE_MEMORY:-8192}"
NS=rtc
TUNNEL_PID_FILE="${XDG_RUNTIME_DIR:-/tmp}/rtc-minikube-tunnel.pid"
say() { echo "minikube-demo: $*"; }
die() { echo "minikube-demo: error: $*" >&2; exit 1; }

for tool in minikube kubectl; do
  command -v "$tool" >/dev/null || die "$tool is not installed (https://minikube.sigs.k8s.io/docs/start/)"
done
mk() { minikube -p "$PROFILE" "$@"; }
kc() { kubectl --context "$PROFILE" "$@"; }

if [ "${1:-}" = "--down" ]; then
  if [ -f "$TUNNEL_PID_FILE" ]; then kill "$(cat "$TUNNEL_PID_FILE")" 2>/dev/null || true; rm -f "$TUNNEL_PID_FILE"; fi
  kc delete namespace "$NS" --ignore-not-found --wait=true || true
  mk delete
  say "removed"
  exit 0
fi

if ! mk status >/dev/null 2>&1; then
  say "starting minikube (profile $PROFILE, $CPUS CPUs, $MEMORY MB)"
  mk start --cpus="$CPUS" --memory="$MEMORY" --kubernetes-version=stable
fi
mk addons enable metrics-server >/dev/null

say "building the image inside minikube (the Dockerfile's builder stage compiles the workspace: ~10 min the first time)"
mk image build -t reactive-rtc:dev .

say "applying manifests/overlays/minikube"
rendered="$(mktemp)"
kc kustomize manifests/overlays/minikube >"$rendered"
if ! kc get crd scaledobjects.keda.sh >/dev/null 2>&1; then
  say "KEDA is not installed: leaving out the backup ScaledObject"
  python3 - "$rendered" <<'EOF'
import sys
docs = open(sys.argv[1]).read().split("\n---\n")
keep = [d for d in docs if "kind: ScaledObject" not in d]
open(sys.argv[1], "w").write("\n---\n".join(keep))
EOF
fi
kc apply --server-side -f "$rendered"
rm -f "$rendered"

say "waiting for every rollout"
kc -n "$NS" rollout status statefulset/kafka --timeout=300s
for d in redis load-balancer socket gateway prometheus grafana kafka-exporter; do
  kc -n "$NS" rollout status "deployment/$d" --timeout=300s
done

if [ ! -f "$TUNNEL_PID_FILE" ] || ! kill -0 "$(cat "$TUNNEL_PID_FILE")" 2>/dev/null; then
  say "starting minikube tunnel (it may ask for sudo) so that the LoadBalancer gets an external IP"
  mk tunnel >/tmp/rtc-minikube-tunnel.log 2>&1 &
  echo $! >"$TUNNEL_PID_FILE"
fi
ip=""
for _ in $(seq 1 60); do
  ip="$(kc -n "$NS" get service gateway -o jsonpath='{.status.loadBalancer.ingress[0].ip}' 2>/dev/null || true)"
  [ -n "$ip" ] && break
  sleep 2
done
[ -n "$ip" ] || die "the gateway Service got no external IP (is 'minikube tunnel' running?)"

say "load: rtc-loadtest from the image against the gateway (300 connections, 45 s)"
kc -n "$NS" delete pod rtc-loadtest --ignore-not-found >/dev/null
kc -n "$NS" run rtc-loadtest --restart=Never --image=reactive-rtc:dev --image-pull-policy=Never \
  --overrides='{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":10001,"seccompProfile":{"type":"RuntimeDefault"}},"containers":[{"name":"rtc-loadtest","image":"reactive-rtc:dev","imagePullPolicy":"Never","command":["/usr/local/bin/rtc-loadtest","--target","gateway.rtc.svc.cluster.local:80","--connections","300","--ramp-up","5","--duration","45","--fail-if","lost==0"],"securityContext":{"allowPrivilegeEscalation":false,"readOnlyRootFilesystem":true,"capabilities":{"drop":["ALL"]}}}]}}' >/dev/null
sleep 35   # ramp-up, then two Prometheus scrapes
kc -n "$NS" port-forward service/prometheus 19091:9090 >/dev/null 2>&1 &
pf=$!
sleep 2
say "connections per socket pod (Prometheus):"
curl -fsS --get http://127.0.0.1:19091/api/v1/query \
  --data-urlencode 'query=sum by (pod) (rtc_socket_active_connections)' \
  | python3 -c 'import json,sys; [print("  %-40s %s" % (r["metric"].get("pod"), r["value"][1])) for r in json.load(sys.stdin)["data"]["result"]]' \
  || say "Prometheus has no answer yet"
kill "$pf" 2>/dev/null || true
kc -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/rtc-loadtest --timeout=120s >/dev/null \
  || say "the load test did not succeed:"
kc -n "$NS" logs rtc-loadtest | tail -n 6
kc -n "$NS" delete pod rtc-loadtest --ignore-not-found >/dev/null

cat <<EOF

Reactive RTC on minikube
  demo page (chat)     http://$ip/
  resolve              http://$ip/api/v1/resolve?clientId=alice
  WebSockets           ws://$ip/ws/<nodeId>/connect (from resolve)
  gateway admin        kubectl -n $NS port-forward service/gateway-admin 9090:9090   → http://127.0.0.1:9090/routes
  Grafana              kubectl -n $NS port-forward service/grafana 3000:3000         → http://127.0.0.1:3000 (dashboard "Reactive RTC")
  Prometheus           kubectl -n $NS port-forward service/prometheus 9091:9090      → http://127.0.0.1:9091
  leader               kubectl -n $NS logs -l app=load-balancer | grep -E "ACQUIRED|LOST|MASTER|Scaling Deployment"
  remove               scripts/minikube-demo.sh --down
EOF
