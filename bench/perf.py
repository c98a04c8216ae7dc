#!/usr/bin/env python3
"""Issue 14 ("Performance"): every figure the issue sets a target for, in one command.

One run starts, in one process tree:
  - the backends: `inferegator sim --instant` for JSON, and a stream backend (default the
    paced SSE backend of bench/paced_backend.py; `--stream-backend sim` uses the simulator
    with a fixed decode pace instead);
  - a private redis-server and a private PostgreSQL (started as tests/support does;
    SQLite stands in for PostgreSQL only when its binaries are absent, and the output says
    so);
  - the targets, each in front of the same backends: `direct` (the backend itself),
    `inferegator` (API keys, the Redis rate limiter and the usage ledger in PostgreSQL, as
    production runs), `inferegator-memory` (the in-process limiter and a SQLite ledger),
    `sglang-router` (`python -m sglang_router.launch_router`, one per backend); one gunicorn
    worker each, and for the workers section an `inferegator` with `--workers 2`.

Sections (each can be picked with --sections):
  relay    SSERelay fed a real SGLang chat stream in-process (no HTTP): CPU µs per chunk.
  json     chat completions as JSON at 1, 32 and 256 connections, rounds interleaved across
           targets: added P50/P99 latency over direct, requests/s, proxy CPU µs per request.
  memory   RSS and open fds of the inferegator worker before and after 100,000 JSON
           requests (after the json section and a warm-up).
  flame    a py-spy flame graph of the inferegator worker under JSON load at c=32.
  workers  JSON requests/s at c=256, 2 workers against 1 (Redis limiter, interleaved).
  streams  500 and 2,000 concurrent streams of 200 tokens, all opened at once, each on its
           own connection: added TTFT P50/P99 and added P99 gap between chunks over direct,
           errors, proxy CPU µs per chunk.

The load generators are this process (gevent greenlets over raw sockets, a minimal HTTP
parser). It does nothing else while a pass runs, so it is a separate process from every
server already; its own CPU per pass is recorded. Output: markdown on stdout, the full
record as JSON under bench/out/, and (full runs) the markdown between the markers
`<!-- perf:begin -->` and `<!-- perf:end -->` in bench/RESULTS.md and the flame graph as
bench/perf-flame.svg. Every process started is stopped at the end, also on error, Ctrl-C
or SIGTERM.

Usage (from the repository root):
  .venv/bin/python bench/perf.py             # full run, about 7 minutes on 2 cores
  .venv/bin/python bench/perf.py --quick     # every section, small sizes, about 1.5 minutes
  .venv/bin/python bench/perf.py --sections json,streams --streams 500
"""

import argparse
import array
import datetime
import glob
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib import metadata
from pathlib import Path

import gevent
import gevent.event
import gevent.pool
import gevent.socket as gsocket
import requests

BENCH_DIR = Path(__file__).resolve().parent
EXAMPLE_PLUGINS = ("jwt_auth", "tenant_routing")  # examples/, not the product
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from gateway_overhead import (  # noqa: E402  (bench/ is on the path: this script's folder)
    Connection,
    CpuMeter,
    HTTPError,
    check_content,
    git_commit,
    machine_ticks,
    percentile,
    router_python,
    start_router,
)

from tests.support.processes import (  # noqa: E402  (needs the repository root on the path)
    GatewayServer,
    ServerProcess,
    Simulator,
    free_port,
    worker_pids,
)

OUT_DIR = BENCH_DIR / "out"
RESULTS = BENCH_DIR / "RESULTS.md"
FLAME = BENCH_DIR / "perf-flame.svg"
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
SIM_MODEL = "sim-model"
JSON_MODEL = "acme/sim-chat"  # public id served by the simulator (JSON)
STREAM_MODEL = "acme/stream-chat"  # public id served by the stream backend
PROMPT = "Summarise in one sentence why a prefix cache helps a chat service."
TARGETS = ("direct", "inferegator", "inferegator-memory", "sglang-router")
SECTIONS = ("relay", "json", "memory", "flame", "workers", "streams")

FULL = {"json_requests": {1: 600, 32: 3000, 256: 5000}, "json_warmup": 300, "rounds": 3,
        "streams": (500, 2000), "stream_tokens": 200, "memory_requests": 100_000,
        "memory_warmup": 5000, "flame_s": 12, "workers_requests": 6000, "workers_rounds": 3,
        "relay_streams": 2000}
QUICK = {"json_requests": {1: 200, 32: 800, 256: 1500}, "json_warmup": 100, "rounds": 1,
         "streams": (100, 300), "stream_tokens": 40, "memory_requests": 10_000,
         "memory_warmup": 1000, "flame_s": 4, "workers_requests": 1500, "workers_rounds": 1,
         "relay_streams": 300}


# -- helpers ----------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> tuple[int, int]:
    """The soft limit on open files raised to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//")[1].rsplit(":", 1)
    return host, int(port)


def build_request(url: str, model: str, key: str, stream: bool, max_tokens: int) -> bytes:
    """One chat completion request; a stream asks for the usage chunk (every target then
    sends one)."""
    host, port = host_port(url)
    payload = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
               "max_tokens": max_tokens, "stream": stream}
    if stream:
        payload["stream_options"] = {"include_usage": True}
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {key or 'none'}\r\nContent-Type: application/json\r\n"
            f"Accept: */*\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def command_version(argv) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "not found"


def postgres_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


def _tcp_table() -> dict:
    """socket inode -> (local port, remote port), from /proc/net/tcp and tcp6."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    table[cols[9]] = (int(cols[1].rsplit(":", 1)[1], 16),
                                      int(cols[2].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return table


def proc_status(pid: int, ports: dict | None = None) -> dict:
    """RSS (KiB) and open file descriptors of a process; with ports ({name: port}), its
    TCP sockets counted by the port they are bound to or connected to."""
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = os.listdir(f"/proc/{pid}/fd")
    out = {"rss_kib": rss, "fds": len(fds)}
    if ports:
        tcp, kinds = _tcp_table(), {}
        by_port = {port: name for name, port in ports.items()}
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                local, remote = tcp.get(target[8:-1], (None, None))
                kind = by_port.get(local) or by_port.get(remote) or (
                    "other socket" if local is None else "other tcp")
            else:
                kind = "file or pipe"
            kinds[kind] = kinds.get(kind, 0) + 1
        out["fd_kinds"] = dict(sorted(kinds.items()))
    return out


def ms_stats(samples) -> dict:
    ms = [v * 1000 for v in samples]
    return {"n": len(ms), **{f"p{q}_ms": percentile(ms, q) for q in (50, 90, 99, 99.9)},
            "max_ms": max(ms) if ms else None}


class Meters:
    """CPU of several process trees (and this process, and the machine) over one pass."""

    def __init__(self, roots: dict):
        self.meters = {name: CpuMeter(pid) for name, pid in roots.items() if pid}

    def start(self):
        for m in self.meters.values():
            m.start()
        self.m0 = machine_ticks()
        self.own0 = os.times()
        return self

    def stop(self) -> dict:
        own1 = os.times()
        m1 = machine_ticks()
        out = {f"{name}_cpu_s": m.stop()["cpu_s"] for name, m in self.meters.items()}
        out["client_cpu_s"] = (own1.user + own1.system) - (self.own0.user + self.own0.system)
        out["machine_busy"] = (m1[0] - self.m0[0]) / max(1, m1[1] - self.m0[1])
        return out


# -- the JSON load generator ------------------------------------------------------------------

def drive(conns, payload: bytes, n: int | None = None, until: float | None = None) -> dict:
    """Closed-loop JSON requests over the connections: n of them, or until a deadline."""
    state = {"left": n if n is not None else 1 << 62}
    latencies, errors = [], []

    def worker(conn):
        while state["left"] > 0 and (until is None or time.perf_counter() < until):
            state["left"] -= 1
            t0 = time.perf_counter()
            try:
                status, _, t_end, content = conn.request(payload, False)
            except (OSError, HTTPError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                continue
            problem = check_content(status, content, False)
            if problem:
                errors.append(problem)
                continue
            latencies.append(t_end - t0)

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker, c) for c in conns], raise_error=True)
    return {"wall_s": time.perf_counter() - started, "latency_s": latencies, "errors": errors}


