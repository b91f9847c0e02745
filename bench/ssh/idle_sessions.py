#!/usr/bin/env python3
"""Idle sessions for bench/ssh/run's hand-over part.

  idle_sessions.py echo PORT                      an echo sink for many connections
  idle_sessions.py client PORT N READY_FILE GO_FILE
      opens N connections, pings 50 of them every 5 ms, touches READY_FILE after half a second and
      from then records the longest gap between answers until GO_FILE exists, then checks every
      connection still echoes; prints one JSON line (max_gap_end: when the longest gap ended, Unix
      time).
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
    sample = conns[:: max(1, n // 50)][:50]
    max_gap, gap_end = 0.0, 0.0
    last = time.monotonic()
    # Half a second of pings before READY_FILE, not counted: a session's first bytes through the
    # relay take its first splice pipe, and that first round (~100 ms for 50 sessions on 2 vCPUs)
    # is not a hand-over's pause.
    warm_until = last + 0.5
    while not os.path.exists(go):
        if warm_until and time.monotonic() >= warm_until:
            warm_until = 0
            max_gap, gap_end = 0.0, 0.0
            open(ready, "w").close()
        t0 = time.monotonic()
        for c in sample:
            c.sendall(b"p")
        for c in sample:
            c.settimeout(30)
            if c.recv(1) != b"p":
                print(json.dumps({"error": "lost"}))
                return
        now = time.monotonic()
        if now - last > max_gap:
            max_gap, gap_end = now - last, time.time()
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
    print(json.dumps({"sessions": n, "alive": alive, "max_gap_ms": round(max_gap * 1000, 1),
                      "max_gap_end": round(gap_end, 3)}))


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(int(sys.argv[2]))
    else:
        client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
