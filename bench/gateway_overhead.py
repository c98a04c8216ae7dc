#!/usr/bin/env python3
"""Latency the gateway adds over calling the simulator directly, side by side with sglang-router.

One run starts one simulator (`inferegator sim --instant`, one gunicorn gevent worker) and,
in front of that same simulator:
  - the Inferegator gateway (`inferegator serve`, one worker, one sglang backend);
  - the real sglang-router (`python -m sglang_router.launch_router --policy round_robin`,
    one worker URL), as a peer written in Rust.
Then, for each target (the simulator called directly, the gateway, the router), it sends
chat completions (a fixed small prompt, max_tokens 16) as JSON and as streams, at
concurrency 1 and 32, and records per request:
  - JSON: the time from sending the request until the whole answer has arrived;
  - stream: time to the first `data:` event (TTFB) and time to the end of the stream.

The load generator is this process: gevent greenlets, one raw keep-alive TCP socket each
(TCP_NODELAY, the request in one send, a minimal HTTP/1.1 parser), so it spends tens of
microseconds per request rather than the milliseconds of `requests`. Each (concurrency,
mode, target) pass first sends warm-up requests over the same connections, then the
measured requests (a closed loop: each connection sends its next request as soon as its
previous answer ends). Passes are interleaved (round by round, target by target) so drift
on the machine hits every target alike; the samples of all rounds are pooled.

CPU per request of each server process tree (master + workers, or the router's threads) is
read from /proc/<pid>/stat (utime + stime, 10 ms ticks) before and after each measured
pass. Client, gateway, router and simulator share the machine's cores, so at concurrency 32
every figure includes CPU contention; the machine's busy share during each pass
(/proc/stat) is recorded too.

Output: a markdown table on stdout and the full record as JSON under bench/out/
(git-ignored). Every process started is stopped at the end, also on error.

Usage (from the repository root):
  .venv/bin/python bench/gateway_overhead.py
  .venv/bin/python bench/gateway_overhead.py --rounds 1 -n1 200 -n32 1000   # quicker
  .venv/bin/python bench/gateway_overhead.py --targets direct,inferegator
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
import gevent.socket as gsocket
import requests

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import (  # noqa: E402  (needs the repository root on the path)
    GatewayServer,
    ServerProcess,
    Simulator,
    free_port,
)

OUT_DIR = BENCH_DIR / "out"
KEY = ""  # provisioned in the gateway's store by main() before the gateway starts
PUBLIC_MODEL = "acme/sim-chat"
SIM_MODEL = "sim-model"
PROMPT = "Summarise in one sentence why a prefix cache helps a chat service."
# inferegator-noconsole: the same gateway with `console: {enabled: false}`, to show that
# the web console costs the API nothing.
TARGETS = ("direct", "inferegator", "inferegator-noconsole", "sglang-router")
MODES = ("json", "stream")
CLK_TCK = os.sysconf("SC_CLK_TCK")
STALL_MS = 30.0  # at concurrency 1 nothing here should take this long; 40 ms = Nagle stall


# -- servers ----------------------------------------------------------------------------------

def stop_all(servers, conns_by_key) -> None:
    """Close the client's connections, then stop every server started (last first)."""
    for conns in conns_by_key.values():
        for conn in conns:
            conn.close()
    for name, server in reversed(servers):
        try:
            server.stop()
        except Exception as exc:  # keep stopping the others
            print(f"# stopping {name} failed: {exc}", file=sys.stderr)


def provision_key(storage: str) -> str:
    """A user and an API key in the gateway's store, as an operator would create them."""
    from inferegator.store.store import Store

    store = Store(storage)
    try:
        user = store.accounts.create_user("bench@example.com", "bench password 123")
        return store.accounts.create_key(user["id"], "bench")[0]
    finally:
        store.db.close()


def gateway_yaml(sim_url: str, storage: str, ratelimit_store: str = "memory",
                 console: bool = True) -> str:
    return "\n".join([
        f"console: {{enabled: {'true' if console else 'false'}}}",
        "server:",
        "  workers: 1",
        f"storage: '{storage}'",
        f"ratelimit: {{store: '{ratelimit_store}', requests_per_minute: 1000000000, "
        "tokens_per_minute: 1000000000000}",
        "models:",
        f"  - id: {PUBLIC_MODEL}",
        "    owned_by: acme",
        "    pricing: {prompt: 1.0, completion: 2.0, cached_prompt: 0.5}",
        "    capabilities: [chat, completions, streaming]",
        "    backends:",
        f"      - {{type: sglang, url: '{sim_url}', model: {SIM_MODEL}, role: primary}}",
    ]) + "\n"


