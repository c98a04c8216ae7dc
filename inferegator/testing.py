"""Pytest fixtures for plugin authors: a real simulator and in-process gateways in front of it.

Installed as a pytest plugin (entry point ``pytest11``, name ``inferegator``), so any project
with inferegator installed gets, without a conftest.py:

- ``simulator`` (session): a real ``inferegator sim --instant`` process on a free port,
  serving the model ``sim-model``; ``.url``. Stopped after the session.
- ``make_gateway`` (per test): ``make_gateway(yaml_extra="", *, plugins=(), settings=None,
  models=None, entry_points=True)`` builds a gateway in-process (``build_gateway``, the
  same composition root ``inferegator serve`` runs in each worker) on a fresh SQLite store
  under ``tmp_path`` and returns a TestGateway; every one is closed after the test.

A gateway serves one model, ``acme/sim-chat``, from the simulator unless ``models`` (the
YAML's ``models:`` list as Python data) says otherwise. ``settings`` is the ``plugins:``
section (plugin name -> its settings); ``yaml_extra`` is more top-level YAML
(``ratelimit:``, ``auth:`` ...). Invalid settings raise ConfigError from make_gateway.
See docs/plugins.md. Opt out with ``pytest -p no:inferegator``.
"""

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import namedtuple

import pytest

from . import hookimpl
from .config import ConfigError

__all__ = ["MODEL", "SIM_MODEL", "ConfigError", "Simulator", "TestGateway", "Upstream",
           "make_gateway", "simulator"]

MODEL = "acme/sim-chat"  # the public model id a TestGateway serves by default
SIM_MODEL = "sim-model"  # the model the simulator serves
PASSWORD = "correct horse battery"

Upstream = namedtuple("Upstream", "backend body headers")  # one backend call, as sent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Simulator:
    """A running ``inferegator sim`` on a free port, ready once its /health answers 200."""

    def __init__(self, *flags, model: str = SIM_MODEL, ready_timeout: float = 30.0):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model
        self.log = tempfile.NamedTemporaryFile(prefix="inferegator-sim-", suffix=".log")
        argv = [sys.executable, "-m", "inferegator.cli", "sim", "--port", str(self.port),
                "--model", model, *map(str, flags)]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"inferegator sim exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.02)  # the probe's poll interval, not a wait for readiness
        raise TimeoutError(f"inferegator sim not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class _UpstreamRecorder:
    """Records each backend call as sent, after every plugin edited it (a hook wrapper)."""

    def __init__(self, calls: list):
        self.calls = calls

    @hookimpl(wrapper=True)
    def inferegator_before_upstream(self, backend, body, headers):
        result = yield
        self.calls.append(Upstream(backend, dict(body), dict(headers)))
        return result


class TestGateway:
    """A gateway built in-process, its falcon TestClient and helpers to call it.

    ``.gateway`` (the Gateway: ``.config``, ``.store``, ``.catalog``, ``.plugin_state``),
    ``.client`` (falcon.testing.TestClient), ``.model`` (the default model id) and
    ``.upstream`` (each backend call: ``Upstream(backend, body, headers)`` as sent).
    """

    __test__ = False  # not a test class, though its name starts with Test

    def __init__(self, gateway, upstream: list):
        import falcon.testing

        self.gateway = gateway
        self.client = falcon.testing.TestClient(gateway.app)
        self.model = next(iter(gateway.catalog.models), None)
        self.upstream = upstream
        self._emails = itertools.count(1)

    def user(self, email: str | None = None, role: str = "user", **limits):
        """(secret, key record): a new key for the user ``email`` (created when new; by
        default a new user each call). ``limits``: requests_per_minute, tokens_per_minute,
        monthly_budget_usd, allowed_models."""
        accounts = self.gateway.store.accounts
        email = email or f"user{next(self._emails)}@example.com"
        known = {u["email"]: u for u in accounts.list_users()}
        user = known.get(email) or accounts.create_user(email, PASSWORD, role=role)
        return accounts.create_key(user["id"], "test", **limits)

    @staticmethod
    def _headers(key, headers):
        given = dict(headers or {})
        if key is not None:
            given.setdefault("Authorization", f"Bearer {key}")
        return given

    def get(self, path: str, key: str | None = None, headers: dict | None = None):
        return self.client.simulate_get(path, headers=self._headers(key, headers))

    def post(self, path: str, json=None, key: str | None = None, headers: dict | None = None):
        return self.client.simulate_post(path, json=json, headers=self._headers(key, headers))

    def chat(self, key: str | None, content: str = "hi", headers: dict | None = None, **body):
        """POST /v1/chat/completions for the default model; ``body`` adds or overrides
        fields (model, max_tokens, stream ...). Returns falcon's Result (.status_code,
        .json, .headers, .text)."""
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                **body}
        return self.post("/v1/chat/completions", json=body, key=key, headers=headers)

    def ledger(self) -> list[dict]:
        """Every usage-ledger row, oldest first, after writing the queued ones."""
        self.gateway.store.ledger.flush()
        return self.gateway.store.db.query("SELECT * FROM usage_ledger ORDER BY id")

    def close(self) -> None:
        self.gateway.close()


