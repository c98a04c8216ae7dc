"""Plugin order and switches, as docs/hooks.md describes them: a plugin given in code is
asked before the built-ins, a built-in is turned off in the YAML, `inferegator plugins`
lists the built-ins, a plugin's settings are checked with file and line, and a generation
request calls the hooks in the documented order.

Gateways are built in-process (factory.build_gateway, falcon's TestClient) over a SQLite
store in tmp_path; the CLI checks run the venv's `inferegator` with a plugin that an
entry point on PYTHONPATH registers (a dist-info folder: nothing is installed).
"""

import json
import os
import subprocess
import sys
import textwrap
import types

import falcon.testing
import pytest

from inferegator.config import ConfigError, load_config, parse_config
from inferegator.factory import (
    DEFAULT_PLUGINS,
    build_gateway,
    build_plugin_manager,
    declared_settings,
)
from inferegator.plugin import Principal, hookimpl, invalid_request, plugin_settings
from inferegator.store.store import Store
from tests.support.processes import free_port

CLI = os.path.join(os.path.dirname(sys.executable), "inferegator")
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]

# A third-party plugin with settings; its `threshold` is on line THRESHOLD_LINE of
# probe_yaml(). Written to a file for the CLI, run into a module object in-process.
PROBE_NAME = "order_probe"
PROBE_SOURCE = textwrap.dedent("""\
    from dataclasses import dataclass

    from inferegator.plugin import Int, Section, Setting, hookimpl


    @dataclass(frozen=True)
    class ProbeSettings:
        threshold: int = 3


    SETTINGS = Section(ProbeSettings, Setting("threshold", Int(min=1), "How many."))


    @hookimpl
    def inferegator_startup(gateway):
        gateway.plugin_state["order_probe"] = "started"
    """)
THRESHOLD_LINE = 6


def models_yaml(*urls: str) -> str:
    """One model, `m`, served by the simulator's `sim-model` at each url (none listening at
    the default: these tests mostly end before a backend is called)."""
    backends = ", ".join(f"{{type: sglang, url: '{url}', model: sim-model}}"
                         for url in urls or ("http://127.0.0.1:9",))
    return f"models:\n  - id: m\n    backends: [{backends}]\n"


def probe_yaml(threshold) -> str:
    return models_yaml() + f"plugins:\n  {PROBE_NAME}:\n    threshold: {threshold}\n"


def probe_module() -> types.ModuleType:
    module = types.ModuleType(PROBE_NAME)
    exec(compile(PROBE_SOURCE, f"{PROBE_NAME}.py", "exec"), module.__dict__)
    return module


@pytest.fixture
def gateway(tmp_path):
    """build(yaml, *plugins) -> a TestClient over an in-process gateway, with `.key` (an
    sk-inf- key of `.owner`) and `.gateway`; every gateway is closed after the test."""
    built = []

    def build(yaml_text: str, *plugins):
        config = parse_config(yaml_text, str(tmp_path / "conf.yaml"), {})
        store = Store(f"sqlite:///{tmp_path / f'store-{len(built)}.db'}")
        user = store.accounts.create_user("owner@example.com", "a long password")
        key, _ = store.accounts.create_key(user["id"], "test key")
        gw = build_gateway(config, store=store, plugins=plugins, entry_points=False)
        built.append(gw)
        client = falcon.testing.TestClient(gw.app)
        client.gateway, client.key, client.owner = gw, key, user["id"]
        return client

    yield build
    for gw in built:
        gw.close()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


class HeaderAuth:
    """A user's plugin, as an object: the caller is whoever X-Test-User names."""

    def __init__(self):
        self.finished = []

    @hookimpl
    def inferegator_authenticate(self, request):
        user = request.header("X-Test-User")
        return Principal(key_id=f"test:{user}", owner=user) if user else None

    @hookimpl
    def inferegator_request_finished(self, outcome):
        self.finished.append(outcome)


# ---------------------------------------------------------------- order and switches


