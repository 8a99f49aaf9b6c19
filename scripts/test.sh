#!/usr/bin/env bash
# The full test suite, installing what it needs (Debian/Ubuntu, as root or with sudo):
#   - build tools for librdkafka (cmake, libcurl headers), redis-server and chromium via apt;
#   - Autobahn|Testsuite (Python 2.7 from pyenv, in a virtualenv cached outside the clone);
#   - a Kubernetes control plane built from the Go module proxy (Go comes with our machines);
#   - Apache Kafka (a real broker) from Maven Central's jars, cached outside the clone (Java 17
#     and Maven come with our machines; installed with apt when missing);
#   - the deployment checkers (kubernetes-validate, checkov, hadolint, promtool; cached) and
#     podman (apt) with a debootstrapped base image (cached);
#   - Node.js (the JavaScript client's tests, `node --test`, run from e2e/tests/js_sdk.rs) and
#     TypeScript from npm (its declarations checked with tsc; cached);
# then every test on the embedded Kafka broker (rtc-embedded-kafka), the Kafka integration tests
# again on the real broker, the checks of the manifests and the system run from its container
# image.
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean clone gains nothing from incremental compilation, and its caches take gigabytes.
export CARGO_INCREMENTAL=0
df -h . | awk 'NR == 2 { print "disk: " $4 " free of " $2 " where the build goes" }'

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v cmake >/dev/null || need+=(cmake)
dpkg-query -W -f='${Status}' libcurl4-openssl-dev 2>/dev/null | grep -q "ok installed" || need+=(libcurl4-openssl-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v openssl >/dev/null || need+=(openssl)
# The JavaScript client's tests need Node.js >= 20 (global fetch, WebSocket behind a flag); our
# machines come with it, Debian's package is older.
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing with apt-get: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The real Kafka broker (Apache Kafka, KRaft): jars from Maven Central, cached outside the clone.
testkit/tools/kafka/kafka.sh install >/dev/null
# A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager), built once
# from the Go module proxy and cached outside the clone: ~35 min cold on 2 cores, then a no-op.
testkit/tools/kube/kube.sh install >/dev/null
# Autobahn|Testsuite (wstest, Python 2.7 from pyenv) in a cached virtualenv.
testkit/tools/autobahn/install.sh >/dev/null
# Untagged images earlier runs of image-smoke.sh left behind (~400 MB each).
if command -v podman >/dev/null; then podman image prune -f >/dev/null 2>&1 || true; fi

cargo fmt --all -- --check
# The JavaScript client's TypeScript declarations, as a TypeScript application uses them
# (clients/js/test/types.ts, strict); TypeScript from npm, cached outside the clone.
TS_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/rtc/typescript-5.9.3"
[ -x "$TS_CACHE/node_modules/.bin/tsc" ] \
  || npm install --prefix "$TS_CACHE" --silent --no-audit --no-fund typescript@5.9.3 >/dev/null
"$TS_CACHE/node_modules/.bin/tsc" --noEmit --strict --target es2022 --module nodenext \
  --moduleResolution nodenext --lib es2022,dom --typeRoots /nonexistent clients/js/test/types.ts
# The end-to-end tests start the real binaries (rtc-loadtest) from target/debug.
cargo build --workspace --bins --quiet
echo "== all tests, Kafka = the embedded broker"
RTC_TEST_KAFKA=embedded cargo test --workspace --no-fail-fast -- --skip autobahn --skip real_broker
echo "== Autobahn|Testsuite through the gateway (summary below)"
RTC_TEST_KAFKA=embedded cargo test -p rtc-e2e --test autobahn -- --nocapture
echo "== Kafka integration tests, Kafka = Apache Kafka $(testkit/tools/kafka/kafka.sh version)"
RTC_TEST_KAFKA=broker cargo test -p rtc-e2e --test data_path --test drain --test real_broker_outage --no-fail-fast
echo "== deployment: manifests, dashboard, alerts, Dockerfile (scripts/check-deploy.sh)"
scripts/check-deploy.sh
echo "== the system from its container image (scripts/image-smoke.sh)"
scripts/image-smoke.sh
echo "build output: $(du -sh target | cut -f1)"
