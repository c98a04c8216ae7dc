#!/usr/bin/env python3
"""What the web console costs the API: one gateway with it, one without, side by side.

Both gateways are built in-process (inferegator.testing.build_test_gateway) in front of one
real instant simulator, and differ only by ``console: {enabled: false}``. Measured, in
interleaved rounds so drift hits both alike:
  - the route lookup of /v1/chat/completions in the Falcon app (the one place the console's
    extra routes could touch the API's path);
  - the gateway process's CPU per /v1/chat/completions request (JSON, max_tokens 16),
    through Falcon's test client: the whole request path but the network.

    .venv/bin/python bench/console_cost.py [--requests 2000] [--rounds 5]
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inferegator.testing import build_test_gateway  # noqa: E402
from tests.support.processes import Simulator  # noqa: E402

BODY = {"model": "acme/sim-chat", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say hello."}]}


def lookup_ns(app, n: int = 200_000) -> float:
    find = app._router.find  # falcon's compiled router: what each request runs first
    start = time.perf_counter_ns()
    for _ in range(n):
        find("/v1/chat/completions")
    return (time.perf_counter_ns() - start) / n


def request_cpu_us(test_gateway, key: str, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        answer = test_gateway.post("/v1/chat/completions", json=BODY, key=key)
        assert answer.status_code == 200, answer.text
    return (time.process_time() - start) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sim = Simulator("--instant", "--log-level", "warning")
    built = {}
    try:
        for name, extra in (("console on", ""), ("console off", "console: {enabled: false}\n")):
            gateway = build_test_gateway(pathlib.Path(tempfile.mkdtemp()), sim.url, extra)
            key, _ = gateway.user(requests_per_minute=10 ** 9, tokens_per_minute=10 ** 12)
            request_cpu_us(gateway, key, 200)  # warm-up: connections, caches
            built[name] = (gateway, key)
        cpu = {name: [] for name in built}
        lookups = {name: [] for name in built}
        for rnd in range(args.rounds):
            order = list(built) if rnd % 2 == 0 else list(reversed(built))
            for name in order:
                gateway, key = built[name]
                lookups[name].append(lookup_ns(gateway.gateway.app))
                cpu[name].append(request_cpu_us(gateway, key, args.requests))
        print("| gateway | route lookup ns (median) | CPU µs per request (median of rounds) "
              "| rounds |")
        print("|---|---:|---:|---|")
        for name in built:
            print(f"| {name} | {statistics.median(lookups[name]):.0f} | "
                  f"{statistics.median(cpu[name]):.0f} | "
                  f"{', '.join(f'{v:.0f}' for v in cpu[name])} |")
    finally:
        for gateway, _ in built.values():
            gateway.close()
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