def test_a_plugin_given_in_code_is_asked_before_the_builtin_key_auth(gateway):
    plugin = HeaderAuth()
    client = gateway(models_yaml(), plugin)
    body = {"model": "unknown", "messages": MESSAGES}  # 404 after authentication

    both = {**bearer(client.key), "X-Test-User": "alice"}
    assert client.simulate_post(CHAT, json=body, headers=both).status_code == 404
    assert client.simulate_post(CHAT, json=body, headers=bearer(client.key)).status_code == 404
    assert client.simulate_post(CHAT, json=body).status_code == 401
    # With both, the user's plugin answered and the key was never looked at; without the
    # header it said "not mine" and the built-in key lookup answered.
    assert [o.principal.owner if o.principal else None for o in plugin.finished] == [
        "alice", client.owner, None]
    assert client.simulate_get("/v1/models", headers={"X-Test-User": "bob"}).status_code == 200


def test_a_disabled_builtin_is_not_registered(gateway):
    enabled = gateway(models_yaml())
    assert enabled.simulate_get("/v1/models", headers=bearer(enabled.key)).status_code == 200

    disabled = gateway(models_yaml() + "plugins:\n  auth_api_keys: {enabled: false}\n")
    answer = disabled.simulate_get("/v1/models", headers=bearer(disabled.key))
    assert answer.status_code == 401 and answer.json["error"]["code"] == "invalid_api_key"
    assert disabled.gateway.pm.get_plugin("auth_api_keys") is None
    assert enabled.gateway.pm.get_plugin("auth_api_keys") is not None


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def entry_point_site(tmp_path):
    """A folder that, on PYTHONPATH, offers the probe plugin through the `inferegator`
    entry-point group, as an installed distribution would."""
    site = tmp_path / "site"
    info = site / "order_probe-0.1.dist-info"
    info.mkdir(parents=True)
    (site / f"{PROBE_NAME}.py").write_text(PROBE_SOURCE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: order-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[inferegator]\n{PROBE_NAME} = {PROBE_NAME}\n")
    return site


def run_cli(tmp_path, yaml_text: str, *args, site=None) -> subprocess.CompletedProcess:
    path = tmp_path / "cli.yaml"
    path.write_text(yaml_text)
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site),
                                                          env.get("PYTHONPATH")]))
    return subprocess.run([CLI, *args, "--config", str(path)], capture_output=True,
                          text=True, env=env, timeout=60)


def test_plugins_command_lists_the_builtins(tmp_path):
    done = run_cli(tmp_path, models_yaml(), "plugins")
    assert done.returncode == 0, done.stderr
    listed = {plugin["name"]: plugin for plugin in json.loads(done.stdout)}
    assert {name for name, plugin in listed.items() if plugin["builtin"]} == set(DEFAULT_PLUGINS)
    assert listed["auth_api_keys"]["hooks"] == [
        "inferegator_admit", "inferegator_authenticate", "inferegator_startup"]


def test_plugins_command_lists_an_entry_point_plugin_and_drops_a_disabled_one(
        tmp_path, entry_point_site):
    done = run_cli(tmp_path, probe_yaml(5) + "  routing_sticky: {enabled: false}\n",
                   "plugins", site=entry_point_site)
    assert done.returncode == 0, done.stderr
    listed = {plugin["name"]: plugin for plugin in json.loads(done.stdout)}
    assert listed[PROBE_NAME] == {"name": PROBE_NAME, "version": "0.1", "builtin": False,
                                  "hooks": ["inferegator_startup"]}
    assert "routing_sticky" not in listed and "routing_weighted" in listed


# ---------------------------------------------------------------- plugin settings


def test_check_config_names_file_and_line_of_a_bad_plugin_setting(tmp_path, entry_point_site):
    done = run_cli(tmp_path, probe_yaml(0), "check-config", site=entry_point_site)
    assert done.returncode == 2
    assert (f"{tmp_path / 'cli.yaml'}:{THRESHOLD_LINE}: plugins.{PROBE_NAME}.threshold: "
            "must be >= 1, got 0") in done.stderr.splitlines()
    assert run_cli(tmp_path, probe_yaml(5), "check-config",
                   site=entry_point_site).returncode == 0


def test_plugin_settings_reach_a_plugin_given_in_code(gateway):
    module = probe_module()
    client = gateway(probe_yaml(5), module)
    assert plugin_settings(client.gateway, PROBE_NAME) == module.ProbeSettings(threshold=5)
    assert client.gateway.plugin_state[PROBE_NAME] == "started"
    defaults = gateway(models_yaml(), module)  # not in the YAML: the dataclass's defaults
    assert plugin_settings(defaults.gateway, PROBE_NAME) == module.ProbeSettings()


