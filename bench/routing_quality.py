#!/usr/bin/env python3
"""Routing quality on 4 simulated SGLang runtimes: Inferegator's policies next to sglang-router's.

One run starts 4 simulators (`inferegator sim`, realistic timing: prefill 20,000 tokens/s,
decode 12 ms/token growing with the batch) with a prefix cache smaller than the workload's
working set and a small running cap, so that where a turn lands decides both its cache hit
and its queueing. Then, for each workload (ShareGPT V3 conversations; the synthetic
shared-system-prompt generator, see bench/workloads.py) and for each target in turn:

  ig-round_robin      inferegator serve, routing: round_robin
  ig-least_load       inferegator serve, routing: least_load
  ig-cache_aware      inferegator serve, routing: cache_aware
  ig-cache_aware-x2   two inferegator replicas (same config), requests alternate A, B, A, ...
                      so each conversation's turns are split between them
  ig-prefix_index     inferegator serve, routing: prefix_index (its index in memory)
  ig-prefix_index-x2  two replicas as above, routing: prefix_index, sharing one index in a
                      private Redis (Debian's redis-server, emptied before each pass)
  ig-prefix_index-x4  four such replicas, requests in turn A, B, C, D, A, ...
  sglr-cache_aware    sglang-router (Rust), --policy cache_aware, its default thresholds
  sglr-round_robin    sglang-router, --policy round_robin

the front end is started fresh (no routing state carried over), the 4 simulators are
idle-waited and flushed (POST /flush_cache), their counters read, the workload replayed,
the counters read again, and the front end stopped. An Inferegator policy that no plugin
registers (`inferegator check-config` refuses it) is skipped with a message.

Replay: C worker greenlets, started evenly over the first `--ramp` seconds (default 5; 0
opens the pass with a burst of C first turns, which then dominates P99 and favours whichever
policy happens to spread that burst), take conversations in the workload's order; each
replays its conversation turn by turn: turn t is sent with the system prompt (if any), every
earlier user message and the answers actually received for them, streamed
(`stream_options.include_usage`), with max_tokens M. The answer text is fed back verbatim,
so each prompt extends the previous turn's prompt and answer exactly (the simulator caches
prompt + output, as SGLang does). The simulator's output depends only on the prompt, so
every target sees the same token sequences. By default the next turn follows its answer at
once; then a runtime has just freed a slot when the next turn arrives, so least_load tends to
send it back there (accidental stickiness). `--think-time S` puts seeded exponential pauses
(mean S) between turns, as real users do; raise -c with it to keep the load.

Per target and workload:
  - cache hit rate = Δ sglang:cached_tokens_total / Δ sglang:prompt_tokens_total, summed over
    the 4 simulators (the runtimes' own counters, not the client's view);
  - throughput = turns / wall time and Δ sglang:generation_tokens_total / wall time;
  - TTFT = time from sending a turn to the first `data:` event (the simulator sends the role
    chunk with the first token), P50/P99 over all turns; end-to-end P50/P99 too;
  - load spread = each simulator's share of Δ sglang:num_requests_total, the coefficient
    of variation (population std / mean) of those 4 counts, and their max / min;
  - queueing: turns that waited over 100 ms for a running slot in a simulator (its
    sglang:queue_time_seconds histogram), i.e. the cost of piling turns on one runtime.
The ideal hit rate (one runtime with an unbounded cache, computed from the token counts)
is printed above each table as the ceiling for any routing.

Defaults, all flags: 240 ShareGPT conversations (seed 0; >= 2 human turns, at most 10,
prompts under 8,192 tokens) and 160 synthetic users; 24 conversations at once; max_tokens 64;
per simulator a 32,768-token prefix cache and 8 running requests. A default pass holds about
114,000 (ShareGPT) and 167,000 (synthetic) distinct prompt + answer tokens: a runtime that
sees every conversation (round robin) must evict, one that sees a quarter of them hardly
does. 24 conversations over 4 runtimes is 6 each: an even spread never queues, a hot spot
does.

The client ACKs at once (TCP_QUICKACK, as `gateway_overhead.py --quickack`): with delayed
ACKs every sglang-router stream stalls ~40 ms before its first event (Nagle on the router's
client socket), which would count against the router's TTFT without being routing.
`--no-quickack` turns that off. Client, front ends and simulators share the machine's cores;
the machine's busy share during each pass is recorded.

Output: markdown tables on stdout, the full record (settings, workload facts, per-turn
samples) as JSON under bench/out/ (git-ignored). Every process started is stopped at the
end, also on error.

Usage (from the repository root):
  .venv/bin/python bench/routing_quality.py
  .venv/bin/python bench/routing_quality.py --workloads synthetic --targets ig-cache_aware
  .venv/bin/python bench/routing_quality.py --sharegpt-conversations 60 --synthetic-users 40
  .venv/bin/python bench/routing_quality.py --routing-options 'cache_aware={"balance_epsilon": 1}'
"""

