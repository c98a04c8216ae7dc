"""Fixtures for gateway tests: simulators as backends and a gateway serving them."""

import openai
import pytest

from tests.support.processes import GatewayServer

KEY = "sk-inf-test-key-0123456789abcdef0123456789abcdef"
MODEL = "acme/sim-chat"


def gateway_yaml(sims, *, model=MODEL, fallbacks=(), extra="", backend_extra="", server=()):
    """A config serving `model` from the given simulators (primaries, then fallbacks)."""
    lines = ["server:", "  health_check_interval_s: 0.5", *(f"  {s}" for s in server),
             "auth:", f"  keys: [{KEY}]",
             "models:", f"  - id: {model}", "    owned_by: acme",
             "    pricing: {prompt: 1.0, completion: 2.0, cached_prompt: 0.5}",
             "    capabilities: [chat, completions, streaming]", "    backends:"]
    for role, group in (("primary", sims), ("fallback", fallbacks)):
        for sim in group:
            lines.append(f"      - {{type: sglang, url: '{sim.url}', model: sim-model, "
                         f"role: {role}{backend_extra}}}")
    return "\n".join(lines) + "\n" + extra


@pytest.fixture
def start_gateway(tmp_path):
    started = []

    def start(yaml_text, *flags, env=None):
        server = GatewayServer(tmp_path, yaml_text, *flags, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def sdk(gateway, key=KEY, **kwargs):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, **kwargs)
