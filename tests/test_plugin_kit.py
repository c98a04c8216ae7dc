"""The plugin author's kit: inferegator.testing's fixtures, the installed example plugins
(examples/), and `inferegator new-plugin`, whose package installs and passes its own tests."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.test_readme import ROOT

INFEREGATOR = os.path.join(os.path.dirname(sys.executable), "inferegator")
DEFAULT_CONFIG = str(ROOT / "config" / "inferegator.yaml")


def run(*argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def plugin_names(test_gateway) -> list[str]:
    pm = test_gateway.gateway.pm
    return [pm.get_name(plugin) for plugin in pm.get_plugins()]


def listed_plugins(env=None) -> dict:
    result = run(INFEREGATOR, "plugins", "--config", DEFAULT_CONFIG, env=env)
    assert result.returncode == 0, result.stderr
    return {plugin["name"]: plugin for plugin in json.loads(result.stdout)}


def test_inferegator_plugins_lists_the_installed_examples():
    listed = listed_plugins()
    assert listed["jwt_auth"] == {"name": "jwt_auth", "version": "0.1.0", "builtin": False,
                                  "hooks": ["inferegator_authenticate"]}
    assert listed["tenant_routing"]["hooks"] == ["inferegator_select_backend",
                                                 "inferegator_startup"]
    assert listed["auth_api_keys"]["builtin"] is True


def test_the_installed_examples_change_nothing_until_configured(make_gateway):
    gateway = make_gateway()
    assert {"jwt_auth", "tenant_routing"} <= set(plugin_names(gateway))  # by entry point
    key, _ = gateway.user()
    assert gateway.chat(key, headers={"X-Tenant": "alpha"}).status_code == 200
    a_jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    assert gateway.chat(a_jwt).status_code == 401  # jwt_auth has no secret: nobody


def test_make_gateway_registers_a_plugin_given_in_code_once(make_gateway):
    import jwt_auth

    assert "jwt_auth" not in plugin_names(make_gateway(entry_points=False))
    assert "jwt_auth" in plugin_names(make_gateway(plugins=[jwt_auth], entry_points=False))
    both = plugin_names(make_gateway(plugins=[jwt_auth]))  # installed and given
    assert both.count("jwt_auth") == 1


def test_test_gateway_helpers_call_the_real_simulator_and_read_the_ledger(make_gateway):
    gateway = make_gateway("ratelimit: {requests_per_minute: 1000}\n")
    key, record = gateway.user("ops@example.com", role="admin", requests_per_minute=1)
    answer = gateway.chat(key, content="hello", max_tokens=3)
    assert answer.status_code == 200 and answer.json["usage"]["completion_tokens"] <= 3
    assert gateway.upstream[-1].body["model"] == "sim-model"  # the backend's name for it
    assert gateway.chat(key).status_code == 429  # the key's own limit
    users = gateway.get("/v1/admin/users", key=key).json["data"]
    assert [u["email"] for u in users] == ["ops@example.com"]
    created = gateway.post("/v1/me/keys", json={"name": "second"}, key=key)
    assert created.status_code == 201 and created.json["key"].startswith("sk-inf-")
    rows = gateway.ledger()
    assert [(r["key_id"], r["status"]) for r in rows] == [(record["id"], "completed"),
                                                          (record["id"], "rejected")]


def test_invalid_plugin_settings_raise_config_error_with_the_line(make_gateway):
    from inferegator.testing import ConfigError

    with pytest.raises(ConfigError, match=r"inferegator\.yaml:\d+: plugins\.jwt_auth\.secre"):
        make_gateway(settings={"jwt_auth": {"secre": "typo"}})


def test_the_example_in_docs_plugins_md_passes(make_gateway, tmp_path, monkeypatch):
    text = (ROOT / "docs" / "plugins.md").read_text()
    examples = dict(re.findall(r"<!-- example: (\S+) -->\n```python\n(.+?)```", text, re.S))
    assert set(examples) == {"acme_quota.py", "test_acme_quota.py"}
    (tmp_path / "acme_quota.py").write_text(examples["acme_quota.py"])
    monkeypatch.syspath_prepend(str(tmp_path))
    tests = {}
    try:
        exec(compile(examples["test_acme_quota.py"], "test_acme_quota.py", "exec"), tests)
        ran = [name for name in tests if name.startswith("test_")]
        for name in ran:
            tests[name](make_gateway)
    finally:
        sys.modules.pop("acme_quota", None)
    assert len(ran) == 2


def test_new_plugin_refuses_taken_and_invalid_names(tmp_path, capsys):
    from inferegator.cli import main

    for name in ("auth_api_keys", "json", "Bad-Name"):
        assert main(["new-plugin", name, "--dir", str(tmp_path)]) == 2
        assert name in capsys.readouterr().err
    assert main(["new-plugin", "twice", "--dir", str(tmp_path)]) == 0
    assert main(["new-plugin", "twice", "--dir", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["twice"]


@pytest.mark.slow
def test_new_plugin_writes_a_package_that_installs_and_passes_its_own_tests(tmp_path):
    made = run(INFEREGATOR, "new-plugin", "acme_header", "--dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    package = tmp_path / "acme_header"
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()) \
        == ["README.md", "acme_header/__init__.py", "pyproject.toml",
            "tests/test_acme_header.py"]
    site = tmp_path / "site"  # installed aside, so no other test's gateway loads it
    installed = run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(package))
    assert installed.returncode == 0, installed.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    assert listed_plugins(env)["acme_header"] == {
        "name": "acme_header", "version": "0.1.0", "builtin": False,
        "hooks": ["inferegator_before_upstream"]}
    tests = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=package,
                env=env)
    assert tests.returncode == 0 and "3 passed" in tests.stdout, tests.stdout + tests.stderr
