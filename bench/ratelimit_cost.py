#!/usr/bin/env python3
"""What per-key rate limiting costs: per admission in-process, in throughput, and end to end.

One run measures these, in this order, against one private redis-server (Debian's
binary, no persistence, on a free port; tests/support/redis_server.py):

1. **In-process cost, no HTTP.** `RateLimiter.admit` followed by `RateLimiter.finished`
   (which reconciles the token reservation to the real usage), exactly as the
   rate_limits plugin calls them, with `MemoryWindowStore` and with `RedisWindowStore`.
   One key, limits far too high to refuse, a chat body like the end-to-end one
   (max_tokens 16). The real usage given to `finished` (20 + 16 tokens) differs from the
   reservation (estimate 23 + 16), so every admission reconciles: with Redis that is one
   EVALSHA of window.lua waited for and one of reconcile.lua sent without waiting (the
   store's PipelinedRedis client; bench/redis_client_cost.py compares it with redis-py).
   A plain redis-py PING round trip is timed too, as the floor. This process is not
   gevent-patched here.
2. **Throughput of one gevent-patched process on Redis.** A subprocess that runs
   `gevent.monkey.patch_all()` first (as a gateway worker does) runs admit + finished in a
   closed loop for --seconds per phase: 1 greenlet on one key, --greenlets greenlets on
   one key (a hot key), and --greenlets greenlets spread over --keys keys. It reports
   admissions per second, the latency each greenlet saw, and CPU per admission of that
   process and of redis-server. Then, in this process, the time of one refused admission
   on a key whose window is full (requests_per_minute = the admissions already in it,
   --refusal-sizes), with both stores.
3. **End to end.** One simulator (`inferegator sim --instant`) and, in front of it, two
   gateways (one gunicorn gevent worker each) that differ only in `ratelimit.store`:
   `memory` and the Redis URL. Limits are 10^9 requests and 10^12 tokens per minute.
   The load and its measurement are bench/gateway_overhead.py's (imported): raw
   keep-alive sockets from gevent greenlets, JSON and streams at c=1 and c=32, rounds
   interleaved target by target, samples pooled; the added P50/P99 is over the
   simulator called directly in the same run. Rate limiting is always on in the gateway
   (the rate_limits plugin is registered by entry point), so there is no "gateway
   without limits" target: the memory store is the cheapest configuration there is.

Output: markdown tables on stdout, the full record as JSON under bench/out/. Every process
started (redis-server, simulator, gateways, the throughput subprocess) is stopped at the
end, also on error or SIGTERM.

Usage (from the repository root):
  .venv/bin/python bench/ratelimit_cost.py
  .venv/bin/python bench/ratelimit_cost.py --rounds 1 --seconds 2      # quicker
  .venv/bin/python bench/ratelimit_cost.py --skip-e2e
"""

import sys

if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--throughput-worker":
    from gevent import monkey  # before anything imports socket, ssl or redis

    monkey.patch_all()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH_DIR))

from gateway_overhead import machine_ticks, percentile  # noqa: E402  (bench/ on the path)

from inferegator.auth import Principal  # noqa: E402
from inferegator.config.model import RateLimitConfig  # noqa: E402
from inferegator.gateway.request import estimate_prompt_tokens  # noqa: E402
from inferegator.outcome import RequestOutcome, Usage  # noqa: E402
from inferegator.ratelimit.limiter import RateLimiter  # noqa: E402
from inferegator.ratelimit.stores import (  # noqa: E402
    ADMIT,
    MemoryWindowStore,
    RedisWindowStore,
)
from inferegator.store.accounts import KeyRecord  # noqa: E402

