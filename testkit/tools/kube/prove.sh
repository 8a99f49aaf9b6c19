#!/usr/bin/env bash
# prove.sh DIR — smoke-proves a control plane started by `kube.sh start DIR`:
#   1. Deployment(3) + headless Service -> real ReplicaSet controller makes 3 Pending pods
#   2. pod status patched (podIP 127.0.0.2, Running, Ready) -> real EndpointSlice controller
#      publishes that address with ready=true
#   3. pod-deletion-cost + scale 3->2 -> which pod the ReplicaSet controller deletes, and how
#   4. coordination.k8s.io/v1 Lease: replace with a stale resourceVersion -> 409
# Prints "N passed, M failed" at the end; exit 1 on any failure.
set -uo pipefail
DIR="$(cd "${1:?usage: prove.sh DIR}" && pwd)"
NS="${PROVE_NS:-prove-$$}"
k() { kubectl --kubeconfig "$DIR/kubeconfig" -n "$NS" "$@"; }
pass=0 fail=0
ok() { echo "PASS: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
waitfor() { # seconds cmd... ; retry until cmd prints something non-empty and succeeds
  local t=$(( $(date +%s) + $1 )); shift
  while [ "$(date +%s)" -lt "$t" ]; do
    out="$("$@" 2>/dev/null)" && [ -n "$out" ] && { echo "$out"; return 0; }
    sleep 0.3
  done
  return 1
}
pods() { k get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }

kubectl --kubeconfig "$DIR/kubeconfig" create namespace "$NS" >/dev/null
# ServiceAccount admission needs the namespace's default SA before pods can be created.
waitfor 30 k get serviceaccount default -o name >/dev/null || bad "default SA in $NS"

echo "== 1. Deployment (3 replicas) + headless Service"
k apply -f - <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: registry.k8s.io/pause:3.10, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 80}]
EOF
cnt() { local n; n="$(pods | grep -c .)"; [ "$n" = "$1" ] && echo "$n"; }
if waitfor 60 cnt 3 >/dev/null; then ok "ReplicaSet controller created 3 pods"; else bad "expected 3 pods, got: $(pods | tr '\n' ' ')"; fi
k get deploy,rs,pods -o wide
phases="$(k get pods -l app=web -o jsonpath='{range .items[*]}{.status.phase}/{.spec.nodeName}{"\n"}{end}' | sort -u)"
[ "$phases" = "Pending/" ] && ok "all pods Pending with no nodeName" || bad "phases/nodes: $phases"

echo "== 2. Patch one pod's status -> EndpointSlice"
mapfile -t P < <(pods | sort)
RUN="${P[0]}"
k patch pod "$RUN" --subresource=status --type=merge -p '{"status":{"phase":"Running","podIP":"127.0.0.2","podIPs":[{"ip":"127.0.0.2"}],"conditions":[{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}]}}' \
  && ok "status patch of $RUN accepted" || bad "status patch of $RUN"
k get pod "$RUN" -o jsonpath='{.status.phase} {.status.podIP} Ready={.status.conditions[?(@.type=="Ready")].status}{"\n"}'
eps() { k get endpointslices -l kubernetes.io/service-name=web -o jsonpath='{range .items[*].endpoints[*]}{.addresses[0]} ready={.conditions.ready} pod={.targetRef.name}{"\n"}{end}'; }
epsready() { eps | grep -F '127.0.0.2 ready=true'; }
if out="$(waitfor 30 epsready)"; then
  ok "EndpointSlice controller published: $out"
else bad "no ready endpoint 127.0.0.2: $(eps)"; fi
k get endpointslices -l kubernetes.io/service-name=web -o yaml | sed -n '/^  endpoints:/,/^  kind:/p' | head -20

echo "== 3. pod-deletion-cost + scale 3 -> 2"
# Running+Ready pod gets the LOWEST cost; Pending pods get -100 / +100.
k annotate pod "$RUN" controller.kubernetes.io/pod-deletion-cost=-1000 --overwrite >/dev/null
k annotate pod "${P[1]}" controller.kubernetes.io/pod-deletion-cost=-100 --overwrite >/dev/null
k annotate pod "${P[2]}" controller.kubernetes.io/pod-deletion-cost=100 --overwrite >/dev/null
echo "costs: $RUN(Running,Ready)=-1000 ${P[1]}(Pending)=-100 ${P[2]}(Pending)=100"
k get pods -l app=web -w --output-watch-events \
  -o custom-columns='EVENT:.metadata.name,PHASE:.status.phase,DELETION:.metadata.deletionTimestamp,GRACE:.metadata.deletionGracePeriodSeconds' \
  >"$DIR/prove-watch.txt" 2>&1 &
