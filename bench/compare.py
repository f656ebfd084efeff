#!/usr/bin/env python3
"""Compares two bench/run.py result files (issue 18: two runs on an idle machine should agree
within 10 %): every median figure both runs have, its change, and a mark on each that moved by
more than --tolerance. Prints a Markdown table; exits 0 either way (it reports, it does not
judge a run).

    bench/compare.py bench/results/A.json bench/results/B.json [--tolerance 0.10]
"""
import argparse
import json
import statistics

p = argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("first")
p.add_argument("second")
p.add_argument("--tolerance", type=float, default=0.10)
args = p.parse_args()
with open(args.first) as f:
    a = json.load(f)
with open(args.second) as f:
    b = json.load(f)

def fixed(d):
    """The fixed scenario's medians: CPU per delivery and p99 per system and rate."""
    out = {}
    for kind, rates in (d.get("fixed") or {}).get("summary", {}).items():
        for rate, row in rates.items():
            v = (row.get("cpu_per_delivery_us") or {}).get("median")
            out[f"fixed {kind} {int(rate):,}/s CPU/delivery"] = v
            v = (row.get("p99_ms") or {}).get("median")
            out[f"fixed {kind} {int(rate):,}/s p99"] = v
    return out

def med(runs, f):
    """The median of f over the runs that have a value, or None."""
    vals = [f(r) for r in runs]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def g(r, *path):
    """r[path[0]][path[1]]..., or None where a step is missing."""
    for k in path:
        if isinstance(r, list):
            r = r[k] if len(r) > k else None
        elif isinstance(r, dict):
            r = r.get(k)
        if r is None:
            return None
    return r

def per_system(d):
    """The per-system scenarios' medians over their runs."""
    out = {}
    for kind, res in d.get("systems", {}).items():
        rows = {
            "S-fanout max": ("fanout", lambda r: g(r, "best", "delivered_per_sec")),
            "S-big-group p50": ("big_group", lambda r: g(r, "latency_ms", "p50") if g(r, "delivered") else None),
            "S-big-group p99": ("big_group", lambda r: g(r, "latency_ms", "p99") if g(r, "delivered") else None),
            "S-idle KiB/conn": ("idle", lambda r: (g(r, "rss_per_connection_bytes") or 0) / 1024 or None),
            "S-connect /s": ("idle", lambda r: g(r, "connect", "per_second")),
            "echo round trips/s": ("echo", lambda r: g(r, "round_trips_per_sec")),
        }
        for name, (sc, f) in rows.items():
            out[f"{kind} {name}"] = med(res.get(f"{sc}_runs") or [], f)
    return out

def features(d):
    """The features' figures (history, presence, identity), each a median of its own runs."""
    out = {}
    h = d.get("history") or {}
    out["history off CPU/delivery"] = h.get("rust_median_us")
    out["history on CPU/delivery"] = h.get("rust-history_median_us")
    out["history on S-fanout max"] = g(h, "fanout", "best", "delivered_per_sec")
    out["storm all recovered (s)"] = g(h, "storm", "all_recovered_seconds")
    p = d.get("presence") or {}
    out["presence off connects/s"] = p.get("off_median_connects_per_sec")
    out["presence on connects/s"] = p.get("on_median_connects_per_sec")
    out["presence off KiB/conn"] = (p.get("off_median_rss_per_connection_bytes") or 0) / 1024 or None
    out["presence on KiB/conn"] = (p.get("on_median_rss_per_connection_bytes") or 0) / 1024 or None
    out["presence 5000-member read p99"] = g(p, "big_group_read", "p99_ms")
    out["API publish req/s"] = g(p, "api_publish", "requests_per_sec")
    c = d.get("connect_identity") or {}
    for k in ("anonymous", "token", "hook"):
        out[f"connect {k} /s"] = g(c, k, "per_second")
    return out

A = {**fixed(a), **per_system(a), **features(a)}
B = {**fixed(b), **per_system(b), **features(b)}
bad = 0
print(f"| figure | {a['date'][:16]} | {b['date'][:16]} | change |")
print("|---|---|---|---|")
for k in A:
    x, y = A.get(k), B.get(k)
    if x is None or y is None:
        continue
    ch = y / x - 1 if x else 0
    flag = "" if abs(ch) <= args.tolerance else f" **>{args.tolerance:.0%}**"
    bad += bool(flag)
    print(f"| {k} | {x:,.2f} | {y:,.2f} | {ch:+.1%}{flag} |")
both = sum(1 for k in A if A.get(k) is not None and B.get(k) is not None)
print(f"\n{bad} of {both} figures moved by more than {args.tolerance:.0%}")