import argparse
import datetime
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
import requests

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH_DIR))

import workloads  # noqa: E402
from gateway_overhead import (  # noqa: E402  (bench/ on the path)
    Connection,
    HTTPError,
    git_commit,
    machine_ticks,
    percentile,
    provision_key,
    router_python,
)

from tests.support.processes import GatewayServer, ServerProcess, Simulator, free_port  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

OUT_DIR = BENCH_DIR / "out"
PUBLIC_MODEL = "acme/sim-chat"
SIM_MODEL = "sim-model"
BIN = Path(sys.executable).parent

# name: (front end, policy, replicas)
TARGETS = {
    "ig-round_robin": ("inferegator", "round_robin", 1),
    "ig-least_load": ("inferegator", "least_load", 1),
    "ig-cache_aware": ("inferegator", "cache_aware", 1),
    "ig-cache_aware-x2": ("inferegator", "cache_aware", 2),
    "ig-prefix_index": ("inferegator", "prefix_index", 1),
    "ig-prefix_index-x2": ("inferegator", "prefix_index", 2),
    "ig-prefix_index-x4": ("inferegator", "prefix_index", 4),
    "sglr-cache_aware": ("sglang-router", "cache_aware", 1),
    "sglr-round_robin": ("sglang-router", "round_robin", 1),
}
COUNTERS = ("prompt_tokens_total", "cached_tokens_total", "generation_tokens_total",
            "num_requests_total", "num_aborted_requests_total",
            "queue_time_seconds_sum", "queue_time_seconds_count",
            'queue_time_seconds_bucket{le="0.1"}', "time_to_first_token_seconds_sum")


# -- simulators -------------------------------------------------------------------------------

def sim_metrics(url: str) -> dict:
    """The simulator's sglang:* counters, gauges, histogram sums and counts, and the
    queue-time histogram's buckets (as 'queue_time_seconds_bucket{le="0.1"}')."""
    out = {}
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if not line.startswith("sglang:"):
            continue
        name = line[7:line.index("{")]
        if name.endswith("_bucket"):
            if name != "queue_time_seconds_bucket":
                continue
            le = line[line.index("le="):line.index("}")]
            name = f"{name}{{{le}}}"
        out[name] = float(line.rsplit(" ", 1)[1])
    return out


def flush_when_idle(urls, timeout=60.0) -> None:
    """Wait until no simulator has a request live, then flush every prefix cache."""
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        url = pending[0]
        r = requests.post(url + "/flush_cache", timeout=5)
        if r.status_code == 200:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} still busy after {timeout}s: {r.status_code} {r.text}")
        time.sleep(0.1)  # poll interval while the last requests drain


# -- front ends -------------------------------------------------------------------------------

