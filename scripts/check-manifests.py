#!/usr/bin/env python3
"""Checks of the rendered manifests that no off-the-shelf tool does (scripts/check-deploy.sh runs
them; each failure is printed and makes the exit status 1):

  env RENDERED BIN_DIR       every variable a container of ours gets (env, envFrom ConfigMaps and
                             Secrets of the same rendering) is one its binary accepts (from
                             `<binary> --help`), and every variable required on Kubernetes is set
  keda RENDERED              the KEDA ScaledObject uses only documented fields and cannot fight
                             the leader (scale-down disabled, max = SOCKET_MAX_REPLICAS)
  strip-crds RENDERED OUT    writes RENDERED without custom resources (for schema validators and
                             dry-runs that do not know them)
  dashboard JSON METRICS OUT every expression of the dashboard names only metrics in METRICS (one
                             name per line, scraped from the running binaries); writes OUT, a
                             rules file with one recording rule per expression for
                             `promtool check rules` (which parses PromQL)
"""
import json
import re
import subprocess
import sys

import yaml

BINARIES = {"rtc-gateway", "rtc-balancer", "rtc-socket"}
# Set by the manifests, because the defaults are for a laptop.
REQUIRED = {
    "rtc-socket": {"NODE_ID", "ADVERTISE_ADDR", "LISTEN_ADDR", "KAFKA_BOOTSTRAP", "REDIS_URL",
                   "RING_SECRET", "SLOTS", "DRAIN_DURATION"},
    "rtc-balancer": {"LISTEN_ADDR", "KAFKA_BOOTSTRAP", "REDIS_URL", "RING_SECRET", "SLOTS",
                     "ENABLE_LEADER_ELECTION", "POD_NAME", "KUBERNETES_NAMESPACE",
                     "SOCKET_WORKLOAD_NAME", "SOCKET_MIN_REPLICAS", "SOCKET_MAX_REPLICAS"},
    "rtc-gateway": {"LISTEN_ADDR", "ADMIN_ADDR", "BALANCER_ADDRS", "DISCOVERY",
                    "KUBERNETES_NAMESPACE", "SOCKET_SERVICE_NAME"},
}
# Read from the environment by the logging set-up, not by clap.
ALWAYS_ACCEPTED = {"RUST_LOG", "LOG_FORMAT"}
# Set only so that other values can refer to it ($(POD_IP)).
HELPERS = {"POD_IP"}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


def accepted(bin_dir, binary):
    out = subprocess.run([f"{bin_dir}/{binary}", "--help"], capture_output=True, text=True,
                         check=True).stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", out)) | ALWAYS_ACCEPTED


def check_env(rendered, bin_dir):
    docs = load(rendered)
    data = {}
    for d in docs:
        if d["kind"] in ("ConfigMap", "Secret"):
            keys = set((d.get("data") or {}).keys()) | set((d.get("stringData") or {}).keys())
            data[(d["kind"], d["metadata"]["name"])] = keys
    # A Secret created by the operator (production) is not in the rendering.
    external_secret = {"rtc-secret": {"RING_SECRET"}, "rtc-publish": {"PUBLISH_API_KEYS"}}
    seen = set()
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            cmd = (c.get("command") or [""])[0].rsplit("/", 1)[-1]
            if cmd not in BINARIES:
                continue
            seen.add(cmd)
            names = {e["name"] for e in c.get("env", [])}
            for ef in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in ef:
                        ref = ef[key]["name"]
                        if (kind, ref) in data:
                            names |= data[(kind, ref)]
                        elif kind == "Secret" and ref in external_secret:
                            names |= external_secret[ref]
                        else:
                            fail(f"{d['metadata']['name']}: {kind} {ref} is not in the rendering")
            ok = accepted(bin_dir, cmd)
            for n in sorted(names - ok - HELPERS):
                fail(f"{d['metadata']['name']} ({cmd}) sets {n}, which {cmd} does not accept")
            for n in sorted(REQUIRED[cmd] - names):
                fail(f"{d['metadata']['name']} ({cmd}) does not set {n}")
    for b in sorted(BINARIES - seen):
        fail(f"no container runs {b}")
    print(f"env: {len(seen)} binaries' containers checked in {rendered}")


KEDA_FIELDS = {
    "spec": {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "cooldownPeriod",
             "pollingInterval", "idleReplicaCount", "advanced", "triggers", "fallback"},
    "advanced": {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount",
                 "scalingModifiers"},
    "horizontalPodAutoscalerConfig": {"name", "behavior"},
    "trigger": {"type", "metadata", "metricType", "name", "authenticationRef",
                "useCachedMetrics"},
}


