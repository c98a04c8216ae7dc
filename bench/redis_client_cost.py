#!/usr/bin/env python3
"""CPU per rate-limit admission with each Redis client, in a gevent-patched process.

`RedisWindowStore` over `PipelinedRedis` (the default for redis:// and unix://: one
pipelined connection per process) against the same store over redis-py
(`pipelined=False`, what rediss:// uses: a pool of blocking connections). The work is
`RateLimiter.admit` then `RateLimiter.finished` as the rate_limits plugin calls them, the
real usage differing from the reservation so that every admission also reconciles: one
EVALSHA of window.lua waited for, one of reconcile.lua (sent without waiting by the
pipelined client, waited for by redis-py). Limits far too high to refuse, --keys keys.
The same loop over `MemoryWindowStore` is the floor: the limiter's and the loop's own
work, without Redis.

Each pass is a fresh subprocess that runs `gevent.monkey.patch_all()` first, as a gateway
worker does, and runs admit + finished in a closed loop from --greenlets greenlets (and
from 1) for --seconds after a 0.5 s warm-up. Its own CPU (os.times) over the admissions
it made is the figure; redis-server's CPU per admission is beside it. Passes alternate
client by client for --rounds rounds; the table pools the rounds. One private
redis-server (tests/support/redis_server.py), stopped at the end.

Usage (from the repository root):
  .venv/bin/python bench/redis_client_cost.py
  .venv/bin/python bench/redis_client_cost.py --seconds 2 --rounds 1
"""

import sys

if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    from gevent import monkey  # before anything imports socket or redis

    monkey.patch_all()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from gateway_overhead import git_commit, machine_ticks, percentile  # noqa: E402
from ratelimit_cost import _timed_phase, make_limiter, make_principal, proc_cpu_s  # noqa: E402

from inferegator.ratelimit.stores import MemoryWindowStore, RedisWindowStore  # noqa: E402

OUT_DIR = BENCH_DIR / "out"
CLIENTS = {"PipelinedRedis": True, "redis-py": False, "memory (no Redis)": None}


def worker(spec: dict) -> dict:
    """One pass, in the patched subprocess."""
    import redis

    admin = redis.Redis.from_url(spec["url"])
    admin.flushall()
    store = MemoryWindowStore() if spec["pipelined"] is None else RedisWindowStore(
        spec["url"], pipelined=spec["pipelined"])
    limiter = make_limiter(store)
    principals = [make_principal(f"bench-{k}") for k in range(spec["keys"])]
    _timed_phase(limiter, principals, spec["greenlets"], 0.5)  # connections, scripts
    m0, own0, redis0 = machine_ticks(), os.times(), proc_cpu_s(spec["redis_pid"])
    samples, errors, wall, _ = _timed_phase(limiter, principals, spec["greenlets"],
                                            spec["seconds"])
    own1, redis1, m1 = os.times(), proc_cpu_s(spec["redis_pid"]), machine_ticks()
    connections = admin.info("clients")["connected_clients"] - 1  # less this admin one
    if spec["pipelined"] is not None:
        store.close()
    admin.flushall()
    return {"admissions": len(samples), "errors": len(errors), "wall_s": wall,
            "cpu_s": (own1.user + own1.system) - (own0.user + own0.system),
            "redis_cpu_s": redis1 - redis0, "latency_us": [s * 1e6 for s in samples],
            "machine_busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
            "connections": connections}


def run_pass(url, redis_pid, client, greenlets, args) -> dict:
    spec = {"url": url, "redis_pid": redis_pid, "pipelined": CLIENTS[client],
            "greenlets": greenlets, "keys": args.keys, "seconds": args.seconds}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=args.seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"{client} worker failed ({proc.returncode}):\n{proc.stderr}")
    return {"client": client, "greenlets": greenlets,
            **json.loads(proc.stdout.strip().splitlines()[-1])}


def summarise(passes) -> list[dict]:
    rows = []
    for greenlets in sorted({p["greenlets"] for p in passes}, reverse=True):
        for client in CLIENTS:
            mine = [p for p in passes if p["client"] == client and p["greenlets"] == greenlets]
            done = sum(p["admissions"] for p in mine)
            latency = [v for p in mine for v in p["latency_us"]]
            rows.append({
                "client": client, "greenlets": greenlets, "admissions": done,
                "errors": sum(p["errors"] for p in mine),
                "per_s": done / sum(p["wall_s"] for p in mine),
                "cpu_us_per_admission": 1e6 * sum(p["cpu_s"] for p in mine) / max(done, 1),
                "cpu_us_per_round": [round(1e6 * p["cpu_s"] / max(p["admissions"], 1), 1)
                                     for p in mine],
                "redis_cpu_us_per_admission": 1e6 * sum(p["redis_cpu_s"] for p in mine)
                / max(done, 1),
                "p50_us": percentile(latency, 50), "p99_us": percentile(latency, 99),
                "connections": max(p["connections"] for p in mine),
                "machine_busy": sum(p["machine_busy"] for p in mine) / len(mine)})
    return rows


def table(rows) -> str:
    lines = ["| client | greenlets | admissions/s | client CPU µs/adm (per round) "
             "| redis CPU µs/adm | P50 µs | P99 µs | connections | machine busy | errors |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rounds = ", ".join(f"{v:.1f}" for v in r["cpu_us_per_round"])
        lines.append(f"| {r['client']} | {r['greenlets']} | {r['per_s']:,.0f} "
                     f"| **{r['cpu_us_per_admission']:.1f}** ({rounds}) "
                     f"| {r['redis_cpu_us_per_admission']:.1f} | {r['p50_us']:,.0f} "
                     f"| {r['p99_us']:,.0f} | {r['connections']} | {r['machine_busy']:.0%} "
                     f"| {r['errors']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured time per pass")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--greenlets", type=int, default=64)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args()

    from tests.support.redis_server import RedisServer

    started = datetime.datetime.now(datetime.timezone.utc)
    record = {"started": started.isoformat(timespec="seconds"), "commit": git_commit(),
              "command": " ".join([".venv/bin/python", "bench/redis_client_cost.py",
                                   *sys.argv[1:]]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "settings": vars(args) | {"out": str(args.out)}, "passes": []}
    server = RedisServer()
    try:
        record["redis_version"] = server.client.info("server")["redis_version"]
        server.client.connection_pool.disconnect()  # the workers count the store's connections
        for rnd in range(args.rounds):
            for greenlets in (args.greenlets, 1):
                order = list(CLIENTS) if rnd % 2 == 0 else list(reversed(CLIENTS))
                for client in order:
                    p = run_pass(server.url, server.proc.pid, client, greenlets, args)
                    record["passes"].append({"round": rnd, **p})
                    print(f"# round {rnd} {client:14} {greenlets:3} greenlets: "
                          f"{1e6 * p['cpu_s'] / max(p['admissions'], 1):6.1f} µs CPU/adm, "
                          f"{p['admissions'] / p['wall_s']:7.0f}/s", file=sys.stderr)
    finally:
        server.stop()
    record["summary"] = summarise(record["passes"])
    for p in record["passes"]:
        del p["latency_us"]  # summarised; too long to keep
    print(table(record["summary"]))
    out = args.out or OUT_DIR / f"redis_client_cost-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"\nfull record: {out}", file=sys.stderr)
    return 1 if any(r["errors"] for r in record["summary"]) else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
