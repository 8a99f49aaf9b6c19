#!/usr/bin/env bash
# The scaling simulation: the leader's decision function replayed over synthetic load curves
# (steady, ramp, spike, diurnal, noisy, flapping). No cluster; deterministic. Prints a markdown
# table and ASCII plots (docs/benchmarks.md keeps a copy).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p rtc-balancer --example scale_sim