def router_python(explicit: str | None) -> str:
    """A Python that can run sglang_router: the one given, this one, or the repo's .venv."""
    if explicit:
        return explicit
    for python in (sys.executable, str(ROOT / ".venv" / "bin" / "python")):
        probe = subprocess.run([python, "-c", "import sglang_router"], capture_output=True)
        if probe.returncode == 0:
            return python
    raise SystemExit("sglang_router is not installed (pip install sglang-router), or pass "
                     "--router-python, or leave sglang-router out of --targets")


def start_router(sim_url: str, python: str) -> tuple[ServerProcess, str]:
    port = free_port()
    argv = [python, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
            "--port", str(port), "--policy", "round_robin", "--log-level", "warn",
            "--prometheus-port", str(free_port()),  # not the shared default 29000
            "--worker-urls", sim_url]
    proc = ServerProcess(argv, f"http://127.0.0.1:{port}/health",
                         env={"HF_HUB_OFFLINE": "1", "NO_PROXY": "*"}, ready_timeout=60)
    return proc, f"http://127.0.0.1:{port}"


# -- CPU accounting ---------------------------------------------------------------------------

def _stat_fields(pid: int):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # the command name may hold spaces; the fields after ')' are fixed
    return data[data.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    """root and all its descendants (by parent pid), as seen now."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_ticks(pids) -> dict[int, int]:
    """utime + stime (clock ticks, all threads) of each pid still alive."""
    out = {}
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        out[pid] = int(fields[11]) + int(fields[12])
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


class CpuMeter:
    """CPU seconds spent by a server's process tree between start() and stop()."""

    def __init__(self, root_pid: int):
        self.root = root_pid

    def start(self):
        self.pids = process_tree(self.root)
        self.before = cpu_ticks(self.pids)

    def stop(self) -> dict:
        after = cpu_ticks(self.pids)
        lost = sorted(set(self.before) - set(after))
        ticks = sum(after[p] - self.before[p] for p in after if p in self.before)
        return {"cpu_s": ticks / CLK_TCK, "processes": len(self.pids), "exited": lost}


# -- the load generator -----------------------------------------------------------------------

class HTTPError(Exception):
    pass


def build_request(host: str, port: int, model: str, stream: bool) -> bytes:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": 16, "stream": stream}, separators=(",", ":")).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
            f"Accept: */*\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


class Connection:
    """One keep-alive HTTP/1.1 connection; request() returns (status, t_first_event, t_end)."""

    def __init__(self, host: str, port: int, quickack: bool = False):
        self.addr = (host, port)
        self.sock = None
        self.reconnects = -1
        self.quickack = quickack

    def _connect(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = gsocket.create_connection(self.addr, timeout=30)  # a hung server: error
        self.sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        self.reconnects += 1

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, payload: bytes, stream: bool):
        if self.sock is None:
            self._connect()
        recv = self.sock.recv
        if self.quickack:  # ACK at once instead of delaying up to 40 ms; re-armed per recv
            sock = self.sock

            def recv(size, _recv=sock.recv, _set=sock.setsockopt):
                _set(gsocket.IPPROTO_TCP, gsocket.TCP_QUICKACK, 1)
                return _recv(size)
        self.sock.sendall(payload)
        buf = b""
        t_first = None
        # headers
        while True:
            data = recv(65536)
            if not data:
                raise HTTPError("connection closed before the headers")
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
        head = buf[:end].decode("latin-1").lower()
        status = int(head[9:12])
        body = buf[end + 4:]
        if stream and t_first is None and b"data:" in body:
            t_first = time.perf_counter()
        chunked = "transfer-encoding: chunked" in head
        close = "connection: close" in head
        length = None
        if not chunked:
            i = head.find("content-length:")
            if i < 0:
                raise HTTPError(f"no length in response headers: {head!r}")
            j = head.find("\r\n", i)
            length = int(head[i + 15:j if j >= 0 else None])
        if chunked:
            pieces, pos = [], 0
            while True:
                # decode every complete chunk buffered so far
                done = False
                while True:
                    eol = body.find(b"\r\n", pos)
                    if eol < 0:
                        break
                    size = int(body[pos:eol].split(b";", 1)[0], 16)
                    if size == 0:
                        done = len(body) >= eol + 4  # "0\r\n\r\n": no trailers here
                        break
                    if len(body) < eol + 2 + size + 2:
                        break
                    pieces.append(body[eol + 2:eol + 2 + size])
                    pos = eol + 2 + size + 2
                if done:
                    break
                data = recv(65536)
                if not data:
                    raise HTTPError("connection closed inside a chunked body")
                body += data
                if stream and t_first is None and b"data:" in data:
                    t_first = time.perf_counter()
            content = b"".join(pieces)
        else:
            while len(body) < length:
                data = recv(65536)
                if not data:
                    raise HTTPError("connection closed inside the body")
                body += data
                if stream and t_first is None and b"data:" in data:
                    t_first = time.perf_counter()
            content = body[:length]
        t_end = time.perf_counter()
        if close:
            self.close()
        return status, t_first, t_end, content


def check_content(status: int, content: bytes, stream: bool) -> str | None:
    """None if the answer is a good chat completion, else why not."""
    if status != 200:
        return f"HTTP {status}: {content[:300]!r}"
    if stream:
        if b"data: [DONE]" not in content or b'"delta"' not in content:
            return f"incomplete stream: {content[-300:]!r}"
        if b'"error"' in content:
            return f"error event: {content[-300:]!r}"
    elif b'"choices"' not in content or b'"content"' not in content:
        return f"not a completion: {content[:300]!r}"
    return None


def run_pass(conns, payload: bytes, stream: bool, n: int) -> dict:
    """n requests over the given connections in a closed loop; per-request samples."""
    remaining = [n]
    latencies, ttfbs, errors = [], [], []

    def worker(conn):
        while remaining[0] > 0:
            remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                status, t_first, t_end, content = conn.request(payload, stream)
            except (OSError, HTTPError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                continue
            problem = check_content(status, content, stream)
            if problem:
                errors.append(problem)
                continue
            latencies.append(t_end - t0)
            if stream:
                ttfbs.append((t_first if t_first is not None else t_end) - t0)

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker, c) for c in conns], raise_error=True)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "latency_s": latencies, "ttfb_s": ttfbs, "errors": errors}


