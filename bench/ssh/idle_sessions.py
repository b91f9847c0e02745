#!/usr/bin/env python3
"""Idle sessions for bench/ssh/run's hand-over part.

  idle_sessions.py echo PORT                      an echo sink for many connections
  idle_sessions.py client PORT N READY_FILE GO_FILE
      opens N connections, touches READY_FILE, pings 50 of them every 5 ms and records the longest
      gap between answers until GO_FILE exists, then checks every connection still echoes; prints
      one JSON line.
"""
import json, os, resource, selectors, socket, sys, time

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def echo(port):
    sel = selectors.DefaultSelector()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4096)
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if s is ls:
                c, _ = ls.accept()
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                continue
            try:
                d = s.recv(65536)
            except (BlockingIOError, ConnectionError):
                d = b"" if not isinstance(sys.exc_info()[1], BlockingIOError) else None
            if d is None:
                continue
            if not d:
                sel.unregister(s)
                s.close()
                continue
            s.sendall(d)


def client(port, n, ready, go):
    conns = []
    for i in range(n):
        conns.append(socket.create_connection(("127.0.0.1", port)))
    open(ready, "w").close()
    sample = conns[:: max(1, n // 50)][:50]
    max_gap = 0.0
    last = time.monotonic()
    while not os.path.exists(go):
        t0 = time.monotonic()
        for c in sample:
            c.sendall(b"p")
        for c in sample:
            c.settimeout(30)
            if c.recv(1) != b"p":
                print(json.dumps({"error": "lost"}))
                return
        now = time.monotonic()
        max_gap = max(max_gap, now - last)
        last = now
        time.sleep(max(0.0, 0.005 - (now - t0)))
    alive = 0
    for c in conns:
        try:
            c.settimeout(30)
            c.sendall(b"x")
            if c.recv(1) == b"x":
                alive += 1
        except OSError:
            pass
    print(json.dumps({"sessions": n, "alive": alive, "max_gap_ms": round(max_gap * 1000, 1)}))


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(int(sys.argv[2]))
    else:
        client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
