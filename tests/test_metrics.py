"""Prometheus metrics from real `inferegator serve` processes: what a scrape says equals what
the test sent, summed over two workers; histograms, refusals, circuits, gauges and the
metrics' own address."""

import json
import os
import shutil
import signal
import tempfile

import openai
import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from inferegator.store.store import Store
from tests.gateway_fixtures import MODEL, gateway_yaml, sdk
from tests.support.processes import free_port, wait_until, worker_pids
from tests.support.rawhttp import post_many

MESSAGES = [{"role": "user", "content": "Count this request, please."}]


def parse(text: str) -> list:
    """[(sample name, labels, value)] of a text exposition."""
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples]


def scrape(url: str) -> list:
    resp = requests.get(url, headers={"Connection": "close"}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return parse(resp.text)


def scrape_until(url: str, predicate, timeout: float = 15.0) -> list:
    """Scrape until predicate(samples) holds (gauges are sampled every second); the
    samples."""
    def met():
        samples = scrape(url)
        return samples if predicate(samples) else None

    return wait_until(met, timeout=timeout, interval=0.1)


def value(samples, name: str, **labels) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for n, have, v in samples
               if n == name and all(have.get(k) == w for k, w in labels.items()))


def backend_name(sim) -> str:
    return f"sglang:{sim.url}"


def chat_body(**extra) -> dict:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, **extra}


def ledger_totals(storage: str, expected_rows: int) -> dict:
    """The ledger's sums, once it holds ``expected_rows`` rows."""
    store = Store(storage)
    try:
        def totals():
            row = store.db.query(
                "SELECT COUNT(*) AS n, SUM(prompt_tokens) AS prompt, SUM(completion_tokens) "
                "AS completion, SUM(cached_tokens) AS cached, SUM(cost_usd) AS cost "
                "FROM usage_ledger")[0]
            return row if row["n"] >= expected_rows else None

        return wait_until(totals, timeout=15, interval=0.05)
    finally:
        store.db.close()


def worker_requests(metrics_dir: str, pid: int) -> float:
    """Requests counted by one worker alone: its own file, summed by prometheus_client's
    collector in a folder of its own."""
    source = os.path.join(metrics_dir, f"counter_{pid}.db")
    if not os.path.exists(source):
        return 0.0
    with tempfile.TemporaryDirectory() as alone:
        shutil.copy(source, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, alone)
        return value(parse(generate_latest(registry).decode()), "inferegator_requests_total")


