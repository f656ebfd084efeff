#!/usr/bin/env python3
"""The benchmark driver: every scenario against every system, in one run, on this machine.

Systems, two replicas each on one redis-server started here:
  rust      this project (target/release/channels-server, Redis pub/sub layer)
  rust-core this project with --layer redis-core (channels_redis' core protocol)
  rust-cluster  this project's pub/sub layer on a Redis Cluster of three masters started here
            (sharded pub/sub; S-fanout only), next to "rust" on one Redis
  django    the tutorial's Django app under daphne with channels_redis' RedisPubSubChannelLayer
  django-async  the fair Django row: the same texts from an AsyncWebsocketConsumer under uvicorn
            (uvloop, httptools), one process per replica (bench/django_async)
  socketio  Socket.IO 4 on Node with @socket.io/redis-adapter (bench/socketio)
  rust-nodirect  "rust" with --direct-delivery false (the fixed scenario only: the fan-out's
            fast path against its baseline)
  rust-w2   "rust" as ONE replica with --workers 2 (the fixed scenario only: how the server
            scales with threads, against two single-threaded replicas)
  floor     bench/floor.c, one process: no WebSocket library, no channel layer, one write per
            delivery (the yardstick of the "fixed" scenario and of S-big-group's latency, not a
            system of its own; S-big-group with every member on it, no other scenario)

Scenarios (issue 5, reference/performance.md):
  fixed        S-fanout's shape at fixed rates of 10,000, 30,000 and 50,000 deliveries/s
               (--fixed-rates), each --fixed-runs times with the systems alternating within each
               repetition, the floor among them: per system and rate the median and the spread
               (min-max) of the server CPU per delivery (µs, i.e. CPU-seconds per million
               deliveries) and of p99, the loss, and each system's CPU per delivery over the
               floor's (issue 18)
  S-fanout     10-member groups spread over both replicas, one publisher per group; the offered
               rate doubles each step, then bisection steps (--bisect, at most) narrow the limit
               between the last passing and the failing rate until they are within
               --bisect-precision of each other; the result is the highest delivered messages/s
               with zero loss, no duplicate or reorder, and p99 < 50 ms
  S-big-group  one group of 5,000 members over both replicas, one publisher at 10 messages/s
  S-idle       idle connections joined to groups on ONE replica: RSS per connection, idle CPU
  S-connect    connections per second (handshake plus group join), from the S-idle connect phase
  echo         request/response round trips (context only)

The same load generator (target/release/channels-loadgen) drives every system. Results go to
bench/results/<UTC time>.json and a Markdown summary is printed. Run it with bench/run.sh, which
builds and installs what this needs.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import http.cookiejar
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "target" / "release" / "channels-loadgen"
PEERS = ROOT / "bench" / "peers.sh"
PROTOCOL = {"rust": "seed", "rust-w2": "seed", "rust-nodirect": "seed", "rust-core": "seed",
            "rust-cluster": "seed",
            "django": "seed", "django-async": "seed",
            "socketio": "socketio", "rust-history": "seed-recover", "floor": "seed"}
# Extra load generator arguments per system: rust-history's clients use the recovery mode.
QUERY = {"rust-history": "recover=1"}
# Systems that run S-fanout only.
FANOUT_ONLY = {"rust-cluster"}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"127.0.0.1:{port}{path} not ready after {seconds} s")


class Redis:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def cluster_port():
    """A free port whose cluster bus port (10,000 higher) is free too: Redis refuses cluster
    ports above 55535, where the kernel's ephemeral ports (free_port) usually are."""
    for _ in range(1000):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node between 20000 and 55000")


class RedisCluster:
    """Three cluster-enabled redis-server masters (no replicas), joined with redis-cli."""

    def __init__(self, masters=3):
        self.dir = tempfile.mkdtemp(prefix="bench-cluster-")
        self.ports = [cluster_port() for _ in range(masters)]
        self.procs = []
        for port in self.ports:
            node_dir = os.path.join(self.dir, str(port))
            os.makedirs(node_dir)
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--loglevel", "warning", "--dir", node_dir,
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
                stdout=subprocess.DEVNULL))
        for port in self.ports:
            self._cli(port, "PING", expect="PONG")
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL)
        for port in self.ports:
            self._cli(port, "CLUSTER", "INFO", expect="cluster_state:ok")

    @staticmethod
    def _cli(port, *cmd, expect, seconds=30):
        deadline = time.time() + seconds
        while time.time() < deadline:
            out = subprocess.run(["redis-cli", "-p", str(port), *cmd], capture_output=True,
                                 text=True)
            if expect in out.stdout:
                return
            time.sleep(0.1)
        raise RuntimeError(f"redis-server :{port} never answered {expect} to {cmd}")

    @property
    def url(self):
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class System:
    """Two replicas of one system on one Redis."""

    def __init__(self, kind, redis, replicas=2, env=None):
        self.kind = kind
        self.procs = []
        self.ports = []
        for _ in range(replicas):
            port = free_port()
            proc = subprocess.Popen([str(PEERS), kind, str(port), redis.url],
                                    stdout=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, **(env or {})})
            self.procs.append(proc)
            self.ports.append(port)
        ready = subprocess.run([str(PEERS), "ready-path", kind], capture_output=True, text=True,
                               check=True).stdout.strip()
        for port in self.ports:
            wait_http(port, ready)

    @property
    def urls(self):
        return [f"ws://127.0.0.1:{p}" for p in self.ports]

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()


