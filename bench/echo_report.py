"""Reads rtc-echo's JSON reports for bench/gateway-vs-nginx.sh: prints one line per figure, appends
the figures to a JSON-lines file, and exits 1 when a run is invalid.

  echo_report.py run RESULTS REPORT TARGET RUN PROXY_TICKS MACHINE_TICKS CLK_TCK SECS WARMUP [PERF_CSV]
  echo_report.py idle RESULTS REPORT TARGET RSS_BEFORE_KIB RSS_AFTER_KIB N
  echo_report.py upgrades RESULTS REPORT TARGET
  echo_report.py summary RESULTS
"""
import json
import os
import sys


def load(path, what):
    try:
        return json.load(open(path))
    except Exception as e:  # no report: the client failed
        sys.exit(f"{what}: invalid: no report ({e})")


def keep(results, row):
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")


def run(results, path, target, run, ticks, machine_ticks, hz, secs, warmup, perf=None):
    r = load(path, f"run {run} {target}")
    row = {"target": target, "run": int(run), "rate": r["echoes_per_sec"], "p50": r["p50_ms"], "p99": r["p99_ms"]}
    # Echoes over the whole client run (warm-up included), at the measured rate: the proxy's
    # CPU was sampled over the same span.
    echoes = r["echoes_per_sec"] * (float(secs) + float(warmup))
    line = f"run {run} {target:>8}: {r['echoes_per_sec']:8.0f} echoes/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms"
    if target != "direct":
        row["cpu_us"] = int(ticks) / int(hz) * 1e6 / max(1.0, echoes)
        line += f"  proxy CPU {row['cpu_us']:5.2f} us/echo"
    # The whole machine's busy time (client, upstream, proxy, and kernel threads such as the
    # kworkers that carry a sockmap splice's redirects) per echo.
    row["machine_us"] = int(machine_ticks) / int(hz) * 1e6 / max(1.0, echoes)
    line += f"  machine CPU {row['machine_us']:5.2f} us/echo"
    if perf and os.path.exists(perf):
        for l in open(perf):
            f = l.strip().split(",")
            if len(f) > 2 and f[0].isdigit():
                key = "syscalls" if "syscall" in f[2] else "switches"
                row[key] = int(f[0]) / max(1.0, echoes)
        line += f"  {row.get('syscalls', 0):.2f} syscalls/echo  {row.get('switches', 0):.3f} switches/echo"
    bad = r["failed_upgrades"] or r["broken"] or r["echoes_per_sec"] < 1000
    if bad:
        line += f"  INVALID: {r['failed_upgrades']} failed upgrades, {r['broken']} broken"
    else:
        keep(results, row)
    print(line)
    return 1 if bad else 0


def idle(results, path, target, before, after, n):
    r = load(path, f"idle {target}")
    per = (int(after) - int(before)) * 1024 / int(n)
    keep(results, {"target": target, "run": 0, "idle_bytes": per})
    print(f"{target:>8}: {per:6.0f} bytes per idle connection (failed upgrades {r['failed_upgrades']}, broken {r['broken']})")
    return 1 if r["failed_upgrades"] or r["broken"] or r["connected"] != int(n) else 0


def upgrades(results, path, target):
    r = load(path, f"upgrades {target}")
    keep(results, {"target": target, "run": 0, "upgrade_failures": r["failed"]})
    print(f"{target:>8}: {r['failed']} failed upgrades of {r['upgrades']} ({r['upgrades'] / r['secs']:.0f}/s) {r['errors'][:2]}")
    return 1 if r["failed"] or r["ok"] != r["upgrades"] else 0


def summary(results):
    rows = [json.loads(l) for l in open(results)] if os.path.exists(results) else []

    def vals(target, key):
        return [r[key] for r in rows if r["target"] == target and key in r]

    others = sorted({r["target"] for r in rows} - {"direct", "nginx"}, key=lambda t: (t != "gateway", t))
    for key, name, fmt in [("rate", "echoes/s", "{:.0f}"), ("p99", "p99 ms", "{:.2f}"),
                           ("cpu_us", "proxy CPU us/echo", "{:.2f}"), ("machine_us", "machine CPU us/echo", "{:.2f}"),
                           ("syscalls", "syscalls/echo", "{:.2f}"),
                           ("switches", "switches/echo", "{:.3f}"), ("idle_bytes", "bytes per idle WebSocket", "{:.0f}"),
                           ("upgrade_failures", "failed upgrades", "{}")]:
        n, d = vals("nginx", key), vals("direct", key)
        span = lambda v: f"{fmt.format(min(v))}–{fmt.format(max(v))}" if v else "—"
        for other in others:
            g = vals(other, key)
            if not g:
                continue
            line = f"{name:>25}: {other} {span(g)}  nginx {span(n)}"
            # Ratios to nginx measured in the same round (adjacent in time, so the machine's
            # drift between rounds cancels), as a range and a median.
            ratios = sorted(
                r[key] / nv
                for r in rows
                if r["target"] == other and key in r and "run" in r
                for nv in [next((x[key] for x in rows if x["target"] == "nginx" and x.get("run") == r["run"] and key in x), 0)]
                if nv
            )
            if ratios:
                mid = ratios[len(ratios) // 2] if len(ratios) % 2 else (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
                line += f"  ratio {ratios[0]:.2f}–{ratios[-1]:.2f} (median {mid:.2f})"
            if d:
                line += f"  (direct {span(d)})"
            print(line)
    return 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    sys.exit({"run": run, "idle": idle, "upgrades": upgrades, "summary": summary}[cmd](*args))
