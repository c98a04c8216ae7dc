#!/usr/bin/env python3
"""HTTP throughput of the simulator: `inferegator sim --instant` driven by wrk.

What it measures: how many chat completions per second one simulator process
(one gunicorn gevent worker) answers when the simulated model costs nothing
(--instant: no prefill or decode delays). That is the simulator's own ceiling:
HTTP parsing, JSON/SSE rendering, the engine's bookkeeping and the prefix cache.
Any benchmark that puts the simulator behind something else (the gateway) can
only be trusted well below this rate.

Steps:
  1. pick a free TCP port and start `inferegator sim --instant --port P --model bench-model`;
  2. poll GET /health until it answers 200 (no fixed sleeps);
  3. send one request per mode with `requests` and check the answer's shape;
  4. for each connection count and mode (JSON, then "stream": true), run
     `wrk -t T -c C -d D --latency -s bench/wrk_chat.lua`, the body passed in
     the WRK_CHAT_BODY environment variable;
  5. parse wrk's report (Requests/sec, latency percentiles, errors), print a
     markdown table and write everything as JSON under bench/out/;
  6. stop the simulator (SIGTERM, then wait).

Any non-2xx answer or socket error in a wrk run makes the script exit 1.

Latency: at saturation wrk's percentiles include its coordinated-omission
correction (synthetic samples), so the table also gives the closed-loop mean,
connections / requests per second; bench/README.md explains.

Usage (from the repository root):
  .venv/bin/python bench/sim_throughput.py                    # 32 connections, 10 s a pass
  .venv/bin/python bench/sim_throughput.py -c 32 -c 1 -d 10   # two connection counts

Needs wrk on PATH (or --wrk) and the `inferegator` command (the one next to
this Python, else the one on PATH, else --inferegator).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "wrk_chat.lua"
OUT_DIR = BENCH_DIR / "out"
MODEL = "bench-model"
PROMPT = "Summarise in one sentence why a prefix cache helps a chat service."
MODES = ("json", "stream")
PERCENTILES = ("50", "75", "90", "99")

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


# -- the simulator --------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_inferegator(explicit: str | None) -> list[str]:
    """The command that runs `inferegator` (a command line may be given, e.g. python -m ...)."""
    if explicit:
        return shlex.split(explicit)
    beside = Path(sys.executable).with_name("inferegator")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("inferegator")
    if not found:
        sys.exit("sim_throughput: cannot find the `inferegator` command; pass --inferegator")
    return [found]


def git_state() -> dict:
    """The commit measured and whether inferegator/ had uncommitted changes."""
    def git(*args):
        done = subprocess.run(["git", "-C", str(BENCH_DIR.parent), *args],
                              check=False, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    changed = git("status", "--porcelain", "--", "inferegator")
    return {"commit": git("rev-parse", "HEAD"),
            "inferegator_changes": changed.splitlines() if changed else []}


def start_simulator(command: list[str], log):
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def wait_ready(proc, base_url: str, timeout_s: float) -> float:
    """Poll GET /health until 200; returns the seconds it took. Fails if the process exits."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited with status {proc.returncode} "
                               "before it was ready")
        try:
            if requests.get(base_url + "/health", timeout=1).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"the simulator was not ready after {timeout_s} s")
        time.sleep(0.05)  # poll interval, not a guess at the start-up time