def gateway_yaml(sim_urls, storage: str, policy: str, options: dict | None = None,
                 redis_url: str | None = None) -> str:
    store = f", store: '{redis_url}'" if redis_url else ""
    lines = ["server:", "  workers: 1", "  health_check_interval_s: 1.0",
             f"storage: '{storage}'",
             "ratelimit: {requests_per_minute: 1000000000, tokens_per_minute: 1000000000000"
             f"{store}}}",
             "models:", f"  - id: {PUBLIC_MODEL}", "    owned_by: acme",
             "    pricing: {prompt: 1.0, completion: 2.0, cached_prompt: 0.5}",
             "    capabilities: [chat, completions, streaming]",
             f"    routing: {policy}"]
    if options:
        lines.append(f"    routing_options: {json.dumps(options)}")
    lines.append("    backends:")
    lines += [f"      - {{type: sglang, url: '{u}', model: {SIM_MODEL}, role: primary}}"
              for u in sim_urls]
    return "\n".join(lines) + "\n"


def policy_available(config_dir: str, sim_urls, policy: str, options=None) -> str | None:
    """None if `inferegator check-config` accepts the policy, else its complaint."""
    path = os.path.join(config_dir, f"check-{policy}.yaml")
    with open(path, "w") as f:
        f.write(gateway_yaml(sim_urls, f"sqlite:///{config_dir}/check.db", policy, options))
    probe = subprocess.run([str(BIN / "inferegator"), "check-config", "--config", path],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode == 0:
        return None
    return (probe.stderr or probe.stdout).strip().splitlines()[-1]


class FrontEnd:
    """The processes of one target, their base URLs and the model name to ask for."""

    def __init__(self, name, servers, urls, model):
        self.name, self.servers, self.urls, self.model = name, servers, urls, model

    def stop(self):
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                print(f"# stopping {self.name} failed: {exc}", file=sys.stderr)


def start_inferegator(name, sim_urls, policy, replicas, config_dir, storage, options=None,
                      redis_url=None) -> FrontEnd:
    servers = []
    try:
        text = gateway_yaml(sim_urls, storage, policy, options, redis_url)
        for _ in range(replicas):
            servers.append(GatewayServer(config_dir, text, "--workers", "1", "--log-level", "info"))
    except BaseException:
        FrontEnd(name, servers, [], None).stop()
        raise
    return FrontEnd(name, servers, [s.url for s in servers], PUBLIC_MODEL)


def start_router(name, sim_urls, policy, python, extra=()) -> FrontEnd:
    port = free_port()
    argv = [python, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
            "--port", str(port), "--policy", policy, "--log-level", "warn",
            "--prometheus-port", str(free_port()), *extra, "--worker-urls", *sim_urls]
    proc = ServerProcess(argv, f"http://127.0.0.1:{port}/health",
                         env={"HF_HUB_OFFLINE": "1", "NO_PROXY": "*"}, ready_timeout=90)
    return FrontEnd(name, [proc], [f"http://127.0.0.1:{port}"], SIM_MODEL)


# -- the replay -------------------------------------------------------------------------------

def chat_request(host: str, port: int, key: str, model: str, messages, max_tokens) -> bytes:
    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens,
                       "stream": True, "stream_options": {"include_usage": True}},
                      separators=(",", ":")).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def parse_stream(content: bytes) -> tuple[str, dict | None]:
    """The answer text and the usage of an OpenAI SSE stream; raises HTTPError on an error."""
    text, usage, done = [], None, False
    for event in content.split(b"\n\n"):
        event = event.strip()
        if not event.startswith(b"data:"):
            continue
        data = event[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            raise HTTPError(f"error event: {chunk['error']}")
        for choice in chunk.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                text.append(piece)
        if chunk.get("usage"):
            usage = chunk["usage"]
    if not done:
        raise HTTPError(f"stream ended without [DONE]: {content[-200:]!r}")
    return "".join(text), usage


def replay(front: FrontEnd, key: str, conversations, concurrency: int, max_tokens: int,
           quickack: bool, think_s: float = 0.0, seed: int = 0, ramp_s: float = 0.0
           ) -> dict:
    """Replay every conversation turn by turn with `concurrency` workers; per-turn samples.

    With think_s > 0 a user pauses before each next turn for an exponentially distributed
    time of that mean, drawn from a generator seeded by (seed, conversation): the same
    pauses for every target. Worker w starts w * ramp_s / concurrency seconds late, so the
    pass does not open with every worker's first turn at the same instant.
    """
    addrs = []
    for url in front.urls:
        host, port = url.split("//")[1].rsplit(":", 1)
        addrs.append((host, int(port)))
    todo = iter(enumerate(conversations))
    spread = itertools.count()  # requests alternate over the front end's replicas
    samples, errors = [], []

    def worker(w):
        conns = [Connection(h, p, quickack) for h, p in addrs]
        try:
            gevent.sleep(w * ramp_s / concurrency)
            for ci, conv in todo:
                messages = [{"role": "system", "content": conv.system}] if conv.system else []
                pauses = random.Random(seed * 1_000_003 + ci)
                for turn, user_text in enumerate(conv.user_turns):
                    if think_s > 0 and turn:
                        gevent.sleep(pauses.expovariate(1.0 / think_s))
                    messages.append({"role": "user", "content": user_text})
                    replica = next(spread) % len(addrs)
                    host, port = addrs[replica]
                    payload = chat_request(host, port, key, front.model, messages, max_tokens)
                    t0 = time.perf_counter()
                    try:
                        status, t_first, t_end, content = conns[replica].request(payload, True)
                        if status != 200:
                            raise HTTPError(f"HTTP {status}: {content[:300]!r}")
                        answer, usage = parse_stream(content)
                    except (OSError, HTTPError, ValueError) as exc:
                        errors.append({"conversation": ci, "turn": turn,
                                       "error": f"{type(exc).__name__}: {exc}"[:500]})
                        conns[replica].close()
                        break  # the history cannot go on without this answer
                    details = (usage or {}).get("prompt_tokens_details") or {}
                    samples.append({
                        "conversation": ci, "turn": turn, "replica": replica,
                        "start": t0, "ttft": (t_first or t_end) - t0, "e2e": t_end - t0,
                        "prompt_tokens": (usage or {}).get("prompt_tokens"),
                        "cached_tokens": details.get("cached_tokens"),
                        "completion_tokens": (usage or {}).get("completion_tokens")})
                    messages.append({"role": "assistant", "content": answer})
        finally:
            for conn in conns:
                conn.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker, w) for w in range(concurrency)], raise_error=True)
    wall = time.perf_counter() - started
    for s in samples:
        s["start"] = round(s["start"] - started, 4)
    return {"wall_s": wall, "samples": samples, "errors": errors}