# -- the stream load generator ----------------------------------------------------------------

_DATA, _DONE, _END = b"data:", b"[DONE]", b"\r\n0\r\n\r\n"


def _read_stream(sock, payload: bytes, go, out: dict, gaps) -> None:
    """Send one streamed request when `go` is set and read its answer to the end, noting
    the time to the first event, the events and the gap before each event."""
    go.wait()
    recv, perf = sock.recv, time.perf_counter
    t0 = perf()
    sock.sendall(payload)
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        data = recv(65536)
        if not data:
            raise HTTPError("closed before the headers")
        buf += data
    now = perf()
    status = int(buf[9:12])
    head = buf[:end].lower()
    body = buf[end + 4:]
    out["status"] = status
    if status != 200 or b"transfer-encoding: chunked" not in head:
        at = head.find(b"content-length:")
        length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else None
        while length is None or len(body) < length:
            data = recv(65536)
            if not data:
                break
            body += data
        out["body"] = body[:300]
        return
    events = body.count(_DATA)
    last = None
    if events:
        out["ttft_s"] = now - t0
        last = now
        gaps.extend([0.0] * (events - 1))
    done = _DONE in body
    carry = body[-8:]
    finished = (b"\r\n" + body).endswith(_END)
    while not finished:
        data = recv(65536)
        if not data:
            break
        now = perf()
        joined = carry + data
        k = joined.count(_DATA) - carry.count(_DATA)
        if k:
            if last is None:
                out["ttft_s"] = now - t0
                gaps.extend([0.0] * (k - 1))
            else:
                gaps.append(now - last)
                if k > 1:
                    gaps.extend([0.0] * (k - 1))
            last = now
            events += k
        if not done and _DONE in joined:
            done = True
        finished = joined.endswith(_END)
        carry = joined[-8:]
    out["events"] = events
    out["done"] = done
    out["end_s"] = perf() - t0