def test_request_counts_tokens_and_cost_summed_over_two_workers(
        start_sim, start_gateway, redis_server, tmp_path):
    sim = start_sim("--instant")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    gateway = start_gateway(gateway_yaml([sim], ratelimit={"store": redis_server.url}),
                            "--workers", "2", env={"TMPDIR": str(scratch)})
    [metrics_dir] = [str(p) for p in scratch.glob("inferegator-metrics-*")]
    workers = worker_pids(gateway.proc.pid)
    assert len(workers) == 2
    headers = {"Authorization": f"Bearer {gateway.key}"}
    usages = []

    def both_workers_served():
        # One connection each, all at once: the workers race to accept them.
        for status, _, body in post_many(gateway.port, "/v1/chat/completions",
                                         [chat_body()] * 8, headers):
            assert status == 200, body
            usages.append(json.loads(body)["usage"])
        return all(worker_requests(metrics_dir, pid) > 0 for pid in workers) or \
            len(usages) >= 400

    wait_until(both_workers_served, timeout=120, interval=0)
    assert all(worker_requests(metrics_dir, pid) > 0 for pid in workers)
    stream = sdk(gateway).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    usages.append([c for c in stream][-1].usage.model_dump())
    sent = len(usages)

    backend = backend_name(sim)
    for _ in range(6):  # whichever worker answers the scrape, the sum is the same
        samples = scrape(gateway.url + "/metrics")
        assert value(samples, "inferegator_requests_total") == sent
        assert value(samples, "inferegator_requests_total", model=MODEL, backend=backend,
                     endpoint="chat", code="200", outcome="completed") == sent
        assert value(samples, "inferegator_request_duration_seconds_count",
                     model=MODEL, backend=backend, endpoint="chat") == sent
        assert value(samples, "inferegator_time_to_first_token_seconds_count") == 1
    assert sum(worker_requests(metrics_dir, pid) for pid in workers) == sent

    prompt = sum(u["prompt_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    assert value(samples, "inferegator_prompt_tokens_total", model=MODEL) == prompt
    assert value(samples, "inferegator_completion_tokens_total", model=MODEL) == completion
    ledger = ledger_totals(gateway.storage, sent)
    assert ledger["n"] == sent
    assert (ledger["prompt"], ledger["completion"]) == (prompt, completion)
    assert value(samples, "inferegator_cached_prompt_tokens_total") == ledger["cached"]
    assert value(samples, "inferegator_cost_usd_total", model=MODEL) == pytest.approx(
        ledger["cost"], rel=1e-9)

    samples = scrape_until(gateway.url + "/metrics", lambda s: value(
        s, "inferegator_ledger_rows_written_total") == sent)
    assert value(samples, "inferegator_workers") == 2
    assert value(samples, "inferegator_ledger_flush_seconds_count") >= 2  # both workers
    assert value(samples, "inferegator_ledger_queue_rows") == 0
    assert value(samples, "inferegator_backend_healthy", model=MODEL, backend=backend) == 2
    assert not any("key_id" in labels for _, labels, _ in samples)  # off by default

    # A worker killed and replaced: its counts stay in the sums, its gauges leave them.
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: len(set(worker_pids(gateway.proc.pid)) - set(workers)) == 1,
               timeout=30, interval=0.05)
    samples = scrape_until(gateway.url + "/metrics",
                           lambda s: value(s, "inferegator_workers") == 2)
    assert value(samples, "inferegator_requests_total") == sent
    assert not os.path.exists(os.path.join(metrics_dir, f"gauge_livesum_{workers[0]}.db"))


def test_latency_buckets_gaps_and_open_streams_follow_a_slow_stream(start_sim, start_gateway):
    sim = start_sim("--decode-ms-per-token", "60")
    gateway = start_gateway(gateway_yaml([sim]))
    url, backend = gateway.url + "/metrics", backend_name(sim)
    labels = {"model": MODEL, "backend": backend, "endpoint": "chat"}
    before = scrape(url)
    assert value(before, "inferegator_request_duration_seconds_count") == 0

    stream = sdk(gateway).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=10, stream=True,
        extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)
    during = scrape_until(url, lambda s: value(s, "inferegator_streams_open") == 1)
    assert value(during, "inferegator_backend_in_flight", model=MODEL, backend=backend) == 1
    rest = list(chunks)
    assert rest

    after = scrape_until(url, lambda s: value(s, "inferegator_streams_open") == 0)
    bucket = "inferegator_request_duration_seconds_bucket"
    # Ten tokens at 60 ms: 0.6 s or more, so the 0.5 s bucket stays and the 2.5 s one moves.
    assert value(after, bucket, le="0.5", **labels) == 0
    assert value(after, bucket, le="2.5", **labels) == 1
    assert value(after, bucket, le="+Inf", **labels) == 1
    assert value(after, "inferegator_request_duration_seconds_sum", **labels) >= 0.5
    assert value(after, "inferegator_time_to_first_token_seconds_count", **labels) == 1
    gaps = "inferegator_inter_token_gap_seconds"
    count = value(after, gaps + "_count", model=MODEL, backend=backend)
    assert count >= 8  # one per chunk after the first: the tokens came one by one
    assert value(after, gaps + "_bucket", le="+Inf") == count
    assert value(after, gaps + "_bucket", le="0.02") <= 2  # the last chunks come together
    assert value(after, gaps + "_bucket", le="0.32") == count
    assert value(after, gaps + "_sum") == pytest.approx(0.06 * 9, rel=0.5)
    assert value(after, "inferegator_backend_in_flight", model=MODEL, backend=backend) == 0