def run_target(front: FrontEnd, key, sims, conversations, args) -> dict:
    urls = [s.url for s in sims]
    flush_when_idle(urls)
    before = [sim_metrics(u) for u in urls]
    m0 = machine_ticks()
    result = replay(front, key, conversations, args.concurrency, args.max_tokens,
                    not args.no_quickack, args.think_time, args.seed, args.ramp)
    m1 = machine_ticks()
    gevent.sleep(0.2)  # the last requests' counters are written after their final byte
    after = [sim_metrics(u) for u in urls]
    delta = [{c: a.get(c, 0) - b.get(c, 0) for c in COUNTERS} for a, b in zip(after, before)]
    result["per_sim"] = delta
    result["machine_busy"] = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
    return result


# -- statistics -------------------------------------------------------------------------------

def summarise(result: dict, turns_expected: int) -> dict:
    per_sim = result["per_sim"]
    prompt = sum(d["prompt_tokens_total"] for d in per_sim)
    cached = sum(d["cached_tokens_total"] for d in per_sim)
    reqs = [d["num_requests_total"] for d in per_sim]
    total_reqs = sum(reqs)
    mean = total_reqs / len(reqs) if reqs else 0
    cv = statistics.pstdev(reqs) / mean if mean else None
    samples = result["samples"]
    ttft = [s["ttft"] * 1000 for s in samples]
    e2e = [s["e2e"] * 1000 for s in samples]
    wall = result["wall_s"]
    client_cached = [s["cached_tokens"] for s in samples if s["cached_tokens"] is not None]
    return {
        "turns_ok": len(samples), "turns_expected": turns_expected,
        "errors": len(result["errors"]), "wall_s": wall,
        "cache_hit_rate": cached / prompt if prompt else None,
        "prompt_tokens": prompt, "cached_tokens": cached,
        "per_sim_hit_rate": [d["cached_tokens_total"] / d["prompt_tokens_total"]
                             if d["prompt_tokens_total"] else None for d in per_sim],
        "client_reported_cached_tokens": sum(client_cached) if client_cached else None,
        "requests_per_s": len(samples) / wall,
        "output_tokens_per_s": sum(d["generation_tokens_total"] for d in per_sim) / wall,
        "ttft_p50_ms": percentile(ttft, 50), "ttft_p90_ms": percentile(ttft, 90),
        "ttft_p99_ms": percentile(ttft, 99), "ttft_mean_ms": statistics.fmean(ttft)
        if ttft else None,
        "e2e_p50_ms": percentile(e2e, 50), "e2e_p99_ms": percentile(e2e, 99),
        "sim_requests": reqs,
        "sim_queue_mean_ms": 1000 * sum(d["queue_time_seconds_sum"] for d in per_sim)
        / max(1, sum(d["queue_time_seconds_count"] for d in per_sim)),
        "sim_queued_over_100ms": sum(d["queue_time_seconds_count"]
                                     - d['queue_time_seconds_bucket{le="0.1"}']
                                     for d in per_sim),
        "load_share": [r / total_reqs if total_reqs else None for r in reqs],
        "load_cv": cv,
        "load_max_over_min": max(reqs) / min(reqs) if reqs and min(reqs) else None,
        "machine_busy": result["machine_busy"],
    }