def loadgen(mode, system, args, urls=None, pids=None, timeout=300):
    cmd = [str(LOADGEN), mode, "--protocol", PROTOCOL[system.kind]]
    if system.kind in QUERY:
        cmd += ["--query", QUERY[system.kind]]
    for url in urls or system.urls:
        cmd += ["--url", url]
    for pid in pids if pids is not None else system.pids:
        cmd += ["--pid", str(pid)]
    cmd += [str(a) for a in args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout)


def passes(r):
    return ("error" not in r and r["lost"] == 0 and r["duplicated_or_reordered"] == 0
            and r["latency_ms"]["p99"] < 50.0)


def brief(r):
    if "error" in r:
        return {"error": r["error"]}
    return {k: r[k] for k in ("offered_publishes_per_sec", "published", "expected", "delivered",
                              "lost", "duplicated_or_reordered", "delivered_per_sec",
                              "latency_ms", "loadgen_cpu_percent", "servers")}


def fanout_sweep(system, args, start=None):
    """Doubles the publish rate from `start` (default --start-rate, or --start-rate-django for
    the Django rows) until a step fails, then bisects between the last passing and the failing
    rate (at most --bisect steps, until they are within --bisect-precision); returns (best
    step, all steps)."""
    best, steps = None, []
    tag = 0

    def step(rate):
        nonlocal tag
        tag += 1
        r = loadgen("fanout", system, ["--groups", args.groups, "--members", 10,
                                       "--publishers", 1, "--rate", rate,
                                       "--duration", args.step_seconds, "--drain", 2,
                                       "--tag", f"f{tag}x"])
        steps.append({"rate_per_publisher": rate, **brief(r)})
        ok = passes(r)
        log(f"  {system.kind} fanout rate {rate}/s/publisher: "
            + ("ok " if ok else "FAIL ")
            + (r.get("error") or f"{r['delivered_per_sec']:.0f} delivered/s, lost {r['lost']}, "
               f"p99 {r['latency_ms']['p99']:.1f} ms"))
        return ok

    rate = start or (args.start_rate_django if system.kind.startswith("django")
                     else args.start_rate)
    failed = None
    while rate <= args.max_rate:
        if not step(rate):
            failed = rate
            break
        best = steps[-1]
        rate *= 2
    if best is not None and failed is not None:
        # The p99 cliff lies between low and high: halve that gap until it is narrow enough.
        low, high = best["rate_per_publisher"], failed
        for _ in range(args.bisect):
            if (high - low) / low <= args.bisect_precision:
                break
            mid = round((low + high) / 2, 3)
            if step(mid):
                best, low = steps[-1], mid
            else:
                high = mid
    return best, steps