def test_a_bad_setting_of_a_plugin_given_in_code_is_refused(tmp_path):
    config = parse_config(probe_yaml(0), "conf.yaml", {})
    with pytest.raises(ConfigError) as caught:
        build_gateway(config, plugins=[probe_module()], entry_points=False)
    [problem] = caught.value.problems
    assert (problem.file, problem.field, problem.message) == (
        "conf.yaml", f"plugins.{PROBE_NAME}.threshold", "must be >= 1, got 0")
    # What `check-config` does with the schemas of the registered plugins: lines included.
    path = tmp_path / "conf.yaml"
    path.write_text(probe_yaml(0))
    schemas = declared_settings(build_plugin_manager(config, [probe_module()], False))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {}, plugin_schemas=schemas)
    assert str(caught.value) == (f"{path}:{THRESHOLD_LINE}: plugins.{PROBE_NAME}.threshold: "
                                 "must be >= 1, got 0")


def test_build_gateway_names_the_line_of_a_bad_plugin_setting():
    config = parse_config(probe_yaml(0), "conf.yaml", {})
    with pytest.raises(ConfigError) as caught:
        build_gateway(config, plugins=[probe_module()], entry_points=False)
    assert [problem.line for problem in caught.value.problems] == [THRESHOLD_LINE]


# ---------------------------------------------------------------- the request path


class Recorder:
    """Records each request-path hook as it is called; lets the built-ins answer, except
    that it refuses admission on X-Refuse and orders the candidates as configured."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def inferegator_authenticate(self):
        self.calls.append("authenticate")

    @hookimpl
    def inferegator_admit(self, request):
        self.calls.append("admit")
        return invalid_request("refused", None, "refused") if request.header("X-Refuse") \
            else None

    @hookimpl
    def inferegator_select_backend(self, candidates):
        self.calls.append("select_backend")
        return list(candidates)

    @hookimpl
    def inferegator_before_upstream(self, backend):
        self.calls.append(f"before_upstream {backend.url}")

    @hookimpl
    def inferegator_after_upstream(self, backend, answer):
        self.calls.append(f"after_upstream {backend.url}")
        if answer is not None:
            answer["system_fingerprint"] = "edited"

    @hookimpl
    def inferegator_request_finished(self, outcome):
        self.calls.append(f"request_finished {outcome.http_status}")

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


def test_refusals_come_in_the_documented_order(gateway):
    recorder = Recorder()
    client = gateway(models_yaml(), recorder)
    key = bearer(client.key)

    def post(headers, body=None, raw=None):
        answer = client.simulate_post(CHAT, headers=headers, json=body, body=raw)
        return answer.status_code, recorder.take()

    # No key: 401 whatever the body holds; a key: the body is checked, then the model.
    assert post({}, raw="{not json") == (401, ["authenticate", "request_finished 401"])
    assert post(key, raw="{not json") == (400, ["authenticate", "request_finished 400"])
    assert post(key, {"model": "m"}) == (400, ["authenticate", "request_finished 400"])
    assert post(key, {"model": "nope", "messages": MESSAGES}) == (
        404, ["authenticate", "request_finished 404"])
    assert post({**key, "X-Refuse": "1"}, {"model": "m", "messages": MESSAGES}) == (
        400, ["authenticate", "admit", "request_finished 400"])


def test_an_answer_calls_every_hook_once_in_order_with_failover(gateway, sim):
    dead = f"http://127.0.0.1:{free_port()}"  # refuses connections: failover to the sim
    recorder = Recorder()
    client = gateway(models_yaml(dead, sim.url), recorder)
    answer = client.simulate_post(CHAT, headers=bearer(client.key),
                                  json={"model": "m", "messages": MESSAGES, "max_tokens": 3})
    assert answer.status_code == 200, answer.text
    assert answer.json["system_fingerprint"] == "edited"  # after_upstream's edit reached it
    assert answer.json["model"] == "m"
    assert recorder.take() == [
        "authenticate", "admit", "select_backend", f"before_upstream {dead}",
        f"before_upstream {sim.url}", f"after_upstream {sim.url}", "request_finished 200"]
