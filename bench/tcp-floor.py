#!/usr/bin/env python3
"""The kernel's share of a loopback round trip on this machine, without WebSocket or Rust.

A client process keeps CONNS TCP connections to an echo process and sends one small message
per round trip, at a fixed total rate, exactly like `rtc-loadtest --pattern ping` does (one
send and one receive per round trip). It prints the client's kernel CPU (stime) per round trip:
the floor that any client pays on loopback, because a send there also runs the receiving side's
TCP input. Compare it with the kernel part of rtc-loadtest's `client_sys_us_per_msg`.

    bench/tcp-floor.py [CONNS] [RATE] [SECONDS]      (defaults 1000 10000 10)
"""
import os
import selectors
import socket
import sys
import time

CONNS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
SECS = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
MSG = b'{"type":"ping","id":"123456"}'


def echo(lst):
    sel = selectors.DefaultSelector()
    sel.register(lst, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is lst:
                c, _ = lst.accept()
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                continue
            data = key.fileobj.recv(4096)
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                continue
            key.fileobj.send(data)


def main():
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    pid = os.fork()
    if pid == 0:
        echo(lst)
        os._exit(0)
    try:
        conns = []
        for _ in range(CONNS):
            s = socket.create_connection(lst.getsockname())
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            conns.append(s)
        sel = selectors.DefaultSelector()
        for s in conns:
            sel.register(s, selectors.EVENT_READ)
        gap = 1.0 / RATE
        t0 = os.times()
        start = time.monotonic()
        sent = done = 0
        while time.monotonic() - start < SECS:
            due = int((time.monotonic() - start) / gap)
            while sent < due:
                conns[sent % CONNS].send(MSG)
                sent += 1
            for key, _ in sel.select(timeout=gap):
                n = len(key.fileobj.recv(4096))
                done += n // len(MSG)
        t1 = os.times()
        sys_us = (t1.system - t0.system) * 1e6 / max(1, done)
        user_us = (t1.user - t0.user) * 1e6 / max(1, done)
        print(f"tcp loopback floor: {sys_us:.1f} us kernel per round trip "
              f"({done} round trips over {CONNS} connections at {RATE}/s; python user {user_us:.1f} us)")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