def median_run(runs, key):
    """The run whose key(run) is the median of those that have one (the upper middle of an even
    count), else the first run; None for no runs."""
    ok = sorted((r for r in runs if key(r) is not None), key=key)
    return ok[len(ok) // 2] if ok else (runs[0] if runs else None)


def per_system(kind, redis, args):
    """S-fanout, S-big-group, S-idle (with S-connect) and echo for one system, each --runs
    times on a fresh start. Every scenario keeps its runs ("<scenario>_runs") and, under its own
    name, the median run, which the summary shows with the spread of all runs."""
    skip, res = args.skip_set, {}
    if kind == "floor":
        # One process with every member and no channel layer: a yardstick for S-big-group's
        # latency (what the kernel and the load generator leave on this machine); S-fanout's
        # shape is the fixed scenario's, and it keeps no idle memory worth comparing.
        skip = skip | {"fanout", "idle", "echo"}

    def keep(scenario, runs, key):
        res[f"{scenario}_runs"] = runs
        res[scenario] = median_run(runs, key)

    if "fanout" not in skip:
        runs = []
        for run in range(args.runs):
            # rust-cluster runs on a Redis Cluster of its own, started afresh for each sweep.
            cluster = RedisCluster() if kind in FANOUT_ONLY else None
            if cluster:
                log(f"redis cluster on {cluster.url}")
            system = System(kind, cluster or redis)
            try:
                runs.append(dict(zip(("best", "steps"), fanout_sweep(
                    system, args, start=sweep_start(runs, args)))))
            finally:
                system.stop()
                if cluster:
                    cluster.stop()
        keep("fanout", runs, lambda r: (r["best"] or {}).get("delivered_per_sec"))
    if kind in FANOUT_ONLY:
        return res
    if "big-group" not in skip:
        def big_group(system, run):
            r = loadgen("fanout", system, ["--groups", 1, "--members", args.big_group,
                                           "--publishers", 1, "--rate", 10,
                                           "--duration", 10, "--drain", 3,
                                           "--source-ips", 2, "--tag", f"big{run}"],
                        timeout=150 if kind.startswith("django") else 400)
            log(f"  {kind} big group, run {run + 1}: " + (r.get("error") or
                f"p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms,"
                f" lost {r['lost']}"))
            return {**brief(r), "connect": r.get("connect")}

        keep("big_group", repeat(kind, redis, args, 1 if kind == "floor" else 2, big_group),
             # A run that delivered nothing in time has no latency (the loadgen says 0).
             lambda r: (r.get("latency_ms") or {}).get("p99") if r.get("delivered") else None)
    if "idle" not in skip:
        n = args.idle_django if kind.startswith("django") else args.idle

        def idle(system, run):
            r = loadgen("idle", system, ["--connections", n, "--groups", 1000, "--hold", 10,
                                         "--source-ips", 8, "--connect-concurrency", 200],
                        timeout=600)
            log(f"  {kind} idle {n}, run {run + 1}: " + (r.get("error") or
                f"{r['rss_per_connection_bytes'] / 1024:.1f} KiB/conn, "
                f"{r['connect']['per_second']:.0f} connects/s"))
            return r

        keep("idle", repeat(kind, redis, args, 1, idle),
             lambda r: r.get("rss_per_connection_bytes"))
    if "echo" not in skip:
        keep("echo", repeat(kind, redis, args, 1, lambda system, run: loadgen(
            "echo", system, ["--connections", 100, "--duration", 5])),
            lambda r: r.get("round_trips_per_sec"))
    return res


def repeat(kind, redis, args, replicas, measure):
    """measure(system, run) for each of --runs runs, each on a fresh start of `kind`."""
    runs = []
    for run in range(args.runs):
        system = System(kind, redis, replicas=replicas)
        try:
            runs.append(measure(system, run))
        finally:
            system.stop()
    return runs


def sweep_start(runs, args):
    """Where a repeated S-fanout sweep starts: two doublings below the lowest limit found so far
    (so each later sweep still climbs to its own cliff, in fewer steps), or the default."""
    limits = [r["best"]["rate_per_publisher"] for r in runs if r.get("best")]
    return min(limits) / 4 if limits else None


def hs256_token(secret, claims):
    """A JWT signed with HS256, with the standard library only."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    message = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    tag = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return message + "." + b64(tag)


class DjangoHook:
    """The seed project's connect hook (tests/django_seed, accounts/) under daphne, with one
    logged-in user whose session cookie the load generator sends."""

    SECRET = "bench-hook-secret"

    def __init__(self, redis):
        seed = ROOT / "tests" / "django_seed"
        python = ROOT / ".venv" / "bin" / "python"
        self.db = Path(tempfile.mkdtemp()) / "bench.sqlite3"
        env = {**os.environ, "SEED_LAYER": "pubsub", "SEED_REDIS_URLS": redis.url,
               "SEED_DATABASE": str(self.db), "SEED_HOOK_SECRET": self.SECRET,
               "SEED_TOKEN_SECRET": "unused-unused-unused-unused-unused-0",
               "PYTHONDONTWRITEBYTECODE": "1"}
        subprocess.run([str(python), "manage.py", "migrate", "--noinput"], cwd=seed, env=env,
                       check=True, capture_output=True)
        subprocess.run([str(python), "manage.py", "shell", "-c",
                        "from django.contrib.auth.models import User; "
                        "User.objects.create_user('bench', password='bench-pw-1', is_staff=True)"],
                       cwd=seed, env=env, check=True, capture_output=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "daphne"), "-b", "127.0.0.1", "-p", str(self.port),
             "djangoProject.asgi:application"], cwd=seed, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_http(self.port, "/accounts/login/")
        self.cookie = self._log_in()

    def _log_in(self):
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        base = f"http://127.0.0.1:{self.port}"
        page = opener.open(base + "/accounts/login/").read().decode()
        csrf = page.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
        form = urllib.parse.urlencode({"csrfmiddlewaretoken": csrf, "username": "bench",
                                       "password": "bench-pw-1"}).encode()
        opener.open(base + "/accounts/login/", form)
        session = next(c for c in jar if c.name == "sessionid")
        return f"sessionid={session.value}"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/ws/connect/"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.db.parent, ignore_errors=True)


def connect_identity(redis, args):
    """S-connect on one replica (--workers 1): anonymous, with a token (HS256), and with the
    Django connect hook under daphne; connections/s and handshake p99 for each."""
    secret = "bench-token-secret-of-at-least-32-bytes-0"
    token = hs256_token(secret, {"sub": "bench", "exp": int(time.time()) + 3600,
                                 "groups": ["*"]})
    hook = DjangoHook(redis)
    cases = [
        ("anonymous", {}, [], args.connect_identity),
        ("token", {"CHANNELS_TOKEN_HS256_SECRET": secret}, ["--query", f"token={token}"],
         args.connect_identity),
        ("hook", {"CHANNELS_CONNECT_HOOK": hook.url, "CHANNELS_CONNECT_HOOK_SECRET": hook.SECRET,
                  "CHANNELS_CONNECT_HOOK_MAX_IN_FLIGHT": "256"},
         ["--header", f"Cookie: {hook.cookie}"], args.connect_identity_hook),
    ]
    out = {}
    try:
        # Alternating anonymous and token three times each (the median is reported), then the
        # hook once: the order of runs on a shared machine moves a single figure by 20 %.
        runs = {}
        for label, env, extra, n in cases[:2] * 3 + cases[2:]:
            system = System("rust", redis, replicas=1, env=env)
            try:
                r = loadgen("idle", system, ["--connections", n, "--groups", 100, "--hold", 1,
                                             "--source-ips", 4, "--connect-concurrency", 100]
                            + extra, timeout=600)
            finally:
                system.stop()
            c = r.get("connect") or {"error": r.get("error")}
            runs.setdefault(label, []).append(c)
            log(f"  connect {label}: " + (c.get("error") or
                f"{c['per_second']:.0f}/s, handshake p99 {c['handshake_ms']['p99']:.1f} ms"))
        for label, results in runs.items():
            out[label] = median_run(results, lambda c: c.get("per_second"))
            out[label + "_runs"] = results
    finally:
        hook.stop()
    return out


def cpu_per_delivery_us(r, pids=None):
    """CPU per delivery in µs of the processes `pids` (default: every process measured), or
    None."""
    if "error" in r or not r.get("delivered_per_sec"):
        return None
    cpu = sum(p["cpu_percent"] for p in r["servers"] if pids is None or p["pid"] in pids)
    return cpu / 100 * 1e6 / r["delivered_per_sec"]


def spread(values):
    """The median, min and max of the values that are not None, or None if there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values)}


