"""Start real server processes on free ports and wait for a real readiness signal."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import requests

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A child process serving HTTP; ready once ``ready_url`` answers 200."""

    def __init__(self, argv, ready_url, env=None, ready_timeout=30.0):
        self.argv = argv
        self.ready_url = ready_url
        self.log = tempfile.NamedTemporaryFile(prefix="inferegator-test-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})},
                                     start_new_session=True)
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv} exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            try:
                if requests.get(self.ready_url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)  # poll interval of the readiness probe, not a wait for readiness
        self.stop()
        raise TimeoutError(f"{self.argv} not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGINT is gunicorn's quick shutdown; tests of graceful stops send SIGTERM.
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
            os.unlink(self.log.name)


class Simulator(ServerProcess):
    """A running `inferegator sim` on a free port."""

    def __init__(self, *flags, model="sim-model", port=None, ready=True):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [os.path.join(BIN, "inferegator"), "sim", "--port", str(self.port),
                "--model", model, *map(str, flags)]
        if ready:
            super().__init__(argv, self.url + "/health")
        else:  # a slow starter: wait only until it listens
            ServerProcess.__init__(self, argv, self.url + "/v1/models")

    def load(self) -> dict:
        return requests.get(self.url + "/v1/loads", timeout=5).json()["loads"][0]

    def metric(self, name: str) -> float:
        for line in requests.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(f"sglang:{name}{{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


def worker_pids(master_pid: int) -> list[int]:
    """The live child processes of a gunicorn master (its workers), from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == master_pid and fields[0] != "Z":
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def wait_until(predicate, timeout: float, interval: float = 0.01):
    """Poll predicate() until it returns a truthy value; return it, or raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


class GatewayServer(ServerProcess):
    """A running `inferegator serve` on a free port, with the given YAML (bind is set here)."""

    def __init__(self, config_dir, yaml_text: str, *flags, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = os.path.join(str(config_dir), f"gateway-{self.port}.yaml")
        with open(self.config_path, "w") as f:
            f.write(yaml_text)
        argv = [os.path.join(BIN, "inferegator"), "serve", "--config", self.config_path,
                "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning", *flags]
        super().__init__(argv, self.url + "/health", env=env)