# -- statistics -------------------------------------------------------------------------------

def percentile(values, q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarise(samples: list[float]) -> dict:
    ms = [v * 1000 for v in samples]
    return {"n": len(ms), "mean_ms": sum(ms) / len(ms) if ms else None,
            **{f"p{q}_ms": percentile(ms, q) for q in (50, 90, 99, 99.9)},
            "max_ms": max(ms) if ms else None,
            f"over_{int(STALL_MS)}ms": sum(1 for v in ms if v > STALL_MS)}


# -- the run ----------------------------------------------------------------------------------

def git_commit() -> str:
    """The commit measured: HEAD, plus "+dirty" if the served code is edited."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "inferegator", "plugins"], capture_output=True,
                               text=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def smoke(url: str, model: str) -> None:
    """One JSON and one streamed request with `requests`, to fail early with a clear message."""
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}
    r = requests.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    if r.status_code != 200 or not r.json()["choices"][0]["message"]["content"]:
        raise RuntimeError(f"{url}: JSON smoke request failed: {r.status_code} {r.text[:500]}")
    r = requests.post(url + "/v1/chat/completions", json={**body, "stream": True},
                      headers=headers, timeout=30)
    if r.status_code != 200 or "data: [DONE]" not in r.text:
        raise RuntimeError(f"{url}: stream smoke request failed: {r.status_code} {r.text[:500]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n1", type=int, default=500, help="measured requests per pass at c=1")
    ap.add_argument("-n32", type=int, default=2000, help="measured requests per pass at c=32")
    ap.add_argument("--concurrency", default="1,32", help="comma-separated (default 1,32)")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up requests per pass")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds; samples are pooled (default 3)")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--quickack", action="store_true",
                    help="client sets TCP_QUICKACK before every recv (no delayed ACKs), to "
                         "see a server's figures without Nagle/delayed-ACK stalls")
    ap.add_argument("--router-python", default=None,
                    help="Python that has sglang_router installed (default: this one, else "
                         "the repository's .venv)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; known: {', '.join(TARGETS)}")
    if "direct" not in targets:
        targets.insert(0, "direct")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    counts = {c: (args.n1 if c == 1 else args.n32) for c in concurrencies}

    started_at = datetime.datetime.now(datetime.timezone.utc)
    servers = []
    config_dir = tempfile.mkdtemp(prefix="inferegator-bench-")
    record = {"started": started_at.isoformat(timespec="seconds"), "commit": git_commit(),
              "command": " ".join([".venv/bin/python", "bench/gateway_overhead.py",
                                   *sys.argv[1:]]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "settings": {"concurrency": concurrencies, "requests": counts,
                           "warmup": args.warmup, "rounds": args.rounds,
                           "client_quickack": args.quickack,
                           "max_tokens": 16, "prompt": PROMPT},
              "passes": [], "logs": {}}
    conns_by_key = {}
    try:
        sim = Simulator("--instant", "--log-level", "warning", model=SIM_MODEL)
        servers.append(("simulator", sim))
        urls = {"direct": (sim.url, SIM_MODEL)}
        meters = {"direct": CpuMeter(sim.proc.pid)}
        storage = f"sqlite:///{config_dir}/bench.db"
        for target, console in (("inferegator", True), ("inferegator-noconsole", False)):
            if target in targets:
                global KEY
                KEY = KEY or provision_key(storage)
                gw = GatewayServer(config_dir, gateway_yaml(sim.url, storage, console=console),
                                   "--workers", "1")
                servers.append((target, gw))
                urls[target] = (gw.url, PUBLIC_MODEL)
                meters[target] = CpuMeter(gw.proc.pid)
        if "sglang-router" in targets:
            router, router_url = start_router(sim.url, router_python(args.router_python))
            servers.append(("sglang-router", router))
            urls["sglang-router"] = (router_url, SIM_MODEL)
            meters["sglang-router"] = CpuMeter(router.proc.pid)
        for t in targets:
            smoke(*urls[t])
        sim_meter = CpuMeter(sim.proc.pid)
        print(f"# simulator {sim.url}; " + "; ".join(f"{t} {urls[t][0]}" for t in targets),
              file=sys.stderr)

        for rnd in range(args.rounds):
            for c in concurrencies:
                for mode in MODES:
                    stream = mode == "stream"
                    order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                    for t in order:
                        url, model = urls[t]
                        host, port = url.split("//")[1].rsplit(":", 1)
                        payload = build_request(host, int(port), model, stream)
                        key = (t, c)
                        if key not in conns_by_key:
                            conns_by_key[key] = [Connection(host, int(port), args.quickack)
                                                  for _ in range(c)]
                        conns = conns_by_key[key]
                        warm = run_pass(conns, payload, stream, max(args.warmup, c))
                        if warm["errors"]:
                            raise RuntimeError(f"{t} c={c} {mode} warm-up errors: "
                                               f"{warm['errors'][:3]}")
                        meter = meters[t]
                        meter.start()
                        sim_meter.start()
                        m0 = machine_ticks()
                        own0 = os.times()
                        result = run_pass(conns, payload, stream, counts[c])
                        own1 = os.times()
                        m1 = machine_ticks()
                        cpu = meter.stop()
                        sim_cpu = sim_meter.stop()
                        p = {"round": rnd, "target": t, "concurrency": c, "mode": mode,
                             "requests": counts[c], "ok": len(result["latency_s"]),
                             "errors": len(result["errors"]),
                             "error_samples": result["errors"][:5],
                             "wall_s": result["wall_s"],
                             "rps": len(result["latency_s"]) / result["wall_s"],
                             "server_cpu_s": cpu["cpu_s"],
                             "server_processes": cpu["processes"],
                             "server_processes_exited": cpu["exited"],
                             "sim_cpu_s": sim_cpu["cpu_s"],
                             "client_cpu_s": (own1.user + own1.system)
                             - (own0.user + own0.system),
                             "machine_busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
                             "latency_s": result["latency_s"], "ttfb_s": result["ttfb_s"]}
                        record["passes"].append(p)
                        print(f"# round {rnd} {t:14} c={c:<3} {mode:6} "
                              f"{p['rps']:7.0f} req/s  p50 "
                              f"{percentile(result['latency_s'], 50) * 1000:6.2f} ms  "
                              f"errors {p['errors']}", file=sys.stderr)
        for name, server in servers:
            record["logs"][name] = server.output()[-4000:]
    finally:
        stop_all(servers, conns_by_key)
        shutil.rmtree(config_dir, ignore_errors=True)

    summary = summarise_record(record, targets, concurrencies)
    record["summary"] = summary
    table = markdown_table(summary, targets, concurrencies)
    print(table)
    out = args.out or OUT_DIR / (f"gateway_overhead-{started_at:%Y%m%dT%H%M%SZ}"
                                f"{'-quickack' if args.quickack else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"\nfull record: {out}", file=sys.stderr)
    return 1 if any(p["errors"] for p in record["passes"]) else 0


def summarise_record(record, targets, concurrencies) -> list[dict]:
    rows = []
    for c in concurrencies:
        for mode in MODES:
            base = None
            for t in targets:
                passes = [p for p in record["passes"]
                          if p["target"] == t and p["concurrency"] == c and p["mode"] == mode]
                lat = [v for p in passes for v in p["latency_s"]]
                ttfb = [v for p in passes for v in p["ttfb_s"]]
                ok = sum(p["ok"] for p in passes)
                row = {"target": t, "concurrency": c, "mode": mode, "ok": ok,
                       "errors": sum(p["errors"] for p in passes),
                       "rps": ok / sum(p["wall_s"] for p in passes),
                       "rps_per_round": [round(p["rps"], 1) for p in passes],
                       "latency": summarise(lat),
                       "ttfb": summarise(ttfb) if ttfb else None,
                       "server_cpu_us_per_req": 1e6 * sum(p["server_cpu_s"] for p in passes)
                       / max(1, ok),
                       "sim_cpu_us_per_req": 1e6 * sum(p["sim_cpu_s"] for p in passes)
                       / max(1, ok),
                       "client_cpu_us_per_req": 1e6 * sum(p["client_cpu_s"] for p in passes)
                       / max(1, ok),
                       "machine_busy": sum(p["machine_busy"] for p in passes) / len(passes)}
                if t == "direct":
                    base = row
                else:
                    for part in ("latency", "ttfb"):
                        if row[part] is None:
                            continue
                        for q in ("p50", "p99"):
                            v, b = row[part][f"{q}_ms"], base[part][f"{q}_ms"]
                            row[part][f"added_{q}_ms"] = v - b
                            row[part][f"ratio_{q}"] = v / b
                rows.append(row)
    return rows


def _f(v, digits=2):
    return "–" if v is None else f"{v:,.{digits}f}"


def markdown_table(rows, targets, concurrencies) -> str:
    lines = [
        "| mode | c | target | req/s | P50 ms | P99 ms | added P50 ms | added P99 ms "
        "| × direct P50 / P99 | proxy CPU µs/req | sim CPU µs/req | client CPU µs/req "
        "| machine busy | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def add(row, part, label):
        s = row[part]
        direct = row["target"] == "direct"
        lines.append(
            f"| {label} | {row['concurrency']} | {row['target']} | {_f(row['rps'], 0)} "
            f"| {_f(s['p50_ms'])} | {_f(s['p99_ms'])} "
            f"| {'–' if direct else _f(s['added_p50_ms'])} "
            f"| {'–' if direct else _f(s['added_p99_ms'])} "
            f"| {'–' if direct else _f(s['ratio_p50'], 1) + ' / ' + _f(s['ratio_p99'], 1)} "
            f"| {'–' if direct else _f(row['server_cpu_us_per_req'], 0)} "
            f"| {_f(row['sim_cpu_us_per_req'], 0)} | {_f(row['client_cpu_us_per_req'], 0)} "
            f"| {row['machine_busy']:.0%} | {row['errors']} |")

    for row in rows:
        if row["mode"] == "json":
            add(row, "latency", "JSON")
    for row in rows:
        if row["mode"] == "stream":
            add(row, "ttfb", "stream TTFB")
    for row in rows:
        if row["mode"] == "stream":
            add(row, "latency", "stream total")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
