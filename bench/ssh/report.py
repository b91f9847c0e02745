#!/usr/bin/env python3
"""bench/ssh/run's report: medians, ratios to direct, setup p50/p99 added, hand-over; writes results.json."""
import json, re, statistics, sys
from datetime import datetime

tmp, size, idle, relays = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
bulk = {}
for line in open(f"{tmp}/bulk.txt"):
    c, p, v = line.split()
    bulk.setdefault(c, {}).setdefault(p, []).append(float(v))
setup = {}
for line in open(f"{tmp}/setup.txt"):
    p, v = line.split()
    setup.setdefault(p, []).append(float(v))
res = {"size_mib": size, "bulk": {}, "setup_ms": {}, "handover": {}}
print(f"bulk ({size} MiB per transfer, medians, MB/s and ratio to direct)")
for c, paths in bulk.items():
    d = statistics.median(paths["direct"])
    row = {p: {"mbps": round(statistics.median(v), 1), "ratio": round(statistics.median(v) / d, 3)} for p, v in paths.items()}
    res["bulk"][c] = row
    print(f"  {c:32} " + "  ".join(f"{p} {r['ratio']:.2f} ({r['mbps']:.0f})" for p, r in row.items()))
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]
for p, v in setup.items():
    res["setup_ms"][p] = {"p50": round(pct(v, 0.5), 1), "p99": round(pct(v, 0.99), 1)}
added = {q: round(res["setup_ms"]["fdpass"][q] - res["setup_ms"]["direct"][q], 1) for q in ("p50", "p99")}
res["setup_ms"]["added"] = added
print(f"setup (ssh host true, n={len(setup['direct'])}): direct p50 {res['setup_ms']['direct']['p50']} ms "
      f"p99 {res['setup_ms']['direct']['p99']} ms; through the relay added p50 {added['p50']} ms p99 {added['p99']} ms")
def log_line(path, msg):
    for line in open(path):
        if f'msg="{msg}"' in line:
            return line
    return None
def ts(line):
    return datetime.strptime(re.search(r"ts=(\S+)Z", line).group(1), "%Y-%m-%dT%H:%M:%S.%f") if line else None
# All relays hand over at once: from the first one that parks to the last one that took over.
parks = [ts(log_line(f"{tmp}/old{r}.log", "hand-over: parking sessions")) for r in range(1, relays + 1)]
tooks = [log_line(f"{tmp}/new{r}.log", "took over") for r in range(1, relays + 1)]
per_relay = [int(m.group(1)) if t and (m := re.search(r'sessions=(\d+)', t)) else None for t in tooks]
t0 = min(parks) if all(parks) else None
t1 = max(ts(t) for t in tooks) if all(tooks) else None
pings = {}
try:
    pings = json.loads(open(f"{tmp}/pings.txt").read().strip().splitlines()[-1])
except Exception as e:
    pings = {"error": str(e)}
res["handover"] = {"idle_sessions": idle, "relays": relays, "sessions_per_relay": per_relay,
                   "park_to_took_over_ms": round((t1 - t0).total_seconds() * 1000, 1) if t0 and t1 else None, **pings}
print(f"hand-over of {idle} idle sessions over {relays} relays ({per_relay} each), all at once: first parking -> "
      f"last took over {res['handover']['park_to_took_over_ms']} ms; sample longest gap {pings.get('max_gap_ms')} ms; "
      f"alive after {pings.get('alive')}/{idle}")
json.dump(res, open(f"{tmp}/results.json", "w"), indent=1)
