"""Start and stop: SIGTERM lets streams finish and loses no ledger row, then stops runtimes;
runtimes never outlive a killed master; a runtime's exit is logged as it truly ended
(issue 15). A config error stopping serve before any worker starts is in
test_routing_policies.py (test_check_config_names_a_bad_routing_option)."""

import os
import re
import signal
import socket
import threading

import openai
import pytest
import requests

from inferegator.store.store import Store
from tests.gateway_fixtures import UNLIMITED
from tests.support.processes import free_port, wait_until, worker_pids

pytestmark = pytest.mark.slow


def runtime_config(storage, port, sim_flags="--instant"):
    limits = "".join(f"  {k}: {v}\n" for k, v in UNLIMITED.items())
    return (f"storage: '{storage}'\n"
            f"server: {{health_check_interval_s: 0.5, graceful_timeout_s: 30}}\n"
            f"ratelimit:\n{limits}"
            f"runtimes:\n  - {{name: sim-a, command: inferegator sim {sim_flags} --port {port}, "
            f"health: 'http://127.0.0.1:{port}/health'}}\n"
            f"models:\n  - id: acme/chat\n    capabilities: [chat, completions, streaming]\n"
            f"    backends: [{{type: sglang, url: 'http://127.0.0.1:{port}', "
            f"model: sim-model}}]\n")


def runtime_pid(gateway, name="sim-a"):
    found = re.findall(rf"runtime {name} started \(pid (\d+)\)", gateway.output())
    return int(found[-1]) if found else None


def alive(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def group_members(pgid):
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def answers(client):
    try:
        return client.chat.completions.create(model="acme/chat",
                                              messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4)
    except openai.APIStatusError:
        return None  # the runtime is not yet seen healthy


def test_sigterm_lets_streams_finish_writes_every_row_then_stops_runtimes(start_gateway,
                                                                       tmp_path):
    port = free_port()
    storage = f"sqlite:///{tmp_path}/stop.db"
    slow = "--decode-ms-per-token 40 --output-tokens-min 64"  # streams of a second or two
    gateway = start_gateway(runtime_config(storage, port, slow), "--log-level", "info",
                            storage=storage)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    wait_until(lambda: answers(client), timeout=30, interval=0.1)
    streams, first_chunks, results = 8, threading.Semaphore(0), []

    def stream():
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="acme/chat", messages=[{"role": "user", "content": "Tell me more."}],
                max_tokens=40, stream=True, stream_options={"include_usage": True})
            chunks = []
            for chunk in raw.parse():
                if not chunks:
                    first_chunks.release()
                chunks.append(chunk)
            results.append((raw.headers["x-request-id"], chunks))
        except Exception as exc:
            first_chunks.release()
            results.append((None, exc))

    threads = [threading.Thread(target=stream) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for _ in range(streams):
        assert first_chunks.acquire(timeout=30)
    os.kill(gateway.proc.pid, signal.SIGTERM)  # every stream has begun, none has ended
    for thread in threads:
        thread.join(timeout=60)
    assert gateway.proc.wait(timeout=60) == 0
    assert len(results) == streams
    for request_id, chunks in results:
        assert request_id is not None, chunks
        assert chunks[-1].usage.completion_tokens == 40  # each stream whole, to its end
    # every row written, before the runtime was stopped
    store = Store(storage)
    try:
        rows = store.db.query("SELECT request_id, status, completion_tokens FROM usage_ledger")
    finally:
        store.db.close()
    ended = {row["request_id"]: row for row in rows}
    for request_id, _ in results:
        assert ended[request_id]["status"] == "completed"
        assert ended[request_id]["completion_tokens"] == 40
    output = gateway.output()
    assert output.index("Worker exiting") < output.index("runtime sim-a stopped")
    assert not alive(runtime_pid(gateway))
    with pytest.raises(OSError):  # nobody listens any more
        socket.create_connection(("127.0.0.1", gateway.port), timeout=2).close()


def test_runtimes_never_outlive_a_killed_master_and_exits_are_logged_truly(start_gateway,
                                                                         tmp_path):
    port = free_port()
    storage = f"sqlite:///{tmp_path}/kill.db"
    gateway = start_gateway(runtime_config(storage, port), "--log-level", "info",
                            storage=storage)

    def healthy():
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
        except requests.RequestException:
            return False

    wait_until(healthy, timeout=30, interval=0.1)
    first = runtime_pid(gateway)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: "runtime sim-a exited with code -9 (SIGKILL)" in gateway.output(),
               timeout=15, interval=0.1)
    wait_until(lambda: runtime_pid(gateway) != first and healthy(), timeout=30, interval=0.1)
    runtime = runtime_pid(gateway)
    members = group_members(runtime)  # the simulator's gunicorn master and its worker
    assert runtime in members and len(members) >= 2
    workers = worker_pids(gateway.proc.pid)
    os.kill(gateway.proc.pid, signal.SIGKILL)  # nobody is left to stop the runtime
    gateway.proc.wait(timeout=10)
    wait_until(lambda: not any(alive(pid) for pid in members + workers), timeout=20,
               interval=0.1)
    assert not healthy()