def ideal_hit_rate(samples, conversations, page_size: int) -> float | None:
    """The hit rate of one runtime with an unbounded cache, from one pass's token counts.

    Turn t > 0 can reuse at most the whole blocks of turn t-1's prompt + answer (what the
    runtime cached); turn 0 the whole blocks of its system prompt (rendered as
    ``<|system|>...<|eot|>``) if an earlier conversation used it. An upper bound for any
    routing, for reading the measured rates against.
    """
    by_turn = {(s["conversation"], s["turn"]): s for s in samples}
    seen, cached, prompt = set(), 0, 0
    for s in sorted(samples, key=lambda s: s["start"]):
        if s["prompt_tokens"] is None:
            return None
        prompt += s["prompt_tokens"]
        conv = conversations[s["conversation"]]
        if s["turn"] == 0:
            if conv.system and conv.system in seen:
                cached += (workloads.count_tokens(conv.system) + 2) // page_size * page_size
            seen.add(conv.system)
            continue
        prev = by_turn.get((s["conversation"], s["turn"] - 1))
        if prev and prev["completion_tokens"] is not None:
            reusable = (prev["prompt_tokens"] + prev["completion_tokens"]) // page_size
            cached += min(s["prompt_tokens"], reusable * page_size)
    return cached / prompt if prompt else None