def check_keda(rendered):
    docs = load(rendered)
    so = [d for d in docs if d["kind"] == "ScaledObject"]
    if not so:
        fail("no ScaledObject")
        return
    balancer_cm = next(d for d in docs if d["kind"] == "ConfigMap"
                       and d["metadata"]["name"] == "rtc-balancer")
    for d in so:
        assert d["apiVersion"] == "keda.sh/v1alpha1", d["apiVersion"]
        spec = d["spec"]
        for k in set(spec) - KEDA_FIELDS["spec"]:
            fail(f"ScaledObject: unknown field spec.{k}")
        adv = spec.get("advanced", {})
        for k in set(adv) - KEDA_FIELDS["advanced"]:
            fail(f"ScaledObject: unknown field spec.advanced.{k}")
        hpa = adv.get("horizontalPodAutoscalerConfig", {})
        for k in set(hpa) - KEDA_FIELDS["horizontalPodAutoscalerConfig"]:
            fail(f"ScaledObject: unknown field horizontalPodAutoscalerConfig.{k}")
        for t in spec.get("triggers", []):
            for k in set(t) - KEDA_FIELDS["trigger"]:
                fail(f"ScaledObject: unknown trigger field {k}")
        if hpa.get("behavior", {}).get("scaleDown", {}).get("selectPolicy") != "Disabled":
            fail("ScaledObject: its HPA may scale in (scaleDown.selectPolicy must be Disabled)")
        if str(spec.get("maxReplicaCount")) != balancer_cm["data"]["SOCKET_MAX_REPLICAS"]:
            fail("ScaledObject: maxReplicaCount differs from SOCKET_MAX_REPLICAS")
        if hpa.get("name") != balancer_cm["data"]["BACKUP_HPA_NAME"]:
            fail("ScaledObject: its HPA is not the one the leader reads (BACKUP_HPA_NAME)")
        if spec["scaleTargetRef"]["name"] != balancer_cm["data"]["SOCKET_WORKLOAD_NAME"]:
            fail("ScaledObject: it does not target SOCKET_WORKLOAD_NAME")
    print(f"keda: {len(so)} ScaledObject(s) checked in {rendered}")


BUILTIN_GROUPS = {"", "apps", "policy", "autoscaling", "batch", "rbac.authorization.k8s.io",
                  "networking.k8s.io", "discovery.k8s.io", "coordination.k8s.io"}


def strip_crds(rendered, out):
    docs = load(rendered)
    group = lambda d: d["apiVersion"].rpartition("/")[0]
    keep = [d for d in docs if group(d) in BUILTIN_GROUPS]
    with open(out, "w") as f:
        yaml.safe_dump_all(keep, f)
    print(f"strip-crds: left out {[d['kind'] for d in docs if group(d) not in BUILTIN_GROUPS]}")


PROMQL_WORDS = {"sum", "by", "max", "min", "avg", "count", "rate", "increase", "floor", "without",
                "on", "ignoring", "and", "or", "unless", "offset", "bool", "topk", "bottomk",
                "histogram_quantile", "irate", "changes", "absent", "abs", "ceil", "round",
                "clamp_min", "clamp_max", "delta", "deriv", "group_left", "group_right", "le",
                "time", "vector", "scalar", "label_replace", "quantile", "stddev"}


def check_dashboard(dashboard, metrics_file, out):
    exported = {l.strip() for l in open(metrics_file) if l.strip()}
    dash = json.load(open(dashboard))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for e in exprs:
        body = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', '', e)
        body = re.sub(r'\{[^}]*\}', '', body)        # label matchers
        body = re.sub(r'\[[^\]]*\]', '', body)       # range selectors
        body = re.sub(r'"[^"]*"', '', body)
        names = set(re.findall(r'[a-zA-Z_:][a-zA-Z0-9_:]*', body)) - PROMQL_WORDS
        for n in sorted(names):
            if n not in exported:
                fail(f"dashboard: `{e}` names {n}, which no binary exports")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    with open(out, "w") as f:
        yaml.safe_dump(rules, f)
    print(f"dashboard: {len(exprs)} expressions, {len(exported)} exported metric names")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"env": check_env, "keda": check_keda, "strip-crds": strip_crds,
     "dashboard": check_dashboard}[cmd](*args)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
