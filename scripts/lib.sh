# Shared by the scripts that start servers on loopback (sourced, not run).

# free_ports N [RUN]: N free TCP ports on 127.0.0.1, then (with RUN) the first of RUN
# consecutive free ports (rtc-local's socket nodes take SOCKET_BASE_PORT, +1, ...). Every port
# is held until all are chosen, so none is printed twice.
free_ports() {
  python3 - "$1" "${2:-0}" <<'PY'
import socket, sys
n, run = int(sys.argv[1]), int(sys.argv[2])
held = []
def bind(p):
    s = socket.socket()
    s.bind(("127.0.0.1", p))
    held.append(s)
    return s.getsockname()[1]
out = [bind(0) for _ in range(n)]
if run:
    for _ in range(200):
        base = bind(0)
        try:
            for i in range(1, run):
                bind(base + i)
            out.append(base)
            break
        except OSError:
            pass
    else:
        sys.exit("no run of free ports")
print(*out)
PY
}

# wait_http URL [SECONDS]: waits until URL answers 2xx (default 60 s); fails otherwise.
wait_http() {
  local i
  for ((i = 0; i < ${2:-60} * 2; i++)); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "no answer from $1" >&2
  return 1
}