def test_refusals_counted_by_kind_and_unknown_models_mint_no_series(start_sim, start_gateway):
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml(
        [sim], ratelimit={"requests_per_minute": 2, "tokens_per_minute": 1000}))
    client = sdk(gateway)
    with pytest.raises(openai.RateLimitError) as refused:  # can never fit: tokens
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5000)
    assert refused.value.type == "tokens"
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert refused.value.type == "requests"
    for hostile in ("x" * 200, "evil\"}\nmodel{", "other/model"):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=hostile, messages=MESSAGES, max_tokens=4)

    samples = scrape(gateway.url + "/metrics")
    refusals = "inferegator_ratelimit_refusals_total"
    assert value(samples, refusals, model=MODEL, kind="tokens") == 1
    assert value(samples, refusals, model=MODEL, kind="requests") == 1
    assert value(samples, refusals) == 2
    assert value(samples, "inferegator_requests_total", model=MODEL, backend="none",
                 code="429", outcome="rejected") == 2
    assert value(samples, "inferegator_requests_total", model=MODEL, code="200") == 2
    assert value(samples, "inferegator_requests_total", model="unknown", code="404") == 3
    assert {labels["model"] for _, labels, _ in samples if "model" in labels} == {
        MODEL, "unknown"}


def test_an_opening_circuit_shows_with_the_failovers(start_sim, start_gateway):
    failing = start_sim("--instant", "--fault-503-rate", "1.0")
    good = start_sim("--instant")
    gateway = start_gateway(gateway_yaml(
        [failing, good], extra="resilience:\n  breaker_failures: 2\n  breaker_open_s: 600\n"))
    url, client = gateway.url + "/metrics", sdk(gateway)
    bad = {"model": MODEL, "backend": backend_name(failing)}
    sent = 0

    def circuit_open():
        nonlocal sent
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        sent += 1
        samples = scrape(url)
        return samples if value(samples, "inferegator_backend_circuit_state", state="open",
                                **bad) == 1 else None

    samples = wait_until(circuit_open, timeout=30, interval=0)
    assert value(samples, "inferegator_backend_circuit_state", state="closed", **bad) == 0
    assert value(samples, "inferegator_backend_healthy", **bad) == 0
    assert value(samples, "inferegator_backend_healthy", model=MODEL,
                 backend=backend_name(good)) == 1
    failed = value(samples, "inferegator_upstream_attempts_total", result="failed", **bad)
    assert failed == 2  # breaker_failures: then it is open and no longer tried
    assert value(samples, "inferegator_upstream_failovers_total", model=MODEL) == failed
    assert value(samples, "inferegator_upstream_retries_total", model=MODEL) == failed
    assert value(samples, "inferegator_requests_total", backend=backend_name(good),
                 code="200") == sent
    assert value(samples, "inferegator_upstream_attempts_total", result="answered",
                 backend=backend_name(good)) == sent


def test_metrics_bind_serves_them_apart_with_key_labels_when_asked(start_sim, start_gateway):
    sim = start_sim("--instant")
    port = free_port()
    gateway = start_gateway(gateway_yaml(
        [sim], extra=f"metrics:\n  bind: 127.0.0.1:{port}\n  per_key_labels: true\n"))
    sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert requests.get(gateway.url + "/metrics", timeout=5).status_code == 404
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "inferegator_requests_total", key_id=gateway.key_id,
                 code="200") == 1
    assert value(samples, "inferegator_prompt_tokens_total", key_id=gateway.key_id) > 0
    assert value(samples, "inferegator_workers") == 1


def test_metrics_off_serves_nothing(start_sim, start_gateway):
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim], extra="metrics:\n  enabled: false\n"))
    sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert requests.get(gateway.url + "/metrics", timeout=5).status_code == 404


def test_limiter_store_errors_are_counted(start_sim, start_gateway):
    sim = start_sim("--instant")
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    gateway = start_gateway(gateway_yaml(
        [sim], ratelimit={"store": closed, "on_store_error": "open"}))
    client = sdk(gateway)
    for _ in range(3):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    errors = "inferegator_ratelimit_store_errors_total"
    samples = scrape_until(gateway.url + "/metrics", lambda s: value(s, errors) >= 3)
    assert value(samples, errors) == 3  # one failed admission each
    assert value(samples, "inferegator_requests_total", code="200") == 3
