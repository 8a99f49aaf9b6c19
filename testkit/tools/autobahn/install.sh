#!/usr/bin/env bash
# Installs Autobahn|Testsuite (wstest; Python 2 only) into a virtualenv cached outside the clone
# and prints the path of wstest. Needs a Python 2.7: pyenv's (~/.pyenv/versions/2.7.*) or
# PYTHON2=/path/to/python2.7. A second run is a no-op.
set -euo pipefail
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/rtc/autobahn-25.10.1"
WSTEST="$CACHE/venv27/bin/wstest"
if [ -x "$WSTEST" ]; then
  echo "$WSTEST"
  exit 0
fi
PY2="${PYTHON2:-$(ls -d "$HOME"/.pyenv/versions/2.7.*/bin/python 2>/dev/null | tail -1)}"
[ -n "$PY2" ] && [ -x "$PY2" ] || {
  echo "autobahn: no Python 2.7 found (pyenv ~/.pyenv/versions/2.7.*, or set PYTHON2)" >&2
  exit 1
}
mkdir -p "$CACHE"
# virtualenv 20.21 is the last that creates Python 2.7 environments.
python3 -m venv "$CACHE/tool"
"$CACHE/tool/bin/pip" install -q "virtualenv==20.21.1" >"$CACHE/install.log" 2>&1
"$CACHE/tool/bin/virtualenv" -q -p "$PY2" "$CACHE/venv27" >>"$CACHE/install.log" 2>&1
"$CACHE/venv27/bin/pip" install -q "autobahntestsuite==25.10.1" >>"$CACHE/install.log" 2>&1 || {
  tail -30 "$CACHE/install.log" >&2
  exit 1
}
echo "$WSTEST"