def default_models(url: str) -> list[dict]:
    """The ``models:`` a TestGateway serves unless told otherwise: MODEL from ``url``."""
    return [{"id": MODEL, "owned_by": "acme",
             "pricing": {"prompt": 1.0, "completion": 2.0, "cached_prompt": 0.5},
             "backends": [{"type": "sglang", "url": url, "model": SIM_MODEL}]}]


def _installed(plugin) -> bool:
    """Whether ``plugin`` (a module) is also loaded by an ``inferegator`` entry point."""
    from importlib.metadata import entry_points

    name = getattr(plugin, "__name__", None)
    return name is not None and any(point.module == name and not point.attr
                                    for point in entry_points(group="inferegator"))


def build_test_gateway(directory, sim_url: str, yaml_extra: str = "", *, plugins=(),
                       settings: dict | None = None, models: list | None = None,
                       entry_points: bool = True) -> TestGateway:
    """A TestGateway whose SQLite store and config file live in ``directory``."""
    import yaml

    from .config import parse_config
    from .factory import build_gateway
    from .store.store import Store

    sections = {"storage": f"sqlite:///{os.path.join(str(directory), 'store.db')}",
                "models": default_models(sim_url) if models is None else models}
    if settings is not None:
        sections["plugins"] = settings
    text = yaml.safe_dump(sections, sort_keys=False) + yaml_extra
    path = os.path.join(str(directory), "inferegator.yaml")
    with open(path, "w") as f:
        f.write(text)
    config = parse_config(text, path=path)
    calls = []
    recorder = _UpstreamRecorder(calls)
    # A module installed by entry point is loaded that way already; register it once.
    given = [p for p in plugins if not (entry_points and _installed(p))]
    store = Store(config.storage, ledger_flush_interval_s=config.server.ledger_flush_interval_s,
                  ledger_journal=config.ledger_journal)
    try:
        gateway = build_gateway(config, store=store, plugins=[*given, recorder],
                                entry_points=entry_points)
    except BaseException:
        store.close()
        raise
    return TestGateway(gateway, calls)


@pytest.fixture(scope="session")
def simulator():
    """A real ``inferegator sim --instant`` (model ``sim-model``) for the whole session."""
    server = Simulator("--instant")
    yield server
    server.stop()


@pytest.fixture
def make_gateway(simulator, tmp_path):
    """``make_gateway(yaml_extra="", *, plugins=(), settings=None, models=None,
    entry_points=True)`` -> a TestGateway in front of ``simulator``, closed after the test.

    ``plugins``: modules or objects registered in code (a module also installed by entry
    point is registered once); ``settings``: the ``plugins:`` section, {name: settings};
    ``models``: the ``models:`` section (default: ``acme/sim-chat`` from the simulator);
    ``yaml_extra``: more top-level YAML; ``entry_points=False`` loads no installed plugin.
    """
    built = []

    def make(yaml_extra: str = "", *, plugins=(), settings: dict | None = None,
             models: list | None = None, entry_points: bool = True) -> TestGateway:
        directory = tmp_path / f"gateway-{len(built)}"
        directory.mkdir()
        gateway = build_test_gateway(directory, simulator.url, yaml_extra, plugins=plugins,
                                     settings=settings, models=models,
                                     entry_points=entry_points)
        built.append(gateway)
        return gateway

    yield make
    for gateway in built:
        gateway.close()