def _f(v, digits=0, pct=False):
    if v is None:
        return "–"
    return f"{v * 100:.{digits}f}" if pct else f"{v:,.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| target | replicas | turns ok / sent | errors | cache hit % | req/s | out tok/s "
             "| TTFT P50 ms | TTFT P99 ms | E2E P50 ms | E2E P99 ms | requests per sim % "
             "| load CV | max / min | queued > 100 ms | machine busy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        s = r["summary"]
        if s is None:
            lines.append(f"| {r['target']} | – | skipped: {r['skipped']} |" + " |" * 13)
            continue
        share = " / ".join(_f(x, 0, pct=True) for x in s["load_share"])
        lines.append(
            f"| {r['target']} | {r['replicas']} | {s['turns_ok']} / {s['turns_expected']} "
            f"| {s['errors']} | {_f(s['cache_hit_rate'], 1, pct=True)} "
            f"| {_f(s['requests_per_s'], 1)} | {_f(s['output_tokens_per_s'], 0)} "
            f"| {_f(s['ttft_p50_ms'])} | {_f(s['ttft_p99_ms'])} | {_f(s['e2e_p50_ms'])} "
            f"| {_f(s['e2e_p99_ms'])} | {share} | {_f(s['load_cv'], 2)} "
            f"| {_f(s['load_max_over_min'], 2)} "
            f"| {_f(s['sim_queued_over_100ms'])} | {_f(s['machine_busy'], 0, pct=True)} % |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> list[str]:
    """The issue's targets, checked on one workload's rows: each Inferegator cache-aware
    policy against sglang-router's, its replicas against one, and its spread."""
    by = {r["target"]: r["summary"] for r in rows if r["summary"]}
    theirs = by.get("sglr-cache_aware")
    out = []
    for policy in ("prefix_index", "cache_aware"):
        ours = by.get(f"ig-{policy}")
        if not ours:
            continue
        if theirs:
            hit_ok = ours["cache_hit_rate"] >= theirs["cache_hit_rate"]
            p99_ok = ours["ttft_p99_ms"] <= theirs["ttft_p99_ms"]
            out.append(f"ig-{policy}: cache hit {ours['cache_hit_rate']:.1%} vs sglang-router "
                       f"{theirs['cache_hit_rate']:.1%}: {'met' if hit_ok else 'MISSED'}; "
                       f"TTFT P99 {ours['ttft_p99_ms']:.0f} ms vs "
                       f"{theirs['ttft_p99_ms']:.0f} ms: {'met' if p99_ok else 'MISSED'}")
        for replicas in (2, 4):
            more = by.get(f"ig-{policy}-x{replicas}")
            if more:
                drop = (ours["cache_hit_rate"] - more["cache_hit_rate"]) * 100
                out.append(f"ig-{policy} x{replicas}: hit {more['cache_hit_rate']:.1%} vs one "
                           f"{ours['cache_hit_rate']:.1%}, drop {drop:.1f} points (<= 1): "
                           f"{'met' if drop <= 1 else 'MISSED'}")
        for name in (f"ig-{policy}", f"ig-{policy}-x2", f"ig-{policy}-x4"):
            spread = (by.get(name) or {}).get("load_max_over_min")
            if spread is not None:
                out.append(f"{name}: requests per runtime max / min {spread:.2f} (<= 1.25): "
                           f"{'met' if spread <= 1.25 else 'MISSED'}")
    return out


# -- the run ----------------------------------------------------------------------------------

def code_hashes() -> dict:
    """sha256 (12 hex digits) of the routing code measured, for runs on an edited tree."""
    import hashlib

    files = sorted([*ROOT.glob("plugins/routing_*.py"), *ROOT.glob("inferegator/routing*.py"),
                    ROOT / "inferegator/backends/base.py"])
    return {str(f.relative_to(ROOT)): hashlib.sha256(f.read_bytes()).hexdigest()[:12]
            for f in files if f.exists()}


def build_workloads(args) -> dict:
    out = {}
    for name in args.workloads.split(","):
        if name == "sharegpt":
            convs, facts = workloads.sharegpt(
                args.sharegpt_conversations, args.seed, max_turns=args.sharegpt_max_turns,
                max_prompt_tokens=args.max_prompt_tokens, answer_tokens=args.max_tokens)
        elif name == "synthetic":
            convs, facts = workloads.synthetic(
                args.synthetic_users, args.seed, system_prompts=args.system_prompts,
                zipf_s=args.zipf_s)
        else:
            raise SystemExit(f"unknown workload {name!r}: sharegpt, synthetic")
        out[name] = (convs, facts)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--workloads", default="sharegpt,synthetic")
    ap.add_argument("--sharegpt-conversations", type=int, default=240)
    ap.add_argument("--sharegpt-max-turns", type=int, default=10)
    ap.add_argument("--max-prompt-tokens", type=int, default=8192,
                    help="ShareGPT conversations stop before a turn whose prompt passes this")
    ap.add_argument("--synthetic-users", type=int, default=160)
    ap.add_argument("--system-prompts", type=int, default=8)
    ap.add_argument("--zipf-s", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-c", "--concurrency", type=int, default=24,
                    help="conversations replayed at once (default 24)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every turn")
    ap.add_argument("--ramp", type=float, default=5.0,
                    help="seconds over which the workers start, evenly spaced (default 5; "
                         "0: all at once, a burst of first turns)")
    ap.add_argument("--think-time", type=float, default=0.0,
                    help="mean pause (s, exponential, seeded) before each next turn; 0 (the "
                         "default): the next turn follows the answer at once")
    ap.add_argument("--sims", type=int, default=4)
    ap.add_argument("--cache-capacity-tokens", type=int, default=32768,
                    help="prefix cache per simulator (default 32768)")
    ap.add_argument("--max-running-requests", type=int, default=8,
                    help="running cap per simulator; the rest queue (default 8)")
    ap.add_argument("--sim-args", default="", help="more flags for every simulator")
    ap.add_argument("--no-quickack", action="store_true",
                    help="let the client delay its ACKs like an ordinary HTTP client; then "
                         "sglang-router's streams stall ~40 ms at the first event (Nagle on "
                         "its client socket, see bench/RESULTS.md), which is not routing")
    ap.add_argument("--routing-options", action="append", default=[],
                    metavar="POLICY=JSON", help="routing_options for an Inferegator policy, "
                    "e.g. cache_aware='{\"balance_epsilon\": 0.5}' (repeatable; default: "
                    "none, the policies' own defaults)")
    ap.add_argument("--router-python", default=None)
    ap.add_argument("--router-args", default="",
                    help="more flags for sglang-router (default: none, its own defaults), "
                         "e.g. '--balance-abs-threshold 4'")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; known: {', '.join(TARGETS)}")

    routing_options = {}
    for item in args.routing_options:
        policy, _, text = item.partition("=")
        try:
            routing_options[policy] = json.loads(text)
        except ValueError as exc:
            ap.error(f"--routing-options {item!r}: {exc}")

    started_at = datetime.datetime.now(datetime.timezone.utc)
    loads = build_workloads(args)
    sim_flags = ["--log-level", "warning",
                 "--cache-capacity-tokens", args.cache_capacity_tokens,
                 "--max-running-requests", args.max_running_requests, *args.sim_args.split()]
    record = {"started": started_at.isoformat(timespec="seconds"), "commit": git_commit(),
              "command": " ".join([".venv/bin/python", "bench/routing_quality.py",
                                   *sys.argv[1:]]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "sim_flags": [str(f) for f in sim_flags],
              "routing_code_sha256": code_hashes(),
              "workloads": {name: facts for name, (_, facts) in loads.items()},
              "runs": []}
    sims, front, redis = [], None, None
    config_dir = tempfile.mkdtemp(prefix="inferegator-routing-")
    try:
        for _ in range(args.sims):
            sims.append(Simulator(*sim_flags, model=SIM_MODEL))
        sim_urls = [s.url for s in sims]
        record["sim_settings"] = requests.get(sim_urls[0] + "/server_info", timeout=5).json()
        storage = f"sqlite:///{config_dir}/bench.db"
        key = provision_key(storage)
        skipped = {}
        for t in targets:
            kind, policy, _ = TARGETS[t]
            if kind == "inferegator":
                problem = policy_available(config_dir, sim_urls, policy,
                                           routing_options.get(policy))
                if problem:
                    skipped[t] = f"policy {policy!r} not available: {problem}"
                    print(f"# SKIPPING {t}: {skipped[t]}", file=sys.stderr)
        python = router_python(args.router_python) \
            if any(TARGETS[t][0] == "sglang-router" for t in targets) else None
        for wname, (convs, _facts) in loads.items():
            turns = sum(c.turns for c in convs)
            print(f"# workload {wname}: {len(convs)} conversations, {turns} turns",
                  file=sys.stderr)
            for t in targets:
                kind, policy, replicas = TARGETS[t]
                row = {"workload": wname, "target": t, "front_end": kind, "policy": policy,
                       "replicas": replicas, "summary": None, "skipped": skipped.get(t)}
                record["runs"].append(row)
                if t in skipped:
                    continue
                if kind == "inferegator":
                    redis_url = None
                    if policy == "prefix_index" and replicas > 1:
                        if redis is None:
                            redis = RedisServer()
                        redis.client.flushall()
                        redis_url = redis.url
                    front = start_inferegator(t, sim_urls, policy, replicas, config_dir,
                                              storage, routing_options.get(policy), redis_url)
                else:
                    front = start_router(t, sim_urls, policy, python, args.router_args.split())
                try:
                    result = run_target(front, key, sims, convs, args)
                finally:
                    row["front_end_log_tail"] = [s.output()[-3000:] for s in front.servers]
                    # the prefix_index policy's copies of hot system prompts, one line each
                    row["prefix_copies"] = [line for s in front.servers
                                            for line in s.output().splitlines()
                                            if "copied a shared prefix" in line]
                    # None while running; a number means the front end died during the pass
                    row["front_end_exit_codes"] = [s.proc.poll() for s in front.servers]
                    if any(c is not None for c in row["front_end_exit_codes"]):
                        print(f"# {t}: a front-end process exited during the pass: "
                              f"{row['front_end_exit_codes']}", file=sys.stderr)
                    front.stop()
                    front = None
                row["summary"] = summarise(result, turns)
                row["summary"]["ideal_hit_rate"] = ideal_hit_rate(
                    result["samples"], convs, record["sim_settings"].get("page_size", 16))
                row["per_sim"] = result["per_sim"]
                row["error_samples"] = result["errors"][:10]
                row["samples"] = result["samples"]
                s = row["summary"]
                print(f"# {wname:9} {t:18} hit {s['cache_hit_rate']:.1%}  "
                      f"{s['requests_per_s']:.1f} req/s  TTFT p50 {s['ttft_p50_ms']:.0f} "
                      f"p99 {s['ttft_p99_ms']:.0f} ms  CV {s['load_cv']:.2f}  "
                      f"errors {s['errors']}  wall {s['wall_s']:.0f}s  copies "
                      f"{len(row['prefix_copies'])}", file=sys.stderr)
    finally:
        if front is not None:
            front.stop()
        for sim in reversed(sims):
            try:
                sim.stop()
            except Exception as exc:
                print(f"# stopping a simulator failed: {exc}", file=sys.stderr)
        if redis is not None:
            redis.stop()
        shutil.rmtree(config_dir, ignore_errors=True)

    record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    for wname in loads:
        rows = [r for r in record["runs"] if r["workload"] == wname]
        facts = record["workloads"][wname]["sample"]
        ideal = next((r["summary"]["ideal_hit_rate"] for r in rows
                      if r["summary"] and not r["summary"]["errors"]), None)
        print(f"\n### {wname}: {facts['conversations']} conversations, "
              f"{facts['turns_total']} turns; ideal hit rate (one runtime, unbounded "
              f"cache) {_f(ideal, 1, pct=True)} %\n")
        print(markdown_table(rows))
        lines = verdict(rows)
        record.setdefault("verdict", {})[wname] = lines
        for line in lines:
            print(f"- {line}")
    out = args.out or OUT_DIR / f"routing_quality-{started_at:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"\nfull record: {out}", file=sys.stderr)
    return 1 if any(r["summary"] and r["summary"]["errors"] for r in record["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