def fixed_rates(redis, args):
    """Issue 18: S-fanout at fixed delivery rates, every system and the floor, alternating.

    For each repetition and rate, every system runs once (a fresh start each time, the order
    rotated by one per repetition), so that a slow minute of the shared machine hits them all.
    Reports, per system and rate, the spread of the server CPU per delivery and of p99, the
    loss, and each system's median CPU per delivery over the floor's and Socket.IO's over ours.
    """
    systems = args.systems.split(",")
    # rust-w2 and rust-nodirect are "rust" in other shapes: they run where rust does.
    shapes = ("rust-w2", "rust-nodirect")
    kinds = [k for k in args.fixed_systems.split(",")
             if k != "floor" and (k in systems or (k in shapes and "rust" in systems))]
    kinds.append("floor")
    rates = [int(r) for r in args.fixed_rates.split(",")]
    low = args.fixed_django_rate
    slow = [k for k in kinds if k.startswith("django")]

    def rates_of(kind):
        # Django cannot serve the fixed rates (it saturates far below 10,000/s): it runs at its
        # own rate, next to rust and the floor at the same rate.
        if kind in slow:
            return [low]
        if slow and kind in ("rust", "floor"):
            return sorted({low, *rates})
        return rates

    all_rates = sorted({r for k in kinds for r in rates_of(k)})
    out = {"rates": all_rates, "kinds": kinds, "seconds": args.fixed_seconds,
           "groups": args.groups, "members": 10, "runs": []}
    for run in range(args.fixed_runs):
        order = kinds[run % len(kinds):] + kinds[:run % len(kinds)]
        for rate in all_rates:
            for kind in order:
                if rate in rates_of(kind):
                    out["runs"].append(fixed_run(kind, rate, run, redis, args))
    out["summary"], out["ratios"] = {}, {}
    for kind in kinds:
        for rate in rates_of(kind):
            runs = [x for x in out["runs"] if x["kind"] == kind and x["rate"] == rate]
            ok = [x for x in runs if "error" not in x]
            out["summary"].setdefault(kind, {})[str(rate)] = {
                "cpu_per_delivery_us": spread(x["cpu_per_delivery_us"] for x in ok),
                "redis_cpu_per_delivery_us": spread(x["redis_cpu_per_delivery_us"] for x in ok),
                "p99_ms": spread(x["latency_ms"]["p99"] for x in ok),
                "lost_max": max((x["lost"] for x in ok), default=None),
                "delivered_per_sec": spread(x["delivered_per_sec"] for x in ok),
                "errors": [x["error"] for x in runs if "error" in x],
            }
    for rate in all_rates:
        cpu = {k: ((out["summary"][k].get(str(rate)) or {}).get("cpu_per_delivery_us") or {})
               .get("median") for k in kinds}
        ratios = {f"{k}/floor": cpu[k] / cpu["floor"] for k in kinds
                  if k != "floor" and cpu[k] and cpu["floor"]}
        for peer in ("socketio", *slow):
            if cpu.get(peer) and cpu.get("rust"):
                ratios[f"{peer}/rust"] = cpu[peer] / cpu["rust"]
        out["ratios"][str(rate)] = ratios
    return out


def fixed_run(kind, rate, run, redis, args):
    """One fixed-rate S-fanout run of `kind` at `rate` deliveries/s: 1 publisher per 10-member
    group at rate / (groups * 10) messages/s. The floor is one process (it has no channel layer
    to join its replicas); the others are two replicas on `redis`."""
    if kind == "rust-w2":
        system = System("rust", redis, replicas=1, env={"PEERS_RUST_WORKERS": "2"})
    elif kind == "rust-nodirect":
        system = System("rust", redis, env={"PEERS_RUST_ARGS": "--direct-delivery false"})
    else:
        system = System(kind, redis, replicas=1 if kind == "floor" else 2)
    try:
        # Redis' CPU is read too (not counted in the server's): the floor does not use it.
        pids = system.pids + ([] if kind == "floor" else [redis.proc.pid])
        r = loadgen("fanout", system, ["--groups", args.groups, "--members", 10,
                                       "--publishers", 1, "--rate", rate / (args.groups * 10),
                                       "--duration", args.fixed_seconds, "--drain", 2,
                                       "--tag", f"x{run}r{rate // 1000}{kind.replace('-', '')}"],
                    pids=pids)
    finally:
        system.stop()
    us = cpu_per_delivery_us(r, system.pids)
    row = {"kind": kind, "rate": rate, "run": run, "cpu_per_delivery_us": us,
           "redis_cpu_per_delivery_us": cpu_per_delivery_us(r, [redis.proc.pid]), **brief(r)}
    log(f"  fixed {kind} at {rate:,}/s, run {run + 1}: " + (r.get("error") or
        f"{r['delivered_per_sec']:,.0f} delivered/s, lost {r['lost']}, {us:.2f} µs server CPU "
        f"per delivery, p99 {r['latency_ms']['p99']:.1f} ms"))
    return row


