#!/usr/bin/env bash
# prove.sh DIR — smoke-proves a control plane started by `kube.sh start DIR`.
#   1. Deployment(3) + headless Service -> real ReplicaSet controller makes 3 Pending pods
#   2. pod status patched (podIP, Running, Ready) -> real EndpointSlice controller publishes it,
#      ready=true — only once the pod is bound to an existing Node and the IP is not loopback
#   3. pod-deletion-cost + scale 3->2 and 2->1 -> which pod the ReplicaSet controller deletes,
#      and what deletion looks like with no kubelet (unbound: gone at once; bound: Terminating)
#   4. coordination.k8s.io/v1 Lease: replace with a stale resourceVersion -> 409
# Prints "N passed, M failed" last; exits 1 on any failure. Env: PROVE_IP (default 192.0.2.10).
set -uo pipefail
DIR="$(cd "${1:?usage: prove.sh DIR}" && pwd)"
NS="${PROVE_NS:-prove-$$}"
NODE="fake-node-$$"
IP="${PROVE_IP:-192.0.2.10}"   # TEST-NET-1 (RFC 5737): data only, never contacted
k() { kubectl --kubeconfig "$DIR/kubeconfig" -n "$NS" "$@"; }
pass=0 fail=0
ok() { echo "PASS: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
waitfor() { # SECONDS cmd... : retry until cmd succeeds with non-empty output; print it
  local t=$(( $(date +%s) + $1 )) out; shift
  while [ "$(date +%s)" -lt "$t" ]; do
    out="$("$@" 2>/dev/null)" && [ -n "$out" ] && { echo "$out"; return 0; }
    sleep 0.3
  done
  return 1
}
pods() { k get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }
cnt() { local n; n="$(pods | grep -c .)"; [ "$n" = "$1" ] && echo "$n"; }
bind() { # POD NODE — what kube-scheduler would do: POST pods/POD/binding
  printf '{"apiVersion":"v1","kind":"Binding","metadata":{"name":"%s"},"target":{"apiVersion":"v1","kind":"Node","name":"%s"}}' "$1" "$2" |
    k create --raw "/api/v1/namespaces/$NS/pods/$1/binding" -f - >/dev/null
}
set_ready() { # POD IP
  k patch pod "$1" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Running\",\"podIP\":\"$2\",\"podIPs\":[{\"ip\":\"$2\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"},{\"type\":\"ContainersReady\",\"status\":\"True\"}]}}" >/dev/null
}
eps() { k get endpointslices -l kubernetes.io/service-name=web -o jsonpath='{range .items[*].endpoints[*]}{.addresses[0]} ready={.conditions.ready} node={.nodeName} pod={.targetRef.name}{"\n"}{end}'; }

kubectl --kubeconfig "$DIR/kubeconfig" create namespace "$NS" >/dev/null
# ServiceAccount admission rejects pods until the namespace's default SA exists.
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
if waitfor 60 cnt 3 >/dev/null; then ok "ReplicaSet controller created 3 pods"; else bad "expected 3 pods, got: $(pods | tr '\n' ' ')"; fi
k get deploy,rs,pods -o wide
phases="$(k get pods -l app=web -o jsonpath='{range .items[*]}{.status.phase}/{.spec.nodeName}{"\n"}{end}' | sort -u)"
[ "$phases" = "Pending/" ] && ok "all pods Pending with no nodeName" || bad "phases/nodes: $phases"

echo "== 2. Pod status -> EndpointSlice"
mapfile -t P < <(pods | sort)
RUN="${P[0]}"
# 2a. the brief's address, 127.0.0.2, on an unbound pod
set_ready "$RUN" 127.0.0.2 && ok "status patch (Running, Ready, podIP 127.0.0.2) of unbound $RUN accepted" || bad "status patch of $RUN"
sleep 3
[ -z "$(eps)" ] && ok "EndpointSlice has no endpoint for an unbound pod (controller: 'Node  Not Found')" || bad "unexpected endpoints: $(eps)"
# 2b. bind it to a Node object (no kubelet behind it)
kubectl --kubeconfig "$DIR/kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata: {name: $NODE, labels: {kubernetes.io/hostname: $NODE}}
EOF
bind "$RUN" "$NODE" && ok "bound $RUN to Node $NODE via pods/binding" || bad "binding $RUN"
sleep 3
[ -z "$(eps)" ] && ok "still no endpoint: EndpointSlice validation rejects loopback 127.0.0.2" || bad "unexpected endpoints: $(eps)"
k get events --field-selector reason=FailedToUpdateEndpointSlices -o jsonpath='{.items[-1:].message}' | grep -o 'Invalid value: "127.0.0.2".*' | head -1
# 2c. a non-loopback address
set_ready "$RUN" "$IP" && ok "status patch podIP -> $IP"
k get pod "$RUN" -o jsonpath='{.status.phase} {.status.podIP} node={.spec.nodeName} Ready={.status.conditions[?(@.type=="Ready")].status}{"\n"}'
epsready() { eps | grep -F "$IP ready=true"; }
if out="$(waitfor 30 epsready)"; then ok "EndpointSlice controller published: $out"
else bad "no ready endpoint $IP: $(eps)"; fi

echo "== 3. pod-deletion-cost + scale 3 -> 2 -> 1"
k annotate pod "$RUN" controller.kubernetes.io/pod-deletion-cost=-1000 --overwrite >/dev/null
k annotate pod "${P[1]}" controller.kubernetes.io/pod-deletion-cost=-100 --overwrite >/dev/null
k annotate pod "${P[2]}" controller.kubernetes.io/pod-deletion-cost=100 --overwrite >/dev/null
echo "costs: $RUN(bound,Running,Ready)=-1000 ${P[1]}(unbound,Pending)=-100 ${P[2]}(unbound,Pending)=100"
watch_start() {
  # kubectl itself in the background (not the k() function: $! would be a subshell and kill would orphan kubectl)
  kubectl --kubeconfig "$DIR/kubeconfig" -n "$NS" get pods -l app=web -w --output-watch-events \
    -o custom-columns='EVENT:.type,POD:.object.metadata.name,PHASE:.object.status.phase,NODE:.object.spec.nodeName,DELETION:.object.metadata.deletionTimestamp,GRACE:.object.metadata.deletionGracePeriodSeconds' \
    >"$DIR/prove-watch-$1.txt" 2>&1 &
  WPID=$!; sleep 1
}
watch_stop() { sleep 2; kill "$WPID" 2>/dev/null; wait "$WPID" 2>/dev/null; grep -v ' ADDED ' "$DIR/prove-watch-$1.txt" | grep -v '^ADDED'; }
watch_start 3to2
k scale deployment web --replicas=2
if waitfor 30 cnt 2 >/dev/null; then ok "3->2: 2 pods left"; else bad "3->2: $(pods | tr '\n' ' ')"; fi
watch_stop 3to2
left="$(pods | sort | tr '\n' ' ')"; echo "remaining: $left"
if [[ " $left " != *" ${P[1]} "* && " $left " == *" $RUN "* ]]; then
  ok "3->2 deleted ${P[1]} (unbound, cost -100), kept ${P[2]} (cost 100) and $RUN (cost -1000: assigned/Running/Ready rank before cost)"
else bad "3->2 unexpected victim; remaining: $left"; fi
if grep -q "^DELETED *${P[1]} " "$DIR/prove-watch-3to2.txt" && ! k get pod "${P[1]}" >/dev/null 2>&1; then
  ok "unbound victim: one MODIFIED (deletionTimestamp, grace 0) then DELETED at once; the apiserver forces grace 0 for unscheduled pods, no kubelet needed"
else bad "unbound victim deletion: $(cat "$DIR/prove-watch-3to2.txt")"; fi

bind "${P[2]}" "$NODE" && echo "bound ${P[2]} to $NODE (phase stays Pending)"
watch_start 2to1
k scale deployment web --replicas=1
sleep 3
watch_stop 2to1
dt="$(k get pod "${P[2]}" -o jsonpath='{.metadata.deletionTimestamp} grace={.metadata.deletionGracePeriodSeconds}' 2>/dev/null)"
if [ -n "$dt" ]; then ok "2->1 deleted ${P[2]} (bound, Pending ranks below Running despite cost 100 > -1000): stays Terminating, deletionTimestamp=$dt"
else bad "2->1: ${P[2]} has no deletionTimestamp / is gone"; fi
k get rs -l app=web -o jsonpath='{range .items[*]}rs {.metadata.name}: spec={.spec.replicas} status.replicas={.status.replicas} terminating={.status.terminatingReplicas}{"\n"}{end}'
k get pods -l app=web
k delete pod "${P[2]}" --grace-period=0 --force >/dev/null 2>&1
waitfor 10 bash -c "! kubectl --kubeconfig '$DIR/kubeconfig' -n '$NS' get pod '${P[2]}' >/dev/null 2>&1 && echo gone" >/dev/null &&
  ok "force delete (grace 0) removes the Terminating pod" || bad "force delete of ${P[2]}"

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
[[ "$out" == *Conflict* ]] && ok "kubectl replace with stale rv $rv1 (current $rv2) -> Conflict" || bad "stale replace: $out"
# shellcheck disable=SC1091
. "$DIR/env"
code="$(curl -s -o "$DIR/lease-409.json" -w '%{http_code}' --cacert "$KUBE_CA_FILE" -H "Authorization: Bearer $KUBE_ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -X PUT --data @"$DIR/lease-stale.json" \
  "$KUBE_APISERVER_URL/apis/coordination.k8s.io/v1/namespaces/$NS/leases/rtc-lease")"
echo "curl PUT: HTTP $code reason=$(grep -o '"reason": *"[A-Za-z]*"' "$DIR/lease-409.json")"
[ "$code" = 409 ] && ok "PUT with stale resourceVersion -> HTTP 409" || bad "PUT stale -> HTTP $code"

if [ -z "${PROVE_KEEP:-}" ]; then
  kubectl --kubeconfig "$DIR/kubeconfig" delete namespace "$NS" --wait=false >/dev/null
  kubectl --kubeconfig "$DIR/kubeconfig" delete node "$NODE" --wait=false >/dev/null
fi
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