def stream_pass(url: str, payload: bytes, n: int, expected_events: int, timeout: float,
                meters: Meters) -> dict:
    """n streams, each on its own connection: connect them all (at most 200 connects at a
    time), then send every request at once, and read every answer to its end."""
    host, port = host_port(url)
    socks = [None] * n
    connect_errors = []

    def connect(i):
        try:
            sock = gsocket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            socks[i] = sock
        except OSError as exc:
            connect_errors.append(f"connect: {type(exc).__name__}: {exc}")

    pool = gevent.pool.Pool(200)
    for i in range(n):
        pool.spawn(connect, i)
    pool.join()
    go = gevent.event.Event()
    results = [{} for _ in range(n)]
    gaps = array.array("d")

    def one(i):
        sock = socks[i]
        if sock is None:
            return
        try:
            _read_stream(sock, payload, go, results[i], gaps)
        except (OSError, HTTPError, ValueError) as exc:
            results[i]["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            sock.close()

    greenlets = [gevent.spawn(one, i) for i in range(n)]
    gevent.sleep(0.05)  # every greenlet is waiting on `go`
    meters.start()
    started = time.perf_counter()
    go.set()
    finished = gevent.joinall(greenlets, timeout=timeout)
    wall = time.perf_counter() - started
    cpu = meters.stop()
    if len(finished) < len(greenlets):
        gevent.killall([g for g in greenlets if not g.ready()], block=True, timeout=10)
    errors = {"connect": len(connect_errors), "non_200": 0, "short": 0, "connection": 0,
              "timeout": n - len(finished)}
    samples = connect_errors[:3]
    ttfts, ends, events = [], [], 0
    for r in results:
        if "error" in r:
            errors["connection"] += 1
            samples.append(r["error"])
        elif "status" not in r:
            continue  # not connected, or timed out (counted above)
        elif r["status"] != 200:
            errors["non_200"] += 1
            samples.append(f"HTTP {r['status']}: {r.get('body', b'')!r}")
        elif not r.get("done") or r.get("events", 0) < expected_events:
            errors["short"] += 1
            samples.append(f"short stream: {r.get('events')} events, done={r.get('done')}")
        if "ttft_s" in r:
            ttfts.append(r["ttft_s"])
        if "end_s" in r:
            ends.append(r["end_s"])
        events += r.get("events", 0)
    return {"streams": n, "wall_s": wall, "events": events, "errors": errors,
            "error_count": sum(errors.values()), "error_samples": samples[:5],
            "ttft": ms_stats(ttfts), "stream_s": ms_stats(ends), "gap": ms_stats(gaps),
            **cpu}


# -- servers ----------------------------------------------------------------------------------

class Stack:
    """Every process the benchmark starts, stopped last-first by close()."""

    def __init__(self):
        self.items = []  # (name, object with stop())

    def add(self, name, server):
        self.items.append((name, server))
        return server

    def remove(self, server):
        self.items = [(n, s) for n, s in self.items if s is not server]
        server.stop()

    def close(self):
        while self.items:
            name, server = self.items.pop()
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                print(f"# stopping {name} failed: {exc}", file=sys.stderr)


class PySpy:
    """A py-spy record process, stoppable like the servers."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait(self, timeout: float) -> tuple[int | None, str]:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            gevent.sleep(0.1)
        if self.proc.poll() is None:
            self.stop()
        return self.proc.returncode, self.proc.stdout.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def provision_key(storage: str) -> str:
    """A user and an API key in the gateway's store, as an operator would create them."""
    from inferegator.store.store import Store

    store = Store(storage)
    try:
        user = store.accounts.create_user("bench@example.com", "bench password 123")
        return store.accounts.create_key(user["id"], "bench")[0]
    finally:
        store.db.close()


def gateway_yaml(json_url: str, stream_url: str, storage: str, ratelimit_store: str,
                 journal: str, workers: int = 1) -> str:
    def model(public, url):
        return [f"  - id: {public}", "    owned_by: acme",
                "    pricing: {prompt: 1.0, completion: 2.0, cached_prompt: 0.5}",
                "    capabilities: [chat, completions, streaming]", "    backends:",
                f"      - {{type: sglang, url: '{url}', model: {SIM_MODEL}, role: primary}}"]

    # The repository's example plugins (installed by the test command) are not the
    # product: a deployment would not run them, so they are turned off where installed.
    examples = [f"  {name}: {{enabled: false}}" for name in installed_examples()]
    return "\n".join([
        "server:", f"  workers: {workers}", "  worker_connections: 10000",
        f"storage: '{storage}'", f"ledger_journal: '{journal}'",
        f"ratelimit: {{store: '{ratelimit_store}', requests_per_minute: 1000000000, "
        "tokens_per_minute: 1000000000000}",
        *(["plugins:", *examples] if examples else []),
        "models:", *model(JSON_MODEL, json_url), *model(STREAM_MODEL, stream_url),
    ]) + "\n"


def installed_examples() -> list[str]:
    """The example plugins of examples/ installed in this environment (entry points)."""
    installed = {ep.name for ep in metadata.entry_points(group="inferegator")}
    return [name for name in EXAMPLE_PLUGINS if name in installed]


def start_stream_backend(kind: str, pace_ms: float, tokens: int, python: str):
    if kind == "paced":
        port = free_port()
        argv = [python, str(BENCH_DIR / "paced_backend.py"), "--port", str(port),
                "--model", SIM_MODEL, "--pace-ms", str(pace_ms)]
        proc = ServerProcess(argv, f"http://127.0.0.1:{port}/health")
        proc.url = f"http://127.0.0.1:{port}"
        return proc
    return Simulator("--decode-ms-per-token", pace_ms, "--decode-batch-slope", 0,
                     "--max-running-requests", 10000, "--worker-connections", 10000,
                     "--prefill-tokens-per-s", 1e9, "--output-tokens-min", tokens,
                     "--output-tokens-max", tokens, "--log-level", "warning",
                     model=SIM_MODEL)


def smoke(url: str, model: str, key: str, stream_url: str | None) -> None:
    headers = {"Authorization": f"Bearer {key or 'none'}"}
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
    r = requests.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    if r.status_code != 200 or not r.json()["choices"][0]["message"]["content"]:
        raise RuntimeError(f"{url}: JSON smoke request failed: {r.status_code} {r.text[:500]}")
    if stream_url is not None:
        r = requests.post(stream_url + "/v1/chat/completions", headers=headers, timeout=60,
                          json={**body, "model": model.replace(JSON_MODEL, STREAM_MODEL),
                                "stream": True, "stream_options": {"include_usage": True}})
        if r.status_code != 200 or "data: [DONE]" not in r.text:
            raise RuntimeError(f"{stream_url}: stream smoke request failed: {r.status_code} "
                               f"{r.text[:500]}")


# -- sections ---------------------------------------------------------------------------------

def section_relay(ctx, cfg) -> dict:
    """SSERelay alone: a real SGLang chat stream (the simulator's bytes, as the gateway
    asks for them: include_usage and continuous_usage_stats) fed chunk by chunk."""
    from inferegator.gateway.relay import SSERelay

    body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": cfg["stream_tokens"], "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with requests.post(ctx["sim"].url + "/v1/chat/completions", json=body, stream=True,
                       timeout=60) as r:
        pieces = list(r.iter_content(chunk_size=None))  # one HTTP chunk = one event here
    assert pieces and pieces[-1].endswith(b"data: [DONE]\n\n"), pieces[-1:]
    events = sum(p.count(b"data:") for p in pieces)
    out = {"stream_events": events, "stream_pieces": len(pieces),
           "stream_bytes": sum(map(len, pieces)), "streams": cfg["relay_streams"]}
    for name, strip, include in (("include_usage=True, strip_running_usage=True: as "
                                  "_first_events builds it for an SGLang backend when the "
                                  "client asks for usage", True, True),):
        relayed = 0
        t0 = time.process_time()
        for _ in range(cfg["relay_streams"]):
            relay = SSERelay(SIM_MODEL, STREAM_MODEL, include, strip_running_usage=strip,
                             max_event_bytes=1 << 20, prompt_estimate=16)
            feed = relay.feed
            for piece in pieces:
                relayed += len(feed(piece))
            if not relay.done or relay.usage is None:
                raise RuntimeError("relay did not finish the stream")
        cpu = time.process_time() - t0
        out.update({"variant": name, "chunks_relayed": relayed, "cpu_s": cpu,
                    "us_per_chunk": 1e6 * cpu / (cfg["relay_streams"] * len(pieces))})
    log(f"relay alone: {out['us_per_chunk']:.2f} µs CPU per chunk "
        f"({len(pieces)} chunks x {cfg['relay_streams']} streams)")
    return out


def section_json(ctx, cfg, targets) -> dict:
    passes, conns = [], ctx["conns"]
    for rnd in range(cfg["rounds"]):
        for c in (1, 32, 256):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for t in order:
                url, model, key = ctx["json_targets"][t]
                payload = build_request(url, model, key, False, 16)
                conn_list = conns.setdefault((t, c), [Connection(*host_port(url))
                                                      for _ in range(c)])
                warm = drive(conn_list, payload, max(cfg["json_warmup"], c))
                if warm["errors"]:
                    raise RuntimeError(f"{t} c={c} warm-up errors: {warm['errors'][:3]}")
                meters = Meters({"proxy": ctx["pids"].get(t), "sim": ctx["sim"].proc.pid,
                                 "redis": ctx["redis_pid"], "postgres": ctx["pg_pid"]}).start()
                result = drive(conn_list, payload, cfg["json_requests"][c])
                cpu = meters.stop()
                ok = len(result["latency_s"])
                p = {"round": rnd, "target": t, "concurrency": c, "ok": ok,
                     "errors": len(result["errors"]), "error_samples": result["errors"][:5],
                     "wall_s": result["wall_s"], "rps": ok / result["wall_s"],
                     "latency_s": result["latency_s"], **cpu}
                passes.append(p)
                log(f"json round {rnd} c={c:<3} {t:18} {p['rps']:7.0f} req/s  p50 "
                    f"{percentile(result['latency_s'], 50) * 1000:6.2f} ms  "
                    f"proxy CPU {1e6 * cpu.get('proxy_cpu_s', 0) / max(1, ok):5.0f} µs/req  "
                    f"errors {p['errors']}")
    rows = []
    for c in (1, 32, 256):
        base = None
        for t in targets:
            ps = [p for p in passes if p["target"] == t and p["concurrency"] == c]
            ok = sum(p["ok"] for p in ps)
            lat = ms_stats([v for p in ps for v in p["latency_s"]])
            row = {"target": t, "concurrency": c, "ok": ok,
                   "errors": sum(p["errors"] for p in ps),
                   "rps": ok / sum(p["wall_s"] for p in ps),
                   "rps_per_round": [round(p["rps"], 1) for p in ps], "latency": lat,
                   "machine_busy": sum(p["machine_busy"] for p in ps) / len(ps)}
            for part in ("proxy", "sim", "client", "redis", "postgres"):
                key = f"{part}_cpu_s"
                if all(key in p for p in ps):
                    row[f"{part}_cpu_us_per_req"] = 1e6 * sum(p[key] for p in ps) / max(1, ok)
            if t == "direct":
                base = row
            else:
                row["added_p50_ms"] = lat["p50_ms"] - base["latency"]["p50_ms"]
                row["added_p99_ms"] = lat["p99_ms"] - base["latency"]["p99_ms"]
                row["rps_vs_direct"] = row["rps"] / base["rps"]
            rows.append(row)
    for p in passes:
        del p["latency_s"]
    return {"rows": rows, "passes": passes}


def section_memory(ctx, cfg) -> dict:
    url, model, key = ctx["json_targets"]["inferegator"]
    payload = build_request(url, model, key, False, 16)
    pid = worker_pids(ctx["pids"]["inferegator"])[0]
    # only this section's 32 connections stay open, so that idle keep-alive connections of
    # the json section, closed by the server's keep-alive timeout, do not count as a change
    for k in [k for k in ctx["conns"] if k != ("inferegator", 32)]:
        for conn in ctx["conns"].pop(k):
            conn.close()
    ports = {"clients": host_port(url)[1], "upstream (simulator)": host_port(ctx["sim"].url)[1],
             "upstream (stream backend)": host_port(ctx["stream_url"])[1],
             "redis": host_port(ctx["redis_url"].rsplit("/", 1)[0])[1]}
    if ctx.get("pg_port"):
        ports["postgresql"] = ctx["pg_port"]
    conns = ctx["conns"].setdefault(("inferegator", 32),
                                    [Connection(*host_port(url)) for _ in range(32)])
    warm = drive(conns, payload, cfg["memory_warmup"])
    if warm["errors"]:
        raise RuntimeError(f"memory warm-up errors: {warm['errors'][:3]}")
    gevent.sleep(1.0)  # the ledger's batched writes are done
    samples = [{"requests": 0, **proc_status(pid, ports)}]
    total, errors, wall = cfg["memory_requests"], [], 0.0
    step = max(1, total // 5)
    done = 0
    while done < total:
        n = min(step, total - done)
        result = drive(conns, payload, n)
        done += n
        wall += result["wall_s"]
        errors += result["errors"]
        gevent.sleep(0.5)
        samples.append({"requests": done, **proc_status(pid, ports)})
        log(f"memory: {done} requests, RSS {samples[-1]['rss_kib'] / 1024:.1f} MiB, "
            f"{samples[-1]['fds']} fds")
    gevent.sleep(1.5)
    samples.append({"requests": done, "settled": True, **proc_status(pid, ports)})
    before, after = samples[0], samples[-1]
    return {"worker_pid": pid, "requests": total, "warmup": cfg["memory_warmup"],
            "concurrency": 32, "wall_s": wall, "rps": total / wall, "errors": len(errors),
            "error_samples": errors[:5], "samples": samples,
            "rss_before_mib": before["rss_kib"] / 1024, "rss_after_mib": after["rss_kib"] / 1024,
            "rss_growth_pct": 100.0 * (after["rss_kib"] - before["rss_kib"]) / before["rss_kib"],
            "fds_before": before["fds"], "fds_after": after["fds"]}


def section_flame(ctx, cfg, args) -> dict:
    url, model, key = ctx["json_targets"]["inferegator"]
    payload = build_request(url, model, key, False, 16)
    pid = worker_pids(ctx["pids"]["inferegator"])[0]
    out_path = FLAME if args.results else OUT_DIR / f"perf-flame-{ctx['stamp']}.svg"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pyspy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or \
        shutil.which("py-spy")
    if pyspy is None:
        return {"error": "py-spy not found (pip install py-spy)"}
    tmp = out_path.with_suffix(".tmp.svg")
    # --gil: only the thread holding the GIL, so the gevent threadpool's idle threads (70 %
    # of the samples without it) and the hub's waits drop out; time inside syscalls that
    # release the GIL (send, recv) drops out too. Blocking mode by default: --nonblocking
    # lost over a third of the samples to read errors in a trial.
    argv = [pyspy, "record", "--format", "flamegraph", "-o", str(tmp), "--pid", str(pid),
            "--duration", str(cfg["flame_s"]), "--rate", "250", "--gil",
            *(["--nonblocking"] if args.flame_nonblocking else [])]
    conns = ctx["conns"].setdefault(("inferegator", 32),
                                    [Connection(*host_port(url)) for _ in range(32)])
    spy = ctx["stack"].add("py-spy", PySpy(argv))
    gevent.sleep(0.5)  # attached before the load starts
    result = drive(conns, payload, until=time.perf_counter() + cfg["flame_s"] + 1.0)
    code, output = spy.wait(timeout=30)
    ctx["stack"].remove(spy)
    rec = {"worker_pid": pid, "command": " ".join(argv[1:]).replace(
               str(tmp), os.path.relpath(out_path, ROOT)).replace(str(pid), "<worker pid>"),
           "seconds": cfg["flame_s"], "requests": len(result["latency_s"]),
           "errors": len(result["errors"]), "py_spy_exit": code, "py_spy_output": output[-2000:]}
    if code == 0 and tmp.exists():
        tmp.replace(out_path)
        rec["svg"] = str(out_path.relative_to(ROOT))
        log(f"flame graph: {rec['svg']} ({rec['requests']} requests in {cfg['flame_s']} s)")
    else:
        tmp.unlink(missing_ok=True)
        rec["error"] = f"py-spy exited {code}: {output.strip()[-500:]}"
        log(f"flame graph failed: {rec['error']}")
    return rec


def section_workers(ctx, cfg) -> dict:
    """JSON requests/s at c=256: the Redis + PostgreSQL gateway with 1 worker, and the same
    configuration with 2 workers, interleaved."""
    gw2 = ctx["stack"].add("inferegator-2w", GatewayServer(
        ctx["config_dir"], gateway_yaml(ctx["sim"].url, ctx["stream_url"], ctx["storage"],
                                        ctx["redis_url"], ctx["config_dir"] + "/journal-2w",
                                        workers=2),
        "--workers", "2", "--worker-connections", "10000"))
    try:
        key = ctx["json_targets"]["inferegator"][2]
        smoke(gw2.url, JSON_MODEL, key, None)
        variants = {1: (ctx["json_targets"]["inferegator"][0], ctx["pids"]["inferegator"]),
                    2: (gw2.url, gw2.proc.pid)}
        passes = []
        for rnd in range(cfg["workers_rounds"]):
            for w in ((1, 2) if rnd % 2 == 0 else (2, 1)):
                url, root = variants[w]
                payload = build_request(url, JSON_MODEL, key, False, 16)
                conns = ctx["conns"].setdefault((f"workers-{w}", 256), [
                    Connection(*host_port(url)) for _ in range(256)])
                warm = drive(conns, payload, 512)
                if warm["errors"]:
                    raise RuntimeError(f"{w} workers: warm-up errors: {warm['errors'][:3]}")
                per_worker = {pid: CpuMeter(pid) for pid in worker_pids(root)}
                for m in per_worker.values():
                    m.start()
                meters = Meters({"proxy": root, "sim": ctx["sim"].proc.pid,
                                 "redis": ctx["redis_pid"], "postgres": ctx["pg_pid"]}).start()
                result = drive(conns, payload, cfg["workers_requests"])
                cpu = meters.stop()
                worker_cpu = [round(m.stop()["cpu_s"], 2) for m in per_worker.values()]
                ok = len(result["latency_s"])
                passes.append({"round": rnd, "workers": w, "ok": ok,
                               "errors": len(result["errors"]),
                               "error_samples": result["errors"][:5],
                               "wall_s": result["wall_s"], "rps": ok / result["wall_s"],
                               "worker_cpu_s": worker_cpu, **cpu})
                log(f"workers round {rnd}: {w} worker(s) {passes[-1]['rps']:7.0f} req/s, "
                    f"worker CPU {worker_cpu} s, machine busy {cpu['machine_busy']:.0%}")
    finally:
        for conns in [ctx["conns"].pop(("workers-2", 256), [])]:
            for c in conns:
                c.close()
        ctx["stack"].remove(gw2)
    rows = {}
    for w in (1, 2):
        ps = [p for p in passes if p["workers"] == w]
        ok = sum(p["ok"] for p in ps)
        rows[w] = {"workers": w, "rps": ok / sum(p["wall_s"] for p in ps),
                   "rps_per_round": [round(p["rps"], 1) for p in ps],
                   "errors": sum(p["errors"] for p in ps),
                   "machine_busy": sum(p["machine_busy"] for p in ps) / len(ps),
                   **{f"{part}_cpu_us_per_req": 1e6 * sum(p[f"{part}_cpu_s"] for p in ps)
                      / max(1, ok) for part in ("proxy", "sim", "client", "redis", "postgres")
                      if all(f"{part}_cpu_s" in p for p in ps)}}
    return {"concurrency": 256, "rows": [rows[1], rows[2]],
            "ratio": rows[2]["rps"] / rows[1]["rps"], "passes": passes}


def section_streams(ctx, cfg, targets) -> dict:
    tokens = cfg["stream_tokens"]
    expected = tokens + 4  # role, one per token, finish, usage, [DONE]
    pace_s = ctx["pace_ms"] / 1000.0
    passes = []
    for si, n in enumerate(cfg["streams"]):
        order = targets[si % len(targets):] + targets[:si % len(targets)]
        for t in order:
            url, model, key = ctx["stream_targets"][t]
            payload = build_request(url, model, key, True, tokens)
            meters = Meters({"proxy": ctx["pids"].get(f"{t}:stream", ctx["pids"].get(t)),
                             "backend": ctx["stream_backend"].proc.pid,
                             "redis": ctx["redis_pid"], "postgres": ctx["pg_pid"]})
            if t == "direct":
                meters.meters.pop("proxy", None)
            timeout = 60 + 4 * tokens * pace_s + n * 0.01
            result = stream_pass(url, payload, n, expected, timeout, meters)
            result.update({"target": t, "concurrency": n, "tokens": tokens})
            proxy_cpu = result.get("proxy_cpu_s")
            result["proxy_cpu_us_per_chunk"] = (1e6 * proxy_cpu / result["events"]
                                                if proxy_cpu is not None and result["events"]
                                                else None)
            passes.append(result)
            log(f"streams n={n:<5} {t:18} TTFT p50 {result['ttft']['p50_ms'] or 0:7.1f} ms "
                f"p99 {result['ttft']['p99_ms'] or 0:7.1f} ms  gap p99 "
                f"{result['gap']['p99_ms'] or 0:6.1f} ms  "
                f"{result['events']} chunks, errors {result['errors']}, proxy "
                f"{result['proxy_cpu_us_per_chunk'] or 0:.1f} µs/chunk, "
                f"backend CPU {result['backend_cpu_s']:.1f} s in {result['wall_s']:.1f} s")
            gevent.sleep(1.0)  # let the proxies close their upstream connections
    for n in cfg["streams"]:
        base = next(p for p in passes if p["concurrency"] == n and p["target"] == "direct")
        for p in passes:
            if p["concurrency"] == n and p["target"] != "direct":
                for q in ("p50", "p99"):
                    a, b = p["ttft"][f"{q}_ms"], base["ttft"][f"{q}_ms"]
                    p[f"added_ttft_{q}_ms"] = a - b if a is not None and b is not None else None
                a, b = p["gap"]["p99_ms"], base["gap"]["p99_ms"]
                p["added_gap_p99_ms"] = a - b if a is not None and b is not None else None
    return {"backend": ctx["stream_backend_note"], "pace_ms": ctx["pace_ms"], "tokens": tokens,
            "expected_events": expected, "passes": passes}


# -- the report -------------------------------------------------------------------------------

def _f(v, digits=2, unit=""):
    return "–" if v is None else f"{v:,.{digits}f}{unit}"


def verdict(ok) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


def report(rec: dict) -> str:
    m, v, s = rec["machine"], rec["versions"], rec["sections"]
    lines = [
        f"Run {rec['started']} (UTC), {rec['duration_s'] / 60:.1f} min: "
        f"`{rec['command']}`",
        "",
        f"Machine: {m['cpus']} cores ({m['cpu_model']}), Linux {m['kernel']}, Python "
        f"{m['python']}, {m['mem_gib']:.0f} GiB memory. Inferegator `{rec['commit']}`; gevent "
        f"{v['gevent']}, geventhttpclient {v['geventhttpclient']}, falcon {v['falcon']}, "
        f"gunicorn {v['gunicorn']}, sglang-router {v['sglang-router']}, {v['redis-server']}, "
        f"{v['postgresql']}.",
        "",
        f"Ledger store of `inferegator`: {rec['ledger_store']}. Every gateway: one gunicorn "
        "gevent worker unless said; API keys, the usage ledger and the console on; "
        "`inferegator` limits with Redis, `inferegator-memory` in process with a SQLite "
        "ledger. Client, backends, proxies, Redis and PostgreSQL share the machine's cores; "
        "the load generator is the benchmark's own process (gevent, raw sockets), which does "
        "nothing else during a pass."
        + (f" The example plugins installed here ({', '.join(installed_examples())}) are "
           "turned off: they are not part of the product." if installed_examples()
           else ""),
        "",
    ]
    targets = rec["targets_table"]
    lines += ["### Targets", "", "| target (issue 14) | measured | verdict |",
              "|---|---|---|"]
    for row in targets:
        lines.append(f"| {row['target']} | {row['measured']} | {verdict(row['ok'])} |")
    lines.append("")
    if "json" in s:
        lines += ["### JSON chat completions (`inferegator sim --instant`, max_tokens 16)", "",
                  f"{rec['settings']['rounds']} interleaved round(s); requests per pass "
                  f"{rec['settings']['json_requests']} (by connections). Added = target − "
                  "direct at the same percentile; proxy CPU = the proxy's process tree "
                  "(utime + stime from /proc) over the measured requests.", "",
                  "| c | target | req/s | × direct req/s | P50 ms | P99 ms | added P50 ms "
                  "| added P99 ms | proxy CPU µs/req | sim CPU µs/req | machine busy "
                  "| errors |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s["json"]["rows"]:
            d = r["target"] == "direct"
            lines.append(
                f"| {r['concurrency']} | {r['target']} | {_f(r['rps'], 0)} "
                f"| {'–' if d else _f(r['rps_vs_direct'], 2)} | {_f(r['latency']['p50_ms'])} "
                f"| {_f(r['latency']['p99_ms'])} | {'–' if d else _f(r['added_p50_ms'])} "
                f"| {'–' if d else _f(r['added_p99_ms'])} "
                f"| {'–' if d else _f(r.get('proxy_cpu_us_per_req'), 0)} "
                f"| {_f(r.get('sim_cpu_us_per_req'), 0)} | {r['machine_busy']:.0%} "
                f"| {r['errors']} |")
        lines.append("")
    if "streams" in s:
        st = s["streams"]
        lines += [f"### Streams ({st['tokens']} tokens each, all opened at once)", "",
                  f"Backend: {st['backend']}", "",
                  "TTFT = request sent to first `data:` event; gap = time between two "
                  "events of one stream as the client reads them (events that arrive in "
                  "one read count as gap 0); errors = connect errors + non-200 + short "
                  "streams (fewer events or no `[DONE]`) + connection errors + timeouts; "
                  "proxy CPU per chunk = the proxy's CPU over the pass / events the "
                  "clients received.", "",
                  "| streams | target | TTFT P50 ms | TTFT P99 ms | added TTFT P50 / P99 ms "
                  "| gap P99 ms | added gap P99 ms | stream P50 s | chunks | errors "
                  "| proxy CPU µs/chunk | backend CPU % | machine busy |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in st["passes"]:
            d = p["target"] == "direct"
            err = p["error_count"]
            kinds = ", ".join(f"{k} {v}" for k, v in p["errors"].items() if v)
            err_s = f"{err} ({kinds})" if err else "0"
            added_ttft = "–" if d else (f"{_f(p.get('added_ttft_p50_ms'), 1)} / "
                                        f"{_f(p.get('added_ttft_p99_ms'), 1)}")
            lines.append(
                f"| {p['concurrency']:,} | {p['target']} | {_f(p['ttft']['p50_ms'], 1)} "
                f"| {_f(p['ttft']['p99_ms'], 1)} | {added_ttft} "
                f"| {_f(p['gap']['p99_ms'], 1)} "
                f"| {'–' if d else _f(p.get('added_gap_p99_ms'), 1)} "
                f"| {_f((p['stream_s']['p50_ms'] or 0) / 1000, 2)} | {p['events']:,} | {err_s} "
                f"| {'–' if d else _f(p['proxy_cpu_us_per_chunk'], 1)} "
                f"| {100 * p['backend_cpu_s'] / p['wall_s']:.0f} % | {p['machine_busy']:.0%} |")
        lines.append("")
        failed = [p for p in st["passes"] if p["error_count"]]
        for p in failed:
            sample = p["error_samples"][0] if p["error_samples"] else "?"
            lines.append(f"- {p['concurrency']:,} streams, {p['target']}: first error "
                         f"`{sample[:240]}`")
        if failed:
            lines.append("")
    if "relay" in s:
        r = s["relay"]
        lines += ["### Stream relay alone (in process, no HTTP)", "",
                  f"`SSERelay` ({r['variant']}) fed the simulator's {r['stream_pieces']}-chunk "
                  f"chat stream ({r['stream_bytes']:,} bytes, continuous usage stats as the "
                  f"gateway asks SGLang for them) {r['streams']:,} times, one chunk per "
                  f"`feed`: **{r['us_per_chunk']:.2f} µs CPU per chunk** "
                  f"(time.process_time).", ""]
    if "memory" in s:
        mm = s["memory"]
        lines += ["### Memory and file descriptors (`inferegator`, Redis + ledger)", "",
                  f"{mm['requests']:,} JSON requests at c=32 after a {mm['warmup']:,}-request "
                  f"warm-up (after the sections before it; the client's other connections "
                  f"closed first), {_f(mm['rps'], 0)} req/s, "
                  f"{mm['errors']} errors. Worker pid {mm['worker_pid']}.", "",
                  "| requests | RSS MiB | open fds | of which |", "|---:|---:|---:|---|"]
        for smp in mm["samples"]:
            kinds = ", ".join(f"{k} {v}" for k, v in smp.get("fd_kinds", {}).items())
            lines.append(f"| {smp['requests']:,}{' (settled)' if smp.get('settled') else ''} "
                         f"| {smp['rss_kib'] / 1024:.1f} | {smp['fds']} | {kinds} |")
        lines += ["", f"RSS growth {mm['rss_growth_pct']:+.2f} %, fds {mm['fds_before']} → "
                  f"{mm['fds_after']}.", ""]
    if "workers" in s:
        w = s["workers"]
        lines += ["### Workers: 1 against 2 (`inferegator`, Redis + PostgreSQL ledger, "
                  "JSON, c=256)", "",
                  "| workers | req/s (per round) | proxy CPU µs/req | sim CPU µs/req "
                  "| redis CPU µs/req | postgres CPU µs/req | client CPU µs/req "
                  "| machine busy |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in w["rows"]:
            per_round = ", ".join(f"{x:,.0f}" for x in r["rps_per_round"])
            lines.append(f"| {r['workers']} | {_f(r['rps'], 0)} ({per_round}) "
                         f"| {_f(r.get('proxy_cpu_us_per_req'), 0)} "
                         f"| {_f(r.get('sim_cpu_us_per_req'), 0)} "
                         f"| {_f(r.get('redis_cpu_us_per_req'), 0)} "
                         f"| {_f(r.get('postgres_cpu_us_per_req'), 0)} "
                         f"| {_f(r.get('client_cpu_us_per_req'), 0)} "
                         f"| {r['machine_busy']:.0%} |")
        lines += ["", f"Ratio 2 / 1 workers: **{w['ratio']:.2f}×**. Sharing the "
                  f"{m['cpus']} cores with the gateway's workers: the load generator, the "
                  "simulator, redis-server and PostgreSQL (their CPU per request above).", ""]
    if "flame" in s:
        fl = s["flame"]
        if fl.get("svg"):
            rel = os.path.relpath(ROOT / fl["svg"], BENCH_DIR)
            lines += ["### Flame graph", "",
                      f"[`{rel}`]({rel}): the `inferegator` worker (pid {fl['worker_pid']}) "
                      f"under JSON load at c=32, {fl['seconds']} s, {fl['requests']:,} "
                      f"requests: `py-spy {fl['command']}`.", ""]
        else:
            lines += ["### Flame graph", "", f"Not recorded: {fl.get('error')}", ""]
    return "\n".join(_wrap(line) for line in lines)


def _wrap(line: str, width: int = 90) -> str:
    """Prose and list items wrapped (as the rest of RESULTS.md is); table rows as they are."""
    if len(line) <= width or line.startswith(("|", "#")):
        return line
    indent = "  " if line.startswith("- ") else ""
    return textwrap.fill(line, width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)


def targets_table(rec: dict) -> list[dict]:
    s = rec["sections"]
    rows = []

    def add(target, measured, ok):
        rows.append({"target": target, "measured": measured, "ok": ok})

    if "json" in s:
        jr = {(r["target"], r["concurrency"]): r for r in s["json"]["rows"]}
        for t in ("inferegator", "inferegator-memory"):
            r = jr.get((t, 1))
            if r:
                add(f"JSON added P50 ≤ 0.5 ms at c=1 (`{t}`)", f"{_f(r['added_p50_ms'])} ms",
                    r["added_p50_ms"] <= 0.5)
        r, router = jr.get(("inferegator", 32)), jr.get(("sglang-router", 32))
        if r:
            cpu = r.get("proxy_cpu_us_per_req")
            add("CPU ≤ 300 µs/request at c=32, Redis limiter + ledger",
                f"{_f(cpu, 0)} µs", None if cpu is None else cpu <= 300)
            add("(must) CPU ≤ 500 µs/request at c=32, Redis limiter + ledger",
                f"{_f(cpu, 0)} µs", None if cpu is None else cpu <= 500)
            if router and router.get("proxy_cpu_us_per_req"):
                rc = router["proxy_cpu_us_per_req"]
                add("CPU ≤ 2× sglang-router's at c=32",
                    f"{_f(cpu, 0)} µs vs 2 × {_f(rc, 0)} µs = {cpu / rc:.1f}×", cpu <= 2 * rc)
            add("≥ 0.9× direct's req/s at c=32", f"{r['rps_vs_direct']:.2f}×",
                r["rps_vs_direct"] >= 0.9)
        r = jr.get(("inferegator-memory", 32))
        if r:
            add("(for reference) CPU at c=32, `inferegator-memory`",
                f"{_f(r.get('proxy_cpu_us_per_req'), 0)} µs, {r['rps_vs_direct']:.2f}× "
                "direct's req/s", None)
    if "streams" in s:
        for n in sorted({p["concurrency"] for p in s["streams"]["passes"]}):
            ps = {p["target"]: p for p in s["streams"]["passes"] if p["concurrency"] == n}
            g, router = ps.get("inferegator"), ps.get("sglang-router")
            if g is None:
                continue
            cpu = g["proxy_cpu_us_per_chunk"]
            add(f"stream relay ≤ 15 µs CPU per chunk end to end ({n:,} streams)",
                f"{_f(cpu, 1)} µs" if cpu is not None else "– (no chunk relayed)",
                None if cpu is None else cpu <= 15)
            add(f"{n:,} streams: 0 errors", str(g["error_count"]), g["error_count"] == 0)
            if router is not None:
                a, b = g.get("added_ttft_p50_ms"), router.get("added_ttft_p50_ms")
                add(f"{n:,} streams: added TTFT P50 below sglang-router's",
                    f"{_f(a, 1)} ms vs {_f(b, 1)} ms", None if a is None or b is None else a < b)
                a, b = g.get("added_gap_p99_ms"), router.get("added_gap_p99_ms")
                add(f"{n:,} streams: added P99 gap below sglang-router's",
                    f"{_f(a, 1)} ms vs {_f(b, 1)} ms", None if a is None or b is None else a < b)
    if "relay" in s:
        add("(lower bound) SSERelay alone, CPU per chunk",
            f"{s['relay']['us_per_chunk']:.2f} µs", None)
    if "workers" in s:
        w = s["workers"]
        add("2 workers ≥ 1.6× 1 worker's JSON req/s at c=256",
            f"{w['ratio']:.2f}× ({_f(w['rows'][1]['rps'], 0)} vs {_f(w['rows'][0]['rps'], 0)} "
            "req/s)", w["ratio"] >= 1.6)
    if "memory" in s:
        mm = s["memory"]
        add(f"RSS growth < 5 % over {mm['requests']:,} requests",
            f"{mm['rss_growth_pct']:+.2f} % ({mm['rss_before_mib']:.1f} → "
            f"{mm['rss_after_mib']:.1f} MiB)", mm["rss_growth_pct"] < 5)
        add(f"no fd growth over {mm['requests']:,} requests",
            f"{mm['fds_before']} → {mm['fds_after']}", mm["fds_after"] <= mm["fds_before"])
    return rows


def write_results(text: str) -> None:
    current = RESULTS.read_text() if RESULTS.exists() else ""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + block + tail
    else:
        new = (current.rstrip("\n") + "\n\n## Issue 14: every target in one command "
               "(`bench/perf.py`)\n\n" + block + "\n")
    RESULTS.write_text(new)


def machine() -> dict:
    cpu_model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "kernel": platform.release(),
            "platform": platform.platform(), "python": platform.python_version(),
            "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30}


def versions() -> dict:
    pg = postgres_binary("postgres")
    return {**{d: version(d) for d in ("inferegator", "gevent", "geventhttpclient", "falcon",
                                       "gunicorn", "sglang-router", "redis", "psycopg")},
            "redis-server": re.sub(r"^Redis server v=(\S+).*", r"redis-server \1",
                                   command_version([shutil.which("redis-server")
                                                    or "/usr/bin/redis-server", "--version"])),
            "postgresql": re.sub(r"^postgres \(PostgreSQL\) (\S+).*", r"PostgreSQL \1",
                                 command_version([pg, "--version"])) if pg else "not installed",
            "wrk": "not used", "py-spy": command_version(
                [shutil.which("py-spy", path=os.path.dirname(sys.executable))
                 or "py-spy", "--version"])}


# -- main -------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small sizes everywhere (a few minutes): 100 and 300 streams of 40 "
                         "tokens, 10,000 requests for memory, one round; writes neither "
                         "RESULTS.md nor bench/perf-flame.svg unless --results")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated, from {','.join(SECTIONS)} (default all)")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="comma-separated (direct is always included)")
    ap.add_argument("--rounds", type=int, help="JSON rounds, interleaved (full 3, quick 1)")
    ap.add_argument("--streams", help="comma-separated stream counts (full 500,2000)")
    ap.add_argument("--stream-tokens", type=int, help="tokens per stream (full 200)")
    ap.add_argument("--stream-backend", choices=("paced", "sim"), default="paced",
                    help="paced: bench/paced_backend.py (default); sim: inferegator sim "
                         "with --decode-ms-per-token")
    ap.add_argument("--pace-ms", type=float, default=100.0,
                    help="ms between two tokens of a stream (default 100)")
    ap.add_argument("--memory-requests", type=int, help="full 100,000")
    ap.add_argument("--flame-seconds", type=int, help="full 12")
    ap.add_argument("--flame-nonblocking", action="store_true",
                    help="py-spy --nonblocking (less overhead, but sampling errors)")
    ap.add_argument("--results", action=argparse.BooleanOptionalAction, default=None,
                    help="write bench/RESULTS.md and bench/perf-flame.svg (default: on for "
                         "full runs, off with --quick)")
    ap.add_argument("--router-python", default=None)
    ap.add_argument("--out", type=Path, default=None, help="JSON record path")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    if args.rounds:
        cfg["rounds"] = args.rounds
    if args.streams:
        cfg["streams"] = tuple(int(x) for x in args.streams.split(",") if x)
    if args.stream_tokens:
        cfg["stream_tokens"] = args.stream_tokens
    if args.memory_requests:
        cfg["memory_requests"] = args.memory_requests
    if args.flame_seconds:
        cfg["flame_s"] = args.flame_seconds
    if args.results is None:
        args.results = not args.quick
    sections = [x for x in args.sections.split(",") if x]
    for x in sections:
        if x not in SECTIONS:
            ap.error(f"unknown section {x!r}; known: {', '.join(SECTIONS)}")
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; known: {', '.join(TARGETS)}")
    if "direct" not in targets:
        targets.insert(0, "direct")
    if "inferegator" not in targets and {"memory", "flame", "workers"} & set(sections):
        targets.append("inferegator")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started in the background (SIG_IGN)
    nofile = raise_nofile()
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    stamp = f"{started:%Y%m%dT%H%M%SZ}"
    stack = Stack()
    config_dir = tempfile.mkdtemp(prefix="inferegator-perf-")
    rec = {"started": started.isoformat(timespec="seconds"), "commit": git_commit(),
           "command": " ".join([".venv/bin/python", "bench/perf.py", *sys.argv[1:]]),
           "machine": machine(), "versions": versions(), "rlimit_nofile": list(nofile),
           "settings": {**{k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in cfg.items()},
                        "targets": targets, "sections": sections, "quick": args.quick,
                        "stream_backend": args.stream_backend, "pace_ms": args.pace_ms},
           "sections": {}, "logs": {}}
    ctx = {"stack": stack, "conns": {}, "config_dir": config_dir, "stamp": stamp,
           "pids": {}, "pace_ms": args.pace_ms}
    code = 0
    try:
        log("starting the backends, Redis, PostgreSQL and the targets")
        sim = ctx["sim"] = stack.add("simulator", Simulator(
            "--instant", "--log-level", "warning", "--worker-connections", 10000,
            model=SIM_MODEL))
        need_streams = "streams" in sections
        python = sys.executable
        if need_streams or any(t != "direct" for t in targets):
            sb = ctx["stream_backend"] = stack.add("stream-backend", start_stream_backend(
                args.stream_backend, args.pace_ms, cfg["stream_tokens"], python))
            ctx["stream_url"] = sb.url
            if args.stream_backend == "paced":
                ctx["stream_backend_note"] = (
                    f"bench/paced_backend.py, one event every {args.pace_ms:g} ms per stream "
                    "(pre-rendered SGLang chat.completion.chunk events, chunked, one event "
                    "per write, one gevent scheduler writing every due event). Not the "
                    "simulator: at 2,000 streams it cannot keep up on this machine (a trial "
                    "with --decode-ms-per-token 50: 93 % of a core, 10 s streams stretched "
                    "to 21 s; the paced backend: 33 %, 10 s), so it, not the proxy, would be "
                    "the bottleneck. Its CPU share during each pass is in the table.")
            else:
                ctx["stream_backend_note"] = (
                    f"`inferegator sim --decode-ms-per-token {args.pace_ms:g} "
                    "--decode-batch-slope 0 --max-running-requests 10000`.")
        from tests.support.redis_server import RedisServer

        redis = stack.add("redis-server", RedisServer())
        ctx["redis_url"], ctx["redis_pid"] = redis.url, redis.proc.pid
        pg_pid = None
        if postgres_binary("initdb") and postgres_binary("pg_ctl"):
            from tests.support.postgres import PostgresServer

            pg = stack.add("postgresql", PostgresServer())
            storage = pg.create_database()
            ctx["pg_port"] = pg.port
            with open(os.path.join(pg.data, "postmaster.pid")) as f:
                pg_pid = int(f.readline())
            rec["ledger_store"] = (f"{rec['versions']['postgresql']} (a private server, "
                                   "fsync off)")
        else:
            storage = f"sqlite:///{config_dir}/ledger-redis.db"
            rec["ledger_store"] = "SQLite (PostgreSQL binaries not found: FALLBACK)"
            log("PostgreSQL binaries not found: the `inferegator` target's ledger is SQLite")
        ctx["pg_pid"], ctx["storage"] = pg_pid, storage
        sqlite_storage = f"sqlite:///{config_dir}/ledger-memory.db"
        json_targets = {"direct": (sim.url, SIM_MODEL, "")}
        stream_targets = {"direct": (ctx.get("stream_url"), SIM_MODEL, "")}
        for t, store, limiter in (("inferegator", storage, redis.url),
                                  ("inferegator-memory", sqlite_storage, "memory")):
            if t not in targets:
                continue
            key = provision_key(store)
            gw = stack.add(t, GatewayServer(
                config_dir, gateway_yaml(sim.url, ctx["stream_url"], store, limiter,
                                         f"{config_dir}/journal-{t}"),
                "--workers", "1", "--worker-connections", "10000"))
            json_targets[t] = (gw.url, JSON_MODEL, key)
            stream_targets[t] = (gw.url, STREAM_MODEL, key)
            ctx["pids"][t] = gw.proc.pid
        if "sglang-router" in targets:
            rpy = router_python(args.router_python)
            router, router_url = start_router(sim.url, rpy)
            stack.add("sglang-router", router)
            json_targets["sglang-router"] = (router_url, SIM_MODEL, "")
            ctx["pids"]["sglang-router"] = router.proc.pid
            if need_streams:
                router_s, router_s_url = start_router(ctx["stream_url"], rpy)
                stack.add("sglang-router:stream", router_s)
                stream_targets["sglang-router"] = (router_s_url, SIM_MODEL, "")
                ctx["pids"]["sglang-router:stream"] = router_s.proc.pid
        ctx["json_targets"], ctx["stream_targets"] = json_targets, stream_targets
        for t in targets:
            url, model, key = json_targets[t]
            smoke(url, model, key, stream_targets[t][0] if need_streams else None)
        rec["urls"] = {t: json_targets[t][0] for t in targets}
        log("ready: " + ", ".join(f"{t} {json_targets[t][0]}" for t in targets))

        for name in SECTIONS:
            if name not in sections:
                continue
            t0 = time.monotonic()
            log(f"section {name}")
            if name == "relay":
                rec["sections"]["relay"] = section_relay(ctx, cfg)
            elif name == "json":
                rec["sections"]["json"] = section_json(ctx, cfg, targets)
            elif name == "memory":
                rec["sections"]["memory"] = section_memory(ctx, cfg)
            elif name == "flame":
                rec["sections"]["flame"] = section_flame(ctx, cfg, args)
            elif name == "workers":
                rec["sections"]["workers"] = section_workers(ctx, cfg)
            elif name == "streams":
                rec["sections"]["streams"] = section_streams(ctx, cfg, targets)
            rec["sections"][name]["section_s"] = round(time.monotonic() - t0, 1)
        for name, server in stack.items:
            if hasattr(server, "output"):
                rec["logs"][name] = server.output()[-3000:]
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); stopping everything")
        code = 130
    except Exception:
        code = 1
        raise
    finally:
        for conns in ctx["conns"].values():
            for conn in conns:
                conn.close()
        stack.close()
        shutil.rmtree(config_dir, ignore_errors=True)
        rec["duration_s"] = time.monotonic() - t_start
        if rec["sections"]:
            finish(rec, args, stamp, write=code == 0)
    if code:
        return code
    errors = count_errors(rec)
    if errors:
        log(f"{errors} failed requests or streams in all (see the tables): exit status 1")
    return 1 if errors else 0


def count_errors(rec: dict) -> int:
    """Failed requests and streams over every section (warm-ups excepted)."""
    s = rec["sections"]
    total = 0
    for name in ("json", "workers"):
        if name in s:
            total += sum(p["errors"] for p in s[name]["passes"])
    for name in ("memory", "flame"):
        total += s.get(name, {}).get("errors", 0)
    if "streams" in s:
        total += sum(p["error_count"] for p in s["streams"]["passes"])
    return total


def finish(rec: dict, args, stamp: str, write: bool) -> None:
    rec["targets_table"] = targets_table(rec)
    text = report(rec)
    out = args.out or OUT_DIR / f"perf-{stamp}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(rec, f, indent=1, default=str)
    print(text)
    if write and args.results:
        write_results(text)
        log(f"wrote {RESULTS.relative_to(ROOT)} (between {BEGIN} and {END})")
    elif not args.results:
        md = out.with_suffix(".md")
        md.write_text(text + "\n")
        log(f"RESULTS.md left as it is; markdown in {md}")
    log(f"full record: {out}; {rec['duration_s'] / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