def history_cost(redis, args):
    """Issue 14: CPU per delivery at 32,000 deliveries/s with history off (rust) and on
    (rust-history, clients in recovery mode), alternating, median of args.history_runs each; the
    fan-out limit with history on; and a reconnect storm of args.storm clients."""
    out = {"runs": []}
    rate = 32000 / (args.groups * 10)
    for run in range(args.history_runs):
        for kind in ("rust", "rust-history"):
            system = System(kind, redis)
            try:
                # Redis' CPU too: history moves work into its Lua script.
                r = loadgen("fanout", system, ["--groups", args.groups, "--members", 10,
                                               "--publishers", 1, "--rate", rate,
                                               "--duration", 10, "--drain", 2,
                                               "--tag", f"h{run}{kind.replace('-', '')}"],
                            pids=system.pids + [redis.proc.pid])
            finally:
                system.stop()
            us = cpu_per_delivery_us(r, system.pids)
            redis_us = cpu_per_delivery_us(r, [redis.proc.pid])
            out["runs"].append({"kind": kind, "run": run, "cpu_per_delivery_us": us,
                                "redis_cpu_per_delivery_us": redis_us, **brief(r)})
            log(f"  {kind} at 32,000/s: " + (r.get("error") or
                f"{r['delivered_per_sec']:.0f} delivered/s, lost {r['lost']}, "
                f"{us:.1f} µs server CPU per delivery (+{redis_us:.2f} µs redis), "
                f"p99 {r['latency_ms']['p99']:.1f} ms"))
    for kind in ("rust", "rust-history"):
        for key, name in (("cpu_per_delivery_us", "_median_us"),
                          ("redis_cpu_per_delivery_us", "_redis_median_us")):
            values = sorted(x[key] for x in out["runs"] if x["kind"] == kind and x[key] is not None)
            out[kind + name] = values[len(values) // 2] if values else None
    if "history-limit" not in args.skip_set:
        system = System("rust-history", redis)
        try:
            best, steps = fanout_sweep(system, args)
            out["fanout"] = {"best": best, "steps": steps}
        finally:
            system.stop()
    system = System("rust-history", redis)
    try:
        r = loadgen("storm", system, ["--connections", args.storm, "--missed", 20,
                                      "--timeout", 30, "--source-ips", 2,
                                      "--connect-concurrency", 200, "--tag", "s"],
                    timeout=300)
        out["storm"] = r
        log("  reconnect storm: " + (r.get("error") or
            f"{r['recovered']} of {r['connections']} recovered {r['missed']} messages, "
            f"all within {r['all_recovered_seconds']:.2f} s, p99 {r['recover_ms']['p99']:.0f} ms"
            + (f", first failure: {r['first_failure']}" if r.get("first_failure") else "")))
    finally:
        system.stop()
    return out


API_KEY = "bench-api-key-0123456789abcdef"


def api_get(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-API-Key": API_KEY})
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.loads(answer.read())


WRK_POST = """wrk.method = "POST"
wrk.body = '{"type": "chat.message", "message": "bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%s"
wrk.path = "/api/groups/apipub/send"
"""


def api_publish_rate(port, seconds=5, connections=8):
    """POST /api/groups/{g}/send from wrk (one thread, `connections` keep-alive connections)
    for `seconds`: requests per second, latency p50/p99, and the answers that were not 202.
    wrk, not Python: 8 Python threads contend for the GIL and measured the client (about a
    quarter of wrk's rate, and slower when the server answered faster)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_POST % API_KEY)
        script.flush()
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                              "-s", script.name, f"http://127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=seconds + 30).stdout

    def field(pattern):
        m = re.search(pattern, out)
        return m.group(1) if m else None

    def ms(text):
        if text is None:
            return None
        value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rate = field(r"Requests/sec:\s+([\d.]+)")
    return {"requests_per_sec": float(rate) if rate else None, "connections": connections,
            "tool": "wrk", "p50_ms": ms(field(r"50%\s+(\S+)")),
            "p99_ms": ms(field(r"99%\s+(\S+)")),
            "errors": [line for line in out.splitlines() if "Non-2xx" in line or "errors" in line]
            or ([] if rate else [out[-500:]])}


def presence_cost(redis, args):
    """Issue 15: S-connect and idle memory per connection with presence off and on (alternating,
    median of args.presence_runs each); the presence of one group of args.big_group members read
    through the API (latency p50/p99); API publish requests per second."""
    out = {"runs": []}
    env_on = {"CHANNELS_PRESENCE": "1"}
    for run in range(args.presence_runs):
        for label, env in (("off", {}), ("on", env_on)):
            system = System("rust", redis, replicas=1, env=env)
            try:
                r = loadgen("idle", system, ["--connections", args.connect_identity,
                                             "--groups", 100, "--hold", 3, "--source-ips", 4,
                                             "--connect-concurrency", 100,
                                             "--tag", f"p{run}{label}"], timeout=600)
            finally:
                system.stop()
            if "error" in r:
                out["runs"].append({"presence": label, "error": r["error"]})
                log(f"  presence {label}: {r['error']}")
                continue
            row = {"presence": label, "connects_per_sec": r["connect"]["per_second"],
                   "handshake_p99_ms": r["connect"]["handshake_ms"]["p99"],
                   "rss_per_connection_bytes": r["rss_per_connection_bytes"]}
            out["runs"].append(row)
            log(f"  presence {label}: {row['connects_per_sec']:.0f} connects/s, "
                f"{row['rss_per_connection_bytes'] / 1024:.1f} KiB/conn")
    for label in ("off", "on"):
        for key in ("connects_per_sec", "rss_per_connection_bytes"):
            values = sorted(x[key] for x in out["runs"] if x["presence"] == label and key in x)
            out[f"{label}_median_{key}"] = values[len(values) // 2] if values else None
    # One group of big_group members held while the API reads its presence.
    api_port = free_port()
    system = System("rust", redis, replicas=1,
                    env={**env_on, "CHANNELS_API_BIND": f"127.0.0.1:{api_port}",
                         "CHANNELS_API_KEY": API_KEY})
    holder = subprocess.Popen(
        [str(LOADGEN), "idle", "--protocol", "seed", "--url", system.urls[0],
         "--connections", str(args.big_group), "--groups", "1", "--hold", "60",
         "--source-ips", "2", "--connect-concurrency", "200", "--tag", "pbig"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        count = 0
        while time.time() < deadline and count < args.big_group:
            count = api_get(api_port, "/api/groups/pbigidle0/presence")["count"]
            time.sleep(0.5)
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            count = api_get(api_port, "/api/groups/pbigidle0/presence")["count"]
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out["big_group_read"] = {"members": count, "reads": len(times),
                                 "p50_ms": times[len(times) // 2],
                                 "p99_ms": times[int(len(times) * 0.99) - 1]}
        log(f"  presence of a {count}-member group through the API: "
            f"p50 {out['big_group_read']['p50_ms']:.1f} ms, "
            f"p99 {out['big_group_read']['p99_ms']:.1f} ms")
        out["api_publish"] = api_publish_rate(api_port)
        pub = out["api_publish"]
        log(f"  API publish: {pub['requests_per_sec'] or 0:.0f} requests/s, p99 "
            f"{pub['p99_ms']} ms (wrk, {pub['connections']} keep-alive connections)")
    finally:
        holder.terminate()
        holder.wait(timeout=30)
        system.stop()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems",
                   default="rust,rust-cluster,rust-core,socketio,django,django-async,floor")
    p.add_argument("--groups", type=int, default=100, help="S-fanout groups (10 members each)")
    p.add_argument("--start-rate", type=float, default=0.5,
                   help="S-fanout messages/s per publisher at the first step")
    p.add_argument("--start-rate-django", type=float, default=0.025,
                   help="the same for daphne, which saturates far earlier")
    p.add_argument("--max-rate", type=float, default=2000.0)
    p.add_argument("--step-seconds", type=float, default=5.0)
    p.add_argument("--bisect", type=int, default=6,
                   help="S-fanout: at most this many bisection steps between the last passing "
                        "and the failing rate")
    p.add_argument("--bisect-precision", type=float, default=0.02,
                   help="S-fanout: stop bisecting once the failing rate is within this fraction "
                        "of the passing one")
    p.add_argument("--fixed-rates", default="10000,30000,50000",
                   help="fixed: delivery rates (deliveries/s over all members)")
    p.add_argument("--fixed-runs", type=int, default=3,
                   help="fixed: repetitions of every rate for every system")
    p.add_argument("--fixed-seconds", type=float, default=10.0,
                   help="fixed: publishing time of each run")
    p.add_argument("--fixed-systems", default="rust,rust-nodirect,rust-w2,socketio,django-async",
                   help="fixed: which of --systems to run (seed or Socket.IO protocol: rust, "
                        "rust-core, socketio, django, django-async; rust-w2 and rust-nodirect "
                        "run with rust); the "
                        "floor always runs")
    p.add_argument("--fixed-django-rate", type=int, default=2000,
                   help="fixed: the one rate of the Django rows, which cannot serve the others; "
                        "rust and the floor run at it too")
    p.add_argument("--big-group", type=int, default=5000)
    # 50,000 is the figure; a process here may hold at most 20,000 descriptors (a hard
    # RLIMIT_NOFILE that root cannot raise without CAP_SYS_RESOURCE), so one replica holds 19,000.
    p.add_argument("--idle", type=int, default=19000, help="S-idle connections (rust, socketio)")
    p.add_argument("--idle-django", type=int, default=2000,
                   help="S-idle connections for daphne, which accepts them far more slowly")
    p.add_argument("--connect-identity", type=int, default=10000,
                   help="S-connect-identity connections for anonymous and token handshakes")
    p.add_argument("--connect-identity-hook", type=int, default=1000,
                   help="S-connect-identity connections through the Django connect hook")
    p.add_argument("--history-runs", type=int, default=3,
                   help="S-history: alternating runs with history off and on")
    p.add_argument("--storm", type=int, default=1000,
                   help="S-history: clients resuming at once in the reconnect storm")
    p.add_argument("--presence-runs", type=int, default=3,
                   help="S-presence: alternating connect runs with presence off and on")
    p.add_argument("--runs", type=int, default=3,
                   help="S-fanout, S-big-group, S-idle and echo: runs of each per system (the "
                        "summary shows the median and the spread)")
    p.add_argument("--skip", default="", help="comma-separated scenarios to skip")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    args.skip_set = skip

    started = datetime.datetime.now(datetime.timezone.utc)
    results = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                         if l.startswith("model name")), "unknown"),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "kernel": platform.release(),
        },
        "command": "bench/run.sh " + " ".join(sys.argv[1:]),
        "systems": {},
    }
    redis = Redis()
    log(f"redis-server on {redis.url}")
    try:
        if "fixed" not in skip:
            log("== fixed rates")
            results["fixed"] = fixed_rates(redis, args)
        for kind in args.systems.split(","):
            res = results["systems"].setdefault(kind, {})
            log(f"== {kind}")
            res.update(per_system(kind, redis, args))
        if "history" not in skip and "rust" in args.systems.split(","):
            log("== history (rust)")
            results["history"] = history_cost(redis, args)
        if "presence" not in skip and "rust" in args.systems.split(","):
            log("== presence (rust)")
            results["presence"] = presence_cost(redis, args)
        if "connect-identity" not in skip and "rust" in args.systems.split(","):
            log("== connect-identity (rust)")
            results["connect_identity"] = connect_identity(redis, args)
    except BaseException as error:
        # What was measured before a failure is kept, with the failure.
        results["failed"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        redis.stop()
        out_dir = ROOT / "bench" / "results"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / (started.strftime("%Y-%m-%dT%H%M%SZ") + ".json")
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        log(f"results: {path.relative_to(ROOT)}")
    print(render(results))


def f_best(systems, kind):
    """S-fanout's best delivered messages/s of `kind` (its median run), if it ran."""
    best = ((systems.get(kind) or {}).get("fanout") or {}).get("best") or {}
    return best.get("delivered_per_sec")


def render_fixed(fixed):
    """The fixed-rate tables: per rate and system the medians with their spreads, then the
    ratios of the medians."""
    def cell(v, spec):
        if not v:
            return "n/a"
        return (f"{v['median']:{spec}} ({v['min']:{spec}}–{v['max']:{spec}})"
                if v["runs"] > 1 else f"{v['median']:{spec}}")

    runs = max((x["run"] for x in fixed["runs"]), default=0) + 1
    lines = [f"S-fanout at fixed rates ({fixed['groups']} groups of {fixed['members']}, one "
             f"publisher each, {fixed['seconds']:g} s per run; median (min–max) of {runs} "
             f"run(s), the systems alternating; CPU per delivery is server CPU-seconds per "
             f"million deliveries; the floor is bench/floor.c):", "",
             "| deliveries/s | system | CPU per delivery (µs) | p99 (ms) | lost (most in a run) "
             "| delivered/s | Redis CPU per delivery (µs, median; not in the ratios) |",
             "|---|---|---|---|---|---|---|"]
    for rate in fixed["rates"]:
        for kind in fixed["kinds"]:
            row = fixed["summary"][kind].get(str(rate))
            if row is None:
                continue
            lost = "n/a" if row["lost_max"] is None else f"{row['lost_max']:,}"
            errors = f" ({len(row['errors'])} failed: {row['errors'][0]})" if row["errors"] else ""
            delivered = (row["delivered_per_sec"] or {}).get("median")
            redis_us = (row.get("redis_cpu_per_delivery_us") or {}).get("median")
            lines.append(f"| {rate:,} | {kind} | {cell(row['cpu_per_delivery_us'], '.2f')} | "
                         f"{cell(row['p99_ms'], '.1f')} | {lost}{errors} | "
                         f"{'n/a' if delivered is None else f'{delivered:,.0f}'} | "
                         f"{'n/a' if kind == 'floor' or redis_us is None else f'{redis_us:.2f}'} |")
    names = [f"{k}/floor" for k in fixed["kinds"] if k != "floor"]
    names += [f"{k}/rust" for k in fixed["kinds"]
              if "rust" in fixed["kinds"] and (k == "socketio" or k.startswith("django"))]
    lines += ["", "Ratios of the median CPU per delivery:", "",
              "| deliveries/s | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for rate in fixed["rates"]:
        ratios = fixed["ratios"][str(rate)]
        lines.append(f"| {rate:,} | " + " | ".join(
            f"{ratios[n]:.2f}x" if n in ratios else "n/a" for n in names) + " |")
    return lines + [""]


def render(results):
    """A Markdown summary with ratios to the other systems."""
    s = results["systems"]
    lines = [f"Run {results['date']} on {results['machine']['cpus']} CPUs "
             f"({results['machine']['cpu']}), `{results['command']}`", ""]
    if results.get("fixed"):
        lines += render_fixed(results["fixed"])

    def dig(v, *path):
        for k in path:
            if isinstance(v, list) and isinstance(k, int) and k < len(v):
                v = v[k]
            elif isinstance(v, dict) and k in v and v[k] is not None:
                v = v[k]
            else:
                return None
        return v

    def ratio(a, b):
        return f"{a / b:.1f}x" if a and b else "n/a"

    def kib(v):
        return v / 1024 if v else None

    # The systems that ran a per-system scenario (none when only "fixed" and the like ran).
    kinds = [k for k in s if s[k]]
    peers = [p for p in ("socketio", "django", "django-async") if p in kinds]
    if kinds:
        runs = max((len(s[k].get(f"{x}_runs") or [None]) for k in kinds
                    for x in ("fanout", "big_group", "idle", "echo")), default=1)
        lines.append(f"Per system: median (min–max) of {runs} run(s) each.")
        lines.append("")
        lines.append("| " + " | ".join(["metric", *kinds, *(f"rust vs {p}" for p in peers)])
                     + " |")
        lines.append("|---" * (len(kinds) + len(peers) + 1) + "|")
    # (name, scenario, value of one run, higher is better)
    rows = [
        ("S-fanout: max delivered msg/s (0 loss, p99 < 50 ms)", "fanout",
         lambda r: dig(r, "best", "delivered_per_sec"), True),
        ("S-fanout: p99 at that rate (ms)", "fanout",
         lambda r: dig(r, "best", "latency_ms", "p99"), False),
        # A run that delivered nothing within its drain has no latency (the loadgen says 0).
        ("S-big-group: p50 (ms)", "big_group",
         lambda r: dig(r, "latency_ms", "p50") if dig(r, "delivered") else None, False),
        ("S-big-group: p99 (ms)", "big_group",
         lambda r: dig(r, "latency_ms", "p99") if dig(r, "delivered") else None, False),
        ("S-big-group: lost (most in a run)", "big_group", lambda r: dig(r, "lost"), None),
        ("S-idle: connections held", "idle", lambda r: dig(r, "connect", "connections"), None),
        ("S-idle: RSS per connection (KiB)", "idle",
         lambda r: kib(dig(r, "rss_per_connection_bytes")), False),
        ("S-idle: idle CPU (% of a core)", "idle", lambda r: dig(r, "idle", 0, "cpu_percent"),
         False),
        ("S-connect: connections/s", "idle", lambda r: dig(r, "connect", "per_second"), True),
        ("echo: round trips/s (100 conns)", "echo", lambda r: dig(r, "round_trips_per_sec"),
         True),
    ]

    def stats(kind, scenario, f):
        runs = s.get(kind, {}).get(f"{scenario}_runs")
        if runs is None:  # results written before --runs: one run under the scenario's name
            one = s.get(kind, {}).get(scenario)
            runs = [] if one is None else [one]
        return spread(f(r) for r in runs)

    def show(v):
        return f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"

    for name, scenario, f, higher_better in rows if kinds else ():
        cells = []
        for k in kinds:
            v = stats(k, scenario, f)
            if v is None:
                cells.append("n/a")
            elif higher_better is None:  # counts: the largest of the runs
                cells.append(show(v["max"]))
            elif v["runs"] > 1:
                cells.append(f"{show(v['median'])} ({show(v['min'])}–{show(v['max'])})")
            else:
                cells.append(show(v["median"]))
        rust = (stats("rust", scenario, f) or {}).get("median")
        extra = [ratio(rust, (stats(p, scenario, f) or {}).get("median")) if higher_better
                 else "" for p in peers]
        lines.append("| " + " | ".join([name, *cells, *extra]) + " |")
    one, cluster = f_best(s, "rust"), f_best(s, "rust-cluster")
    if one and cluster:
        lines += ["", f"S-fanout on a three-master Redis Cluster (sharded pub/sub): "
                  f"{cluster:,.0f} delivered/s against {one:,.0f} on one Redis "
                  f"({cluster / one:.2f}x)."]
    identity = results.get("connect_identity")
    if identity:
        lines += ["", "S-connect-identity (rust, one replica, --workers 1; anonymous and token: "
                  "median of 3 alternating runs):", "",
                  "| handshakes | connections/s | handshake p99 (ms) | vs anonymous |",
                  "|---|---|---|---|"]
        base = (identity.get("anonymous") or {}).get("per_second")
        for label in ("anonymous", "token", "hook"):
            c = identity.get(label) or {}
            if "per_second" not in c:
                lines.append(f"| {label} | {c.get('error', 'n/a')} | | |")
                continue
            share = f"{c['per_second'] / base:.0%}" if base else "n/a"
            lines.append(f"| {label} | {c['per_second']:,.0f} | "
                         f"{c['handshake_ms']['p99']:.1f} | {share} |")
    history = results.get("history")
    if history:
        off, on = history.get("rust_median_us"), history.get("rust-history_median_us")
        share = f"+{(on / off - 1):.0%}" if off and on else "n/a"
        best = ((history.get("fanout") or {}).get("best") or {}).get("delivered_per_sec")
        storm = history.get("storm") or {}
        lines += ["", "S-history (rust, two replicas; median of alternating runs):", "",
                  "| metric | history off | history on (--history-size 100, recover=1) |",
                  "|---|---|---|",
                  f"| server CPU per delivery at 32,000/s (µs) | "
                  f"{off if off is None else f'{off:.1f}'} | "
                  f"{on if on is None else f'{on:.1f}'} ({share}) |",
                  f"| Redis CPU per delivery at 32,000/s (µs) | "
                  f"{history.get('rust_redis_median_us') or 0:.2f} | "
                  f"{history.get('rust-history_redis_median_us') or 0:.2f} |",
                  f"| S-fanout max delivered msg/s | (see rust above) | "
                  f"{'n/a' if best is None else f'{best:,.0f}'} |",
                  ""]
        if "recovered" in storm:
            lines.append(f"Reconnect storm: {storm['recovered']} of {storm['connections']} clients "
                         f"resumed at once and recovered {storm['missed']} messages each, all "
                         f"within {storm['all_recovered_seconds']:.2f} s (p50 "
                         f"{storm['recover_ms']['p50']:.0f} ms, p99 "
                         f"{storm['recover_ms']['p99']:.0f} ms); {storm['failed']} failed.")
        elif storm:
            lines.append(f"Reconnect storm: {storm.get('error')}")
    presence = results.get("presence")
    if presence:
        def fmt(v, scale=1.0, spec=",.0f"):
            return "n/a" if v is None else format(v / scale, spec)
        c_off = presence.get("off_median_connects_per_sec")
        c_on = presence.get("on_median_connects_per_sec")
        share = f"{c_on / c_off:.0%}" if c_off and c_on else "n/a"
        lines += ["", "S-presence (rust, one replica; median of alternating runs):", "",
                  "| metric | presence off | presence on |", "|---|---|---|",
                  f"| connections/s (S-connect) | {fmt(c_off)} | {fmt(c_on)} ({share} of off) |",
                  f"| idle memory per connection (KiB) | "
                  f"{fmt(presence.get('off_median_rss_per_connection_bytes'), 1024, '.1f')} | "
                  f"{fmt(presence.get('on_median_rss_per_connection_bytes'), 1024, '.1f')} |",
                  ""]
        read = presence.get("big_group_read")
        if read:
            lines.append(f"Presence of one group of {read['members']} members through the API: "
                         f"p50 {read['p50_ms']:.1f} ms, p99 {read['p99_ms']:.1f} ms "
                         f"({read['reads']} reads).")
        pub = presence.get("api_publish")
        if pub:
            lines.append(f"API publish: {pub['requests_per_sec'] or 0:,.0f} requests/s, p50 "
                         f"{pub['p50_ms']} ms, p99 {pub['p99_ms']} ms, from wrk with "
                         f"{pub['connections']} keep-alive connections (errors: {pub['errors']}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
