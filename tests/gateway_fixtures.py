"""Fixtures for gateway tests: simulators as backends and a gateway serving them.

Keys live in the gateway's store: before a gateway starts, the test process opens the
same database, creates a user and a key, and hands the key out as ``gateway.key``.
"""

import itertools
import os

import openai
import pytest

from inferegator.store.store import Store
from tests.support.processes import GatewayServer

MODEL = "acme/sim-chat"
_databases = itertools.count()


# Limits high enough that tests about something else never meet them.
UNLIMITED = {"requests_per_minute": 10 ** 9, "tokens_per_minute": 10 ** 12}


# What the simulator's chat model can do (issue 13's capabilities), declared by test models.
SIM_CAPABILITIES = ("chat", "completions", "streaming", "tools", "json_mode",
                    "structured_outputs", "regex", "ebnf", "logprobs", "reasoning")


def gateway_yaml(sims, *, model=MODEL, fallbacks=(), extra="", backend_extra="", server=(),
                 ratelimit=None, capabilities=SIM_CAPABILITIES, model_extra=()):
    """A config serving `model` from the given simulators (primaries, then fallbacks);
    ``model_extra``: more settings of the model (YAML lines such as "context_length: 4096")."""
    limits = {**UNLIMITED, **(ratelimit or {})}
    lines = ["server:", "  health_check_interval_s: 0.5", *(f"  {s}" for s in server),
             "ratelimit:", *(f"  {k}: {v}" for k, v in limits.items()),
             "models:", f"  - id: {model}", "    owned_by: acme",
             "    pricing: {prompt: 1.0, completion: 2.0, cached_prompt: 0.5}",
             f"    capabilities: [{', '.join(capabilities)}]",
             *(f"    {line}" for line in model_extra), "    backends:"]
    for role, group in (("primary", sims), ("fallback", fallbacks)):
        for sim in group:
            lines.append(f"      - {{type: sglang, url: '{sim.url}', model: sim-model, "
                         f"role: {role}{backend_extra}}}")
    return "\n".join(lines) + "\n" + extra


def provision(storage_url: str, email="dev@example.com", role="user", **limits):
    """A user (created if new) and a fresh key for it in the store at storage_url."""
    store = Store(storage_url)
    try:
        users = {u["email"]: u for u in store.accounts.list_users()}
        user = users.get(email) or store.accounts.create_user(email, "correct horse battery",
                                                              role=role)
        key, record = store.accounts.create_key(user["id"], "test", **limits)
        return key, record
    finally:
        store.db.close()


def launch_gateway(config_dir, yaml_text: str, *flags, storage=None, env=None):
    """Start a gateway whose store has a key for it; sets .key, .storage and .key_id."""
    if "storage:" not in yaml_text:
        storage = storage or "sqlite:///" + os.path.join(str(config_dir),
                                                         f"store-{next(_databases)}.db")
        yaml_text = f"storage: '{storage}'\n" + yaml_text
    key, record = provision(storage)
    server = GatewayServer(config_dir, yaml_text, *flags, env=env)
    server.key, server.key_id, server.storage = key, record["id"], storage
    return server


@pytest.fixture
def start_gateway(tmp_path):
    started = []

    def start(yaml_text, *flags, storage=None, env=None):
        server = launch_gateway(tmp_path, yaml_text, *flags, storage=storage, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def sdk(gateway, key=None, **kwargs):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key or gateway.key,
                         max_retries=0, **kwargs)


@pytest.fixture(scope="module")
def instant_gateway(tmp_path_factory):
    """One gateway for a module, in front of its own instant simulator."""
    from tests.support.processes import Simulator

    sim = Simulator("--instant")
    server = launch_gateway(tmp_path_factory.mktemp("gw"), gateway_yaml([sim]))
    yield server
    server.stop()
    sim.stop()