OUT_DIR = BENCH_DIR / "out"
RPM = 1_000_000_000
TPM = 1_000_000_000_000
PROMPT = "Summarise in one sentence why a prefix cache helps a chat service."
BODY = {"model": "acme/sim-chat", "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 16}
MODEL = SimpleNamespace(id="acme/sim-chat", default_max_tokens=None)
USAGE = Usage(prompt_tokens=20, completion_tokens=16)


# -- the limiter and its inputs, as the plugin sees them ---------------------------------

def make_limiter(store) -> RateLimiter:
    config = RateLimitConfig(store="bench", requests_per_minute=RPM, tokens_per_minute=TPM)
    return RateLimiter(config, store, spend_of=lambda key_id: 0.0)


def make_principal(key_id: str) -> Principal:
    record = KeyRecord(id=key_id, user_id="bench-user", name="bench", prefix="sk-inf-bench",
                       revoked=False, user_disabled=False, role="user",
                       requests_per_minute=None, tokens_per_minute=None,
                       monthly_budget_usd=None, allowed_models=None)
    return Principal(key_id=key_id, owner="bench-user", attributes={"key": record})


def make_request(i: int):
    return SimpleNamespace(body=BODY, max_tokens=16, n=1, request_id=f"req-{i}", generates=True,
                           endpoint="chat", model_id=MODEL.id, stream=False, principal=None,
                           prompt_estimate=estimate_prompt_tokens("chat", BODY),
                           response_headers={}, plugin_data={})


def make_outcome(request) -> RequestOutcome:
    return RequestOutcome(request, time.time(), usage=USAGE)


def stats_us(samples_s: list) -> dict:
    us = [v * 1e6 for v in samples_s]
    return {"n": len(us), "mean_us": sum(us) / len(us) if us else None,
            "p50_us": percentile(us, 50), "p99_us": percentile(us, 99),
            "max_us": max(us) if us else None}


def busy_share(m0, m1) -> float:
    return (m1[0] - m0[0]) / max(1, m1[1] - m0[1])


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return f.read().strip()


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- 1. in-process cost per admission -----------------------------------------------------

def inprocess(store_name: str, store, n: int, warmup: int, placement: str = "–",
              redis=None) -> list[dict]:
    """admit + finished n times on one key; with redis given, its CPU and EVALSHA time too."""
    limiter = make_limiter(store)
    principal = make_principal(f"bench-inproc-{placement}")
    admit_s, finish_s, both_s = [], [], []
    clock = time.perf_counter
    for i in range(warmup + n):
        if i == warmup:
            m0 = machine_ticks()
            if redis is not None:
                redis.client.config_resetstat()
                redis_cpu0 = proc_cpu_s(redis.proc.pid)
        request = make_request(i)
        outcome = make_outcome(request)
        t0 = clock()
        refusal = limiter.admit(principal, MODEL, request)
        t1 = clock()
        limiter.finished(request, outcome)
        t2 = clock()
        if refusal is not None:
            raise RuntimeError(f"{store_name}: admission refused: {refusal.message}")
        if "rate_limits" not in request.plugin_data:
            raise RuntimeError(f"{store_name}: admitted without a reservation")
        if i >= warmup:
            admit_s.append(t1 - t0)
            finish_s.append(t2 - t1)
            both_s.append(t2 - t0)
    extra = {"machine_busy": busy_share(m0, machine_ticks()), "placement": placement}
    if redis is not None:
        extra["redis_cpu_us_per_admission"] = 1e6 * (proc_cpu_s(redis.proc.pid)
                                                     - redis_cpu0) / n
        stats = redis.client.info("commandstats").get("cmdstat_evalsha", {})
        extra["redis_evalsha_calls"] = stats.get("calls")
        extra["redis_evalsha_usec_per_call"] = stats.get("usec_per_call")
    return [{"store": store_name, "step": step, **stats_us(samples), **extra}
            for step, samples in (("admit", admit_s), ("finished (reconcile)", finish_s),
                                  ("admit + finished", both_s))]


def ping_rtt(client, n: int, placement: str) -> dict:
    samples, m0 = [], machine_ticks()
    for _ in range(n):
        t0 = time.perf_counter()
        client.ping()
        samples.append(time.perf_counter() - t0)
    return {"store": "redis", "step": "PING (round-trip floor)", **stats_us(samples),
            "machine_busy": busy_share(m0, machine_ticks()), "placement": placement}


PLACEMENTS = {"unpinned": None, "same core": (0, 0), "cross core": (0, 1)}


def pin(redis_pid: int, placement: str) -> None:
    """This process and redis-server on given CPUs (sched_setaffinity), or back on all."""
    cpus = PLACEMENTS[placement]
    everywhere = set(range(os.cpu_count()))
    os.sched_setaffinity(0, {cpus[0]} if cpus else everywhere)
    os.sched_setaffinity(redis_pid, {cpus[1]} if cpus else everywhere)


def inprocess_all(redis, args) -> list[dict]:
    rows = inprocess("memory", MemoryWindowStore(), args.n_memory, 1000)
    placements = ["unpinned"] + (["same core", "cross core"] if os.cpu_count() >= 2 else [])
    try:
        for placement in placements:
            pin(redis.proc.pid, placement)
            time.sleep(0.05)
            store = RedisWindowStore(redis.url)
            rows += inprocess("redis", store, args.n_redis, 500, placement, redis)
            rows.append(ping_rtt(redis.client, args.n_redis, placement))
            store.close()
            redis.client.flushall()
    finally:
        pin(redis.proc.pid, "unpinned")
    return rows


# -- 2. throughput of one gevent-patched process (runs in a subprocess) --------------------

def _admit_loop(limiter, principals, first, step, counter, deadline, samples, errors):
    """One greenlet: admit + finished in a closed loop until the deadline; how many it did."""
    i, done = first, 0
    while time.perf_counter() < deadline:
        counter[0] += 1
        request = make_request(counter[0])
        outcome = make_outcome(request)
        principal = principals[i % len(principals)]
        i += step
        t0 = time.perf_counter()
        refusal = limiter.admit(principal, MODEL, request)
        limiter.finished(request, outcome)
        t1 = time.perf_counter()
        if refusal is not None:
            errors.append(refusal.message)
        else:
            samples.append(t1 - t0)
            done += 1
    return done


def _timed_phase(limiter, principals, greenlets, seconds):
    import gevent

    samples, errors, counter = [], [], [0]
    started = time.perf_counter()
    deadline = started + seconds
    jobs = [gevent.spawn(_admit_loop, limiter, principals, g, greenlets, counter, deadline,
                         samples, errors) for g in range(greenlets)]
    gevent.joinall(jobs, raise_error=True)
    return samples, errors, time.perf_counter() - started, sorted(j.value for j in jobs)


def throughput_worker(spec: dict) -> dict:
    import redis

    admin = redis.Redis.from_url(spec["url"])
    store = RedisWindowStore(spec["url"])
    limiter = make_limiter(store)
    results = []
    for phase in spec["phases"]:
        admin.flushall()
        principals = [make_principal(f"bench-{phase['name']}-{k}")
                      for k in range(phase["keys"])]
        greenlets = phase["greenlets"]
        # warm-up: opens the pool's connections, loads the scripts
        _timed_phase(limiter, principals, greenlets, spec["warmup_s"])
        m0, own0, redis0 = machine_ticks(), os.times(), proc_cpu_s(spec["redis_pid"])
        samples, errors, wall, per_greenlet = _timed_phase(limiter, principals, greenlets,
                                                           spec["seconds"])
        own1, redis1, m1 = os.times(), proc_cpu_s(spec["redis_pid"]), machine_ticks()
        done = len(samples)
        results.append({
            "phase": phase["name"], "greenlets": greenlets, "keys": phase["keys"],
            "admissions": done, "refused_or_failed": len(errors),
            "error_samples": errors[:3], "wall_s": wall, "per_s": done / wall,
            "latency": stats_us(samples),
            "per_greenlet": {"min": per_greenlet[0], "median": per_greenlet[len(per_greenlet) // 2],
                             "max": per_greenlet[-1]},
            "client_cpu_us_per_admission": 1e6 * ((own1.user + own1.system)
                                                  - (own0.user + own0.system)) / max(done, 1),
            "redis_cpu_us_per_admission": 1e6 * (redis1 - redis0) / max(done, 1),
            "machine_busy": busy_share(m0, m1),
            # CPU the machine spent beyond this process and redis-server: other processes,
            # interrupts; 0 on an otherwise idle machine
            "other_cores": busy_share(m0, m1) * os.cpu_count()
            - ((own1.user + own1.system) - (own0.user + own0.system) + redis1 - redis0) / wall,
            # the store's connections to redis-server (less this admin one)
            "redis_connections": admin.info("clients")["connected_clients"] - 1,
        })
    admin.flushall()
    return {"results": results}


def throughput(url: str, redis_pid: int, args) -> list[dict]:
    phases = [{"name": "1 greenlet, 1 key", "greenlets": 1, "keys": 1},
              {"name": f"{args.greenlets} greenlets, 1 key (hot)",
               "greenlets": args.greenlets, "keys": 1},
              {"name": f"{args.greenlets} greenlets, {args.keys:,} keys",
               "greenlets": args.greenlets, "keys": args.keys}]
    spec = {"url": url, "redis_pid": redis_pid, "phases": phases,
            "seconds": args.seconds, "warmup_s": 0.5}
    limit = len(phases) * (args.seconds + 0.5) + 60
    # subprocess.run kills the child on any exception here, a timeout included
    proc = subprocess.run([sys.executable, __file__, "--throughput-worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=limit)
    if proc.returncode != 0:
        raise RuntimeError(f"throughput worker failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["results"]


# -- 2b. the cost of a refusal on a key whose window is full -----------------------------

def fill_window(limiter, principal, size: int, admin=None) -> None:
    """size admissions on the key's limits, as RedisWindowStore.admit would send them, but
    in redis-py pipelines on admin (or directly, for the memory store) so that filling is
    quick."""
    store = limiter.store
    request = make_request(0)
    limits, _ = limiter.limits_for(principal, MODEL, request)
    if isinstance(store, MemoryWindowStore):
        for i in range(size):
            store.admit(limits, f"fill-{i}", limiter.window_ms)
        return
    keys, base = [], [limiter.window_ms]
    for limit in limits:
        keys += [limit.key + ":z", limit.key + ":h", limit.key + ":sum"]
    admin.script_load(ADMIT.text)
    for start in range(0, size, 1000):
        pipe = admin.pipeline(transaction=False)
        for i in range(start, min(start + 1000, size)):
            args = base + [f"fill-{i}"]
            for limit in limits:
                args += [limit.maximum, limit.amount]
            pipe.evalsha(ADMIT.sha, len(keys), *keys, *args)
        pipe.execute()


def refusals(store_name: str, store, size: int, budget_s: float = 1.0, admin=None) -> dict:
    """A key with requests_per_minute = size, its window full: time per refused admit."""
    limiter = make_limiter(store)
    principal = make_principal(f"bench-full-{size}")
    record = principal.attributes["key"]
    object.__setattr__(record, "requests_per_minute", size)  # KeyRecord is frozen
    fill_window(limiter, principal, size, admin)
    samples, deadline = [], time.perf_counter() + budget_s
    while len(samples) < 200 and time.perf_counter() < deadline:
        request = make_request(len(samples))
        t0 = time.perf_counter()
        refusal = limiter.admit(principal, MODEL, request)
        samples.append(time.perf_counter() - t0)
        if refusal is None or refusal.status != 429:
            raise RuntimeError(f"{store_name} size {size}: expected a 429, got {refusal}")
    return {"store": store_name, "window_entries": size, **stats_us(samples)}


def refusal_all(redis, sizes) -> list[dict]:
    rows = []
    for size in sizes:
        rows.append(refusals("memory", MemoryWindowStore(), size))
        store = RedisWindowStore(redis.url)
        rows.append(refusals("redis", store, size, admin=redis.client))
        store.close()
        redis.client.flushall()
    return rows


def refusal_table(rows) -> str:
    lines = ["| store | admissions in the full window | n | mean µs | P50 µs | P99 µs |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['store']} | {r['window_entries']:,} | {r['n']:,} "
                     f"| {_f(r['mean_us'])} | {_f(r['p50_us'])} | {_f(r['p99_us'])} |")
    return "\n".join(lines)


# -- 3. end to end, with gateway_overhead.py's machinery ----------------------------------

def ratelimit_yaml(sim_url: str, storage: str, store: str) -> str:
    import gateway_overhead as go

    return go.gateway_yaml(sim_url, storage, ratelimit_store=store)


def end_to_end(redis, config_dir: str, args, servers: list, conns_by_key: dict) -> dict:
    import gateway_overhead as go

    from tests.support.processes import GatewayServer, Simulator

    sim = Simulator("--instant", "--log-level", "warning", model=go.SIM_MODEL)
    servers.append(("simulator", sim))
    targets = ["direct", "gw-memory", "gw-redis"]
    urls = {"direct": (sim.url, go.SIM_MODEL)}
    keys = {"direct": ""}
    meters = {"direct": go.CpuMeter(sim.proc.pid)}
    for target, store in (("gw-memory", "memory"), ("gw-redis", redis.url)):
        storage = f"sqlite:///{config_dir}/{target}.db"
        keys[target] = go.provision_key(storage)
        gw = GatewayServer(config_dir, ratelimit_yaml(sim.url, storage, store),
                           "--workers", "1")
        servers.append((target, gw))
        urls[target] = (gw.url, go.PUBLIC_MODEL)
        meters[target] = go.CpuMeter(gw.proc.pid)
    for t in targets:
        go.KEY = keys[t]
        go.smoke(*urls[t])
    sim_meter = go.CpuMeter(sim.proc.pid)
    redis_meter = go.CpuMeter(redis.proc.pid)
    concurrencies = [1, 32]
    counts = {1: args.n1, 32: args.n32}
    record = {"targets": targets, "settings": {"concurrency": concurrencies, "requests": counts,
                                               "warmup": args.warmup, "rounds": args.rounds,
                                               "client_quickack": args.quickack},
              "passes": [], "logs": {}}
    for rnd in range(args.rounds):
        for c in concurrencies:
            for mode in go.MODES:
                stream = mode == "stream"
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for t in order:
                    url, model = urls[t]
                    host, port = url.split("//")[1].rsplit(":", 1)
                    go.KEY = keys[t]
                    payload = go.build_request(host, int(port), model, stream)
                    if (t, c) not in conns_by_key:
                        conns_by_key[(t, c)] = [go.Connection(host, int(port), args.quickack)
                                                for _ in range(c)]
                    conns = conns_by_key[(t, c)]
                    warm = go.run_pass(conns, payload, stream, max(args.warmup, c))
                    if warm["errors"]:
                        raise RuntimeError(f"{t} c={c} {mode} warm-up errors: "
                                           f"{warm['errors'][:3]}")
                    meter = meters[t]
                    meter.start()
                    sim_meter.start()
                    redis_meter.start()
                    m0, own0 = go.machine_ticks(), os.times()
                    result = go.run_pass(conns, payload, stream, counts[c])
                    own1, m1 = os.times(), go.machine_ticks()
                    cpu, sim_cpu, redis_cpu = meter.stop(), sim_meter.stop(), redis_meter.stop()
                    p = {"round": rnd, "target": t, "concurrency": c, "mode": mode,
                         "requests": counts[c], "ok": len(result["latency_s"]),
                         "errors": len(result["errors"]),
                         "error_samples": result["errors"][:5], "wall_s": result["wall_s"],
                         "rps": len(result["latency_s"]) / result["wall_s"],
                         "server_cpu_s": cpu["cpu_s"], "sim_cpu_s": sim_cpu["cpu_s"],
                         "redis_cpu_s": redis_cpu["cpu_s"],
                         "client_cpu_s": (own1.user + own1.system) - (own0.user + own0.system),
                         "machine_busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
                         "latency_s": result["latency_s"], "ttfb_s": result["ttfb_s"]}
                    own = (cpu["cpu_s"] if t != "direct" else 0) + sim_cpu["cpu_s"] \
                        + redis_cpu["cpu_s"] + p["client_cpu_s"]
                    p["other_cores"] = p["machine_busy"] * os.cpu_count() - own / p["wall_s"]
                    record["passes"].append(p)
                    print(f"# e2e round {rnd} {t:10} c={c:<3} {mode:6} {p['rps']:7.0f} req/s  "
                          f"p50 {percentile(result['latency_s'], 50) * 1000:6.2f} ms  "
                          f"errors {p['errors']}", file=sys.stderr)
    rows = go.summarise_record(record, targets, concurrencies)
    for row in rows:
        passes = [p for p in record["passes"] if p["target"] == row["target"]
                  and p["concurrency"] == row["concurrency"] and p["mode"] == row["mode"]]
        row["redis_cpu_us_per_req"] = 1e6 * sum(p["redis_cpu_s"] for p in passes) / max(
            1, row["ok"])
        row["other_cores"] = sum(p["other_cores"] for p in passes) / len(passes)
    record["summary"] = rows
    for name, server in servers:
        record["logs"][name] = server.output()[-4000:]
    return record


# -- tables -------------------------------------------------------------------------------

def _f(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def inprocess_table(rows) -> str:
    lines = ["| store | client / redis CPUs | step | n | mean µs | P50 µs | P99 µs | max µs "
             "| redis CPU µs/adm | EVALSHA µs in redis | machine busy |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        both = r["step"] == "admit + finished"
        lines.append(f"| {r['store']} | {r['placement']} | {r['step']} | {r['n']:,} "
                     f"| {_f(r['mean_us'])} | {_f(r['p50_us'])} | {_f(r['p99_us'])} "
                     f"| {_f(r['max_us'])} "
                     f"| {_f(r.get('redis_cpu_us_per_admission')) if both else ''} "
                     f"| {_f(r.get('redis_evalsha_usec_per_call')) if both else ''} "
                     f"| {r['machine_busy']:.0%} |")
    return "\n".join(lines)


def throughput_table(rows) -> str:
    lines = ["| phase | admissions/s | P50 µs | P99 µs | client CPU µs/adm | "
             "redis CPU µs/adm | per greenlet min / median / max | connections "
             "| machine busy | other CPU (cores) | refused/failed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lat, g = r["latency"], r["per_greenlet"]
        lines.append(f"| {r['phase']} | {r['per_s']:,.0f} | {_f(lat['p50_us'])} "
                     f"| {_f(lat['p99_us'])} | {_f(r['client_cpu_us_per_admission'])} "
                     f"| {_f(r['redis_cpu_us_per_admission'])} "
                     f"| {g['min']:,} / {g['median']:,} / {g['max']:,} | {r['redis_connections']} "
                     f"| {r['machine_busy']:.0%} | {r['other_cores']:.2f} "
                     f"| {r['refused_or_failed']} |")
    return "\n".join(lines)


def e2e_table(rows) -> str:
    lines = ["| mode | c | target | req/s | P50 ms | P99 ms | added P50 ms | added P99 ms "
             "| gateway CPU µs/req | redis CPU µs/req | machine busy | other CPU (cores) "
             "| errors |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, part, label in (("json", "latency", "JSON"), ("stream", "ttfb", "stream TTFB"),
                              ("stream", "latency", "stream total")):
        for row in rows:
            if row["mode"] != mode:
                continue
            s = row[part]
            direct = row["target"] == "direct"
            lines.append(
                f"| {label} | {row['concurrency']} | {row['target']} | {_f(row['rps'], 0)} "
                f"| {_f(s['p50_ms'], 2)} | {_f(s['p99_ms'], 2)} "
                f"| {'–' if direct else _f(s['added_p50_ms'], 2)} "
                f"| {'–' if direct else _f(s['added_p99_ms'], 2)} "
                f"| {'–' if direct else _f(row['server_cpu_us_per_req'], 0)} "
                f"| {'–' if row['target'] != 'gw-redis' else _f(row['redis_cpu_us_per_req'], 0)} "
                f"| {row['machine_busy']:.0%} | {row['other_cores']:.2f} | {row['errors']} |")
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------

def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # so that every finally: below runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-memory", type=int, default=20000, help="in-process admissions, memory")
    ap.add_argument("--n-redis", type=int, default=5000, help="in-process admissions, redis")
    ap.add_argument("--seconds", type=float, default=5.0, help="per throughput phase")
    ap.add_argument("--greenlets", type=int, default=64)
    ap.add_argument("--keys", type=int, default=10000, help="keys of the many-keys phase")
    ap.add_argument("--refusal-sizes", default="100,10000,50000",
                    help="requests_per_minute of the full keys whose refusals are timed")
    ap.add_argument("-n1", type=int, default=500, help="end to end: requests per pass at c=1")
    ap.add_argument("-n32", type=int, default=2000, help="end to end: requests per pass, c=32")
    ap.add_argument("--warmup", type=int, default=200, help="end to end: warm-up per pass")
    ap.add_argument("--rounds", type=int, default=3, help="end to end: interleaved rounds")
    ap.add_argument("--quickack", action="store_true", help="see gateway_overhead.py")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args()

    import gateway_overhead as go

    from tests.support.redis_server import RedisServer

    signal.signal(signal.SIGTERM, _sigterm)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    record = {"started": started_at.isoformat(timespec="seconds"), "commit": go.git_commit(),
              "command": " ".join([".venv/bin/python", "bench/ratelimit_cost.py",
                                   *sys.argv[1:]]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "loadavg_start": loadavg()},
              "limits": {"requests_per_minute": RPM, "tokens_per_minute": TPM}}
    servers, conns_by_key = [], {}
    config_dir = tempfile.mkdtemp(prefix="inferegator-rlbench-")
    redis = None
    try:
        redis = RedisServer()
        record["redis_version"] = redis.client.info("server")["redis_version"]

        t = time.perf_counter()
        record["inprocess"] = inprocess_all(redis, args)
        print(f"# in-process done in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        t = time.perf_counter()
        redis.client.connection_pool.disconnect()  # the worker counts the store's connections
        record["throughput"] = throughput(redis.url, redis.proc.pid, args)
        redis.client.flushall()
        print(f"# throughput done in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        t = time.perf_counter()
        sizes = [int(v) for v in args.refusal_sizes.split(",") if v]
        record["refusals"] = refusal_all(redis, sizes)
        print(f"# refusals done in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        if not args.skip_e2e:
            t = time.perf_counter()
            record["e2e"] = end_to_end(redis, config_dir, args, servers, conns_by_key)
            print(f"# end to end done in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    finally:
        go.stop_all(servers, conns_by_key)
        if redis is not None:
            try:
                redis.stop()
            except Exception as exc:
                print(f"# stopping redis-server failed: {exc}", file=sys.stderr)
        shutil.rmtree(config_dir, ignore_errors=True)

    print("### Admission cost in-process (no HTTP, not gevent-patched)\n")
    print(inprocess_table(record["inprocess"]))
    print("\n### Admissions per second, one gevent-patched process, Redis\n")
    print(throughput_table(record["throughput"]))
    print("\n### Refused admission on a key whose window is full (requests limit = entries)\n")
    print(refusal_table(record["refusals"]))
    if "e2e" in record:
        print("\n### End to end: added latency over the simulator called directly\n")
        print(e2e_table(record["e2e"]["summary"]))
    record["machine"]["loadavg_end"] = loadavg()
    record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    out = args.out or OUT_DIR / f"ratelimit_cost-{started_at:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"\nfull record: {out}", file=sys.stderr)
    failed = any(r["refused_or_failed"] for r in record["throughput"]) or any(
        p["errors"] for p in record.get("e2e", {}).get("passes", []))
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--throughput-worker":
        print(json.dumps(throughput_worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