def stop_simulator(proc, timeout_s: float = 15.0) -> int:
    """SIGTERM, then wait for the exit (SIGKILL only if it ignores SIGTERM)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"sim_throughput: simulator ignored SIGTERM for {timeout_s} s; killing it",
                  file=sys.stderr)
            proc.kill()
            proc.wait()
    return proc.returncode


# -- requests -------------------------------------------------------------------------------

def chat_body(stream: bool, max_tokens: int) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


def check_answers(base_url: str, max_tokens: int) -> None:
    """One request per mode, so that a broken answer fails loudly before any timing."""
    url = base_url + "/v1/chat/completions"
    resp = requests.post(url, data=chat_body(False, max_tokens),
                         headers={"Content-Type": "application/json"}, timeout=10)
    resp.raise_for_status()
    answer = resp.json()
    if answer.get("object") != "chat.completion" or not answer["choices"][0]["message"]["content"]:
        raise RuntimeError(f"unexpected JSON answer: {answer}")
    resp = requests.post(url, data=chat_body(True, max_tokens),
                         headers={"Content-Type": "application/json"}, timeout=10)
    resp.raise_for_status()
    if not resp.headers.get("Content-Type", "").startswith("text/event-stream") \
            or not resp.text.rstrip().endswith("data: [DONE]"):
        raise RuntimeError(f"unexpected stream answer: {resp.text[:500]!r}")


# -- wrk ------------------------------------------------------------------------------------

def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], check=False, capture_output=True,
                         text=True).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def run_wrk(wrk: str, url: str, body: str, threads: int, connections: int,
            duration_s: int) -> tuple[str, dict]:
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
               "-s", str(LUA_SCRIPT), url]
    env = {**os.environ, "WRK_CHAT_BODY": body}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env,
                          timeout=duration_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout, parse_wrk(done.stdout)


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not match:
        raise ValueError(f"unexpected wrk duration {value!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(text: str) -> dict:
    """The figures of one wrk --latency report (latencies in milliseconds)."""
    def need(pattern):
        match = re.search(pattern, text, re.MULTILINE)
        if not match:
            raise ValueError(f"wrk report has no match for {pattern!r}:\n{text}")
        return match

    result = {"requests_per_s": float(need(r"^Requests/sec:\s+([\d.]+)").group(1))}
    total = need(r"^\s*(\d+) requests in ([\d.]+\w+),")
    result["requests"] = int(total.group(1))
    result["elapsed_s"] = _ms(total.group(2)) / 1000.0
    latency = need(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)")
    result["latency_avg_ms"] = _ms(latency.group(1))
    result["latency_stdev_ms"] = _ms(latency.group(2))
    result["latency_max_ms"] = _ms(latency.group(3))
    for p in PERCENTILES:
        result[f"latency_p{p}_ms"] = _ms(need(rf"^\s*{p}%\s+(\S+)").group(1))
    non_2xx = re.search(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", text, re.MULTILINE)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    result["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                       map(int, errors.groups()))) if errors else {}
    return result


# -- report ---------------------------------------------------------------------------------

def markdown_table(runs: list[dict]) -> str:
    lines = [("| mode | connections | requests/s | mean ms (c / rps) | P50 ms | P75 ms | P90 ms "
              "| P99 ms | requests | non-2xx | socket errors |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        r = run["result"]
        lines.append(
            f"| {run['mode']} | {run['connections']} | {r['requests_per_s']:,.0f} "
            f"| {r['closed_loop_mean_ms']:.2f} "
            + "".join(f"| {r[f'latency_p{p}_ms']:.2f} " for p in PERCENTILES)
            + f"| {r['requests']:,} | {r['non_2xx']} | {sum(r['socket_errors'].values())} |")
    return "\n".join(lines)


def run_passes(args, base_url: str, connections: list[int], modes: list[str]) -> list[dict]:
    """One wrk pass per (connection count, mode), in that order."""
    runs = []
    for conns in connections:
        for mode in modes:
            threads = min(args.threads, conns)
            print(f"wrk: {mode}, {conns} connections, {threads} threads, {args.duration} s ...",
                  file=sys.stderr)
            raw, result = run_wrk(args.wrk, base_url + "/v1/chat/completions",
                                  chat_body(mode == "stream", args.max_tokens),
                                  threads, conns, args.duration)
            # wrk's closed loop keeps every connection busy, so by Little's law the true
            # mean latency is connections / throughput (wrk's own mean and percentiles
            # include its coordinated-omission correction; see bench/README.md).
            result["closed_loop_mean_ms"] = round(conns * 1000.0 / result["requests_per_s"], 3)
            runs.append({"mode": mode, "connections": conns, "threads": threads,
                         "duration_s": args.duration, "result": result, "wrk_output": raw})
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--duration", type=int, default=10,
                        help="seconds per wrk pass (default: 10)")
    parser.add_argument("-c", "--connections", type=int, action="append",
                        help="wrk connections; repeat for several passes (default: 32)")
    parser.add_argument("-t", "--threads", type=int, default=2,
                        help="wrk threads, capped at the connection count (default: 2)")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="max_tokens of each request (default: 16)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated passes to run: json, stream (default: both)")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="wrk binary")
    parser.add_argument("--inferegator",
                        help="command that runs inferegator, e.g. 'python -m inferegator.cli' "
                             "(default: the one beside this Python, else on PATH)")
    parser.add_argument("--sim-args", default="",
                        help="extra flags for `inferegator sim`, one string "
                             "(e.g. '--max-running-requests 8')")
    parser.add_argument("--ready-timeout", type=float, default=30.0,
                        help="seconds to wait for /health (default: 30)")
    parser.add_argument("--out", type=Path, help="JSON file to write (default: bench/out/...)")
    args = parser.parse_args(argv)
    connections = args.connections or [32]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes a comma-separated subset of {', '.join(MODES)}")

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    sim_command = [*find_inferegator(args.inferegator), "sim", "--instant", "--port", str(port),
                   "--model", MODEL, *shlex.split(args.sim_args)]
    started_at = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryFile(mode="w+") as sim_log:
        proc = start_simulator(sim_command, sim_log)
        try:
            ready_s = wait_ready(proc, base_url, args.ready_timeout)
            print(f"simulator ready on port {port} after {ready_s:.2f} s", file=sys.stderr)
            check_answers(base_url, args.max_tokens)
            runs = run_passes(args, base_url, connections, modes)
        except Exception:
            sim_log.seek(0)
            tail = sim_log.read()[-4000:]
            if tail:
                print("--- simulator output ---\n" + tail, file=sys.stderr)
            raise
        finally:
            exit_status = stop_simulator(proc)
    failures = [f"{run['mode']} at {run['connections']} connections: "
                f"{run['result']['non_2xx']} non-2xx, "
                f"socket errors {run['result']['socket_errors']}"
                for run in runs
                if run["result"]["non_2xx"] or any(run["result"]["socket_errors"].values())]

    report = {
        "benchmark": "sim_throughput",
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "wrk": wrk_version(args.wrk),
        "git": git_state(),
        "simulator_command": sim_command,
        "simulator_exit_status": exit_status,
        "request": {"model": MODEL, "prompt": PROMPT, "max_tokens": args.max_tokens},
        "runs": runs,
        "failures": failures,
    }
    out = args.out or OUT_DIR / f"sim_throughput-{started_at:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(markdown_table(runs))
    print(f"\nwrote {out}", file=sys.stderr)
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
