"""The docs describe what the code does: the hook reference matches hookspecs.py, and each
hook's worked example is a plugin that imports only the public module, registers, and
(those that change what a client sees) works in a gateway in front of the simulator."""

import ast
import inspect
import pathlib
import re
import types

import falcon.testing

from inferegator import hookspecs
from inferegator.config import parse_config
from inferegator.factory import DEFAULT_PLUGINS, build_gateway, build_plugin_manager
from inferegator.plugin import hookimpl
from inferegator.store.store import Store
from tests.support.processes import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOOKS_DOC = ROOT / "docs" / "hooks.md"
PUBLIC = "inferegator.plugin"


def declared_hooks() -> dict[str, str]:
    """Hook name -> its arguments as hookspecs.py declares them ("gateway, request")."""
    return {name: ", ".join(inspect.signature(func).parameters)
            for name, func in vars(hookspecs).items()
            if name.startswith("inferegator_") and callable(func)}


def python_examples() -> list[str]:
    """The ```python blocks of docs/hooks.md, in order."""
    return re.findall(r"^```python\n(.*?)^```$", HOOKS_DOC.read_text(), re.M | re.S)


def test_hook_reference_lists_every_hook_with_its_signature():
    text = HOOKS_DOC.read_text()
    block = text.split("<!-- hooks -->", 1)[1].split("<!-- /hooks -->", 1)[0]
    documented = dict(re.findall(r"^- `(inferegator_\w+)\(([^)]*)\)`", block, re.M))
    assert documented == declared_hooks()


def test_what_each_builtin_provides_is_listed():
    text = HOOKS_DOC.read_text()
    table = text.split("<!-- builtins -->", 1)[1].split("<!-- /builtins -->", 1)[0]
    assert re.findall(r"^\| `(\w+)` \|", table, re.M) == list(DEFAULT_PLUGINS)


def test_every_hook_has_a_worked_example():
    examples = python_examples()
    missing = [name for name in declared_hooks()
               if not any(f"def {name}(" in example for example in examples)]
    assert missing == []


def test_examples_import_only_the_public_plugin_module():
    """Standard-library imports are fine; of Inferegator, only inferegator.plugin."""
    found = []
    for number, example in enumerate(python_examples(), 1):
        for node in ast.walk(ast.parse(example)):
            if isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [f"example {number}: {name}" for name in names
                      if name != PUBLIC and name.startswith(("inferegator", "."))]
    assert found == []


def test_examples_are_plugins_that_register():
    """Each example runs as a module and registers: pluggy checks every implementation's
    arguments against its spec, and that each marked function names a hook that exists."""
    examples = python_examples()
    assert len(examples) >= len(declared_hooks())
    for number, example in enumerate(examples, 1):
        module = types.ModuleType(f"hooks_md_example_{number}")
        exec(compile(example, f"docs/hooks.md, example {number}", "exec"), module.__dict__)
        pm = build_plugin_manager(plugins=[module], entry_points=False)
        implemented = {hook.name for hook in pm.get_hookcallers(module) or ()}
        defined = {name for name in vars(module) if name.startswith("inferegator_")}
        assert implemented == defined, f"example {number}"


# The examples that change what a client sees, run together in front of the simulator
# (those that write files are left out).
LIVE = ("inferegator_register_routes", "inferegator_authenticate", "inferegator_admit",
        "inferegator_select_backend", "inferegator_before_upstream",
        "inferegator_after_upstream")


class Upstream:
    """Records each backend call as the examples left it (trylast: after them)."""

    def __init__(self):
        self.calls = []

    @hookimpl(trylast=True)
    def inferegator_before_upstream(self, backend, body, headers):
        self.calls.append((backend.url, body.get("user"), headers.get("X-Tenant")))


def test_the_examples_work_in_a_gateway(tmp_path, sim):
    modules = []
    for number, example in enumerate(python_examples(), 1):
        if "open(" not in example and any(f"def {name}(" in example for name in LIVE):
            modules.append(types.ModuleType(f"hooks_md_example_{number}"))
            exec(compile(example, f"docs/hooks.md, example {number}", "exec"),
                 modules[-1].__dict__)
    dead = f"http://127.0.0.1:{free_port()}"
    config = parse_config(f"models:\n  - id: m\n    backends: [{{type: sglang, url: '{dead}'}}, "
                          f"{{type: sglang, url: '{sim.url}', model: sim-model}}]\n",
                          "conf.yaml", {})
    upstream = Upstream()
    gateway = build_gateway(config, store=Store(f"sqlite:///{tmp_path / 'store.db'}"),
                            plugins=[*modules, upstream], entry_points=False)
    try:
        client = falcon.testing.TestClient(gateway.app)
        alice = {"X-Forwarded-User": "alice"}
        assert client.simulate_get("/v1/whoami", headers=alice).json == {
            "owner": "alice", "admin": False}
        assert client.simulate_get("/v1/whoami", headers={
            "X-Forwarded-User": "mallory@example.com"}).status_code == 403
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        refused = client.simulate_post("/v1/chat/completions", headers=alice,
                                       json={**body, "max_tokens": 5000})
        assert refused.status_code == 400 and refused.headers["X-Max-Tokens-Cap"] == "4096"
        assert refused.json["error"]["code"] == "max_tokens_too_large"
        answer = client.simulate_post(
            "/v1/chat/completions", json={**body, "max_tokens": 3},
            headers={**alice, "X-Debug-Backend": f"sglang:{sim.url}"})
        assert answer.status_code == 200, answer.text
        assert answer.json["system_fingerprint"] == "inferegator-sglang"
        assert upstream.calls == [(sim.url, "alice", "alice")]  # the named backend, first
    finally:
        gateway.close()