WPID=$!
sleep 1
k scale deployment web --replicas=2
if waitfor 30 cnt 2 >/dev/null; then ok "scaled to 2 pods"; else bad "scale down: $(pods | tr '\n' ' ')"; fi
sleep 2; kill "$WPID" 2>/dev/null; wait "$WPID" 2>/dev/null
echo "-- watch during scale-down:"; cat "$DIR/prove-watch.txt"
left="$(pods | sort | tr '\n' ' ')"
echo "remaining: $left"
if [[ " $left " != *" ${P[1]} "* && " $left " == *" $RUN "* && " $left " == *" ${P[2]} "* ]]; then
  ok "ReplicaSet deleted ${P[1]} (Pending, cost -100); kept Running pod despite cost -1000 (phase ranks before cost)"
else bad "unexpected victim; remaining: $left"; fi
if grep -q "DELETED *${P[1]}" "$DIR/prove-watch.txt" 2>/dev/null || ! k get pod "${P[1]}" >/dev/null 2>&1; then
  ok "deleted pod ${P[1]} is gone (unscheduled pod: apiserver deletes immediately, no kubelet needed)"
else bad "${P[1]} still present: $(k get pod "${P[1]}" -o jsonpath='{.metadata.deletionTimestamp}')"; fi

echo "== 3b. graceful delete of a pod bound to a (non-existent) node"
k apply -f - <<'EOF' >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: bound, labels: {app: bound}}
spec:
  nodeName: ghost-node
  containers: [{name: c, image: registry.k8s.io/pause:3.10}]
EOF
k delete pod bound --wait=false
sleep 1
dt="$(k get pod bound -o jsonpath='{.metadata.deletionTimestamp} grace={.metadata.deletionGracePeriodSeconds}' 2>/dev/null)"
if [ -n "$dt" ]; then ok "bound pod stays Terminating (deletionTimestamp=$dt) with no kubelet"; else bad "bound pod vanished at once"; fi
k delete pod bound --grace-period=0 --force >/dev/null 2>&1
k get pod bound >/dev/null 2>&1 && bad "force delete of bound pod" || ok "force delete (grace 0) removes it"

echo "== 4. Lease: replace with stale resourceVersion -> 409"
k apply -f - <<'EOF' >/dev/null
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: rtc-lease}
spec: {holderIdentity: a, leaseDurationSeconds: 15}
EOF
k get lease rtc-lease -o json >"$DIR/lease-v1.json"
rv1="$(k get lease rtc-lease -o jsonpath='{.metadata.resourceVersion}')"
sed 's/"holderIdentity": "a"/"holderIdentity": "b"/' "$DIR/lease-v1.json" | k replace -f - >/dev/null && ok "replace at current rv $rv1 ok"
rv2="$(k get lease rtc-lease -o jsonpath='{.metadata.resourceVersion}')"
sed 's/"holderIdentity": "a"/"holderIdentity": "c"/' "$DIR/lease-v1.json" >"$DIR/lease-stale.json"
out="$(k replace -f "$DIR/lease-stale.json" 2>&1)"; echo "kubectl: $out"
[[ "$out" == *Conflict* || "$out" == *"has been modified"* ]] && ok "kubectl replace with stale rv $rv1 (current $rv2) rejected" || bad "stale replace: $out"
# shellcheck disable=SC1091
. "$DIR/env"
code="$(curl -s -o "$DIR/lease-409.json" -w '%{http_code}' --cacert "$KUBE_CA_FILE" -H "Authorization: Bearer $KUBE_ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -X PUT --data @"$DIR/lease-stale.json" \
  "$KUBE_APISERVER_URL/apis/coordination.k8s.io/v1/namespaces/$NS/leases/rtc-lease")"
echo "curl PUT: HTTP $code $(tr -d '\n' <"$DIR/lease-409.json" | head -c 300)"
[ "$code" = 409 ] && ok "PUT with stale resourceVersion -> HTTP 409" || bad "PUT stale -> HTTP $code"

kubectl --kubeconfig "$DIR/kubeconfig" delete namespace "$NS" --wait=false >/dev/null
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
