#!/usr/bin/env python3
"""Per-request CPU cost of authentication (key-store lookup) and metering (usage ledger).

Measures, in-process and without HTTP, the work the gateway adds per request for
accounts: a key lookup that hits the per-worker cache, one that misses it (a
database read: happens once per key per auth.key_cache_ttl_s), recording a ledger row,
and the batched write of ledger rows (per row, amortised over a batch of 200). Recording
is measured with the per-worker journal (one write per row, what every request pays so a
killed worker loses no row) and without it, to give the journal's own cost.

    .venv/bin/python bench/auth_ledger_cost.py [--postgres]

--postgres also measures a private PostgreSQL server (Debian's binaries, as the tests
start it). Results go to stdout as a markdown table and to bench/out/ as JSON.
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inferegator.auth import Principal  # noqa: E402
from inferegator.config.model import Pricing  # noqa: E402
from inferegator.store.store import Store  # noqa: E402
from inferegator.ttl_cache import TTLCache  # noqa: E402


def per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def ledger_row(i: int, key_id: str, user_id: str) -> dict:
    usage = {"prompt_tokens": 120, "completion_tokens": 16, "cached_tokens": 64}
    return {"request_id": f"bench-{i}", "key_id": key_id, "user_id": user_id,
            "model": "acme/sim-chat", "backend": "sglang:http://127.0.0.1:30001",
            **usage, "cost_usd": Pricing(1.0, 2.0, 0.5).cost_usd(120, 16, 64),
            "status": "completed", "http_status": 200, "latency_ms": 1.2, "ttft_ms": None,
            "created": time.time()}


def measure(storage: str) -> dict:
    store = Store(storage)
    user = store.accounts.create_user(f"bench-{time.time_ns()}@example.com", "password 12345")
    secret, record = store.accounts.create_key(user["id"], "bench")
    cache = TTLCache(store.accounts.find_key, ttl_s=2.0)
    cache.get(secret)
    hit = per_call_us(lambda: cache.get(secret), 20000)
    miss = per_call_us(lambda: store.accounts.find_key(secret), 500)
    principal = Principal(key_id=record["id"], owner=user["id"])
    rows = [ledger_row(i, principal.key_id, principal.owner) for i in range(2000)]
    it = iter(rows)
    record_us = per_call_us(lambda: store.ledger.record(next(it)), 2000)
    journal, store.ledger.journal = store.ledger.journal, None
    it = iter([ledger_row(i, principal.key_id, principal.owner) for i in range(2000)])
    unjournaled_us = per_call_us(lambda: store.ledger.record(next(it)), 2000)
    store.ledger.journal = journal
    batches, written, start = 0, 0, time.perf_counter()
    for i in range(10):
        for row in (ledger_row(i * 200 + j, principal.key_id, principal.owner)
                    for j in range(200)):
            store.ledger.record(row)
        written += store.ledger.flush()
        batches += 1
    flush_per_row = (time.perf_counter() - start) / written * 1e6
    store.close()
    return {"storage": storage.split(":")[0], "key_lookup_cache_hit_us": round(hit, 2),
            "key_lookup_db_us": round(miss, 1), "ledger_record_us": round(record_us, 2),
            "of_which_journal_us": round(record_us - unjournaled_us, 2),
            "ledger_write_per_row_us": round(flush_per_row, 1),
            "per_request_us": round(hit + record_us + flush_per_row, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(measure(f"sqlite:///{tmp}/bench.db"))
    if args.postgres:
        from tests.support.postgres import PostgresServer

        pg = PostgresServer()
        try:
            results.append(measure(pg.create_database()))
        finally:
            pg.stop()
    cols = list(results[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "auth_ledger_cost.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
