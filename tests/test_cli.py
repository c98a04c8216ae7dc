"""The `inferegator` command line."""

import dataclasses
import os
import subprocess
import sys

from inferegator.simulator.settings import SimSettings

INFEREGATOR = os.path.join(os.path.dirname(sys.executable), "inferegator")


def run(*args):
    return subprocess.run([INFEREGATOR, *args], capture_output=True, text=True, timeout=30)


def test_sim_help_documents_every_setting():
    result = run("sim", "--help")
    assert result.returncode == 0
    for f in dataclasses.fields(SimSettings):
        assert "--" + f.name.replace("_", "-") in result.stdout, f.name


def test_sim_rejects_impossible_settings_with_a_message():
    result = run("sim", "--output-tokens-min", "50", "--output-tokens-max", "10")
    assert result.returncode == 2
    assert "--output-tokens-min" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_subcommand_prints_help():
    result = run()
    assert result.returncode == 2 and "sim" in result.stdout


def test_plugins_lists_the_builtins_and_their_hooks():
    import json

    result = run("plugins")
    assert result.returncode == 0
    plugins = {p["name"]: p["hooks"] for p in json.loads(result.stdout)}
    assert "inferegator_register_backends" in plugins["backend_sglang"]
    assert "inferegator_authenticate" in plugins["auth_api_keys"]
    assert "inferegator_request_finished" in plugins["usage_ledger"]


def test_check_config_accepts_the_default_and_names_the_line_of_an_error(tmp_path):
    from tests.test_readme import ROOT

    ok = run("check-config", "--config", str(ROOT / "config" / "inferegator.yaml"))
    assert ok.returncode == 0 and "meta-llama/llama-3.1-8b-instruct" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - id: m\n    backends:\n      - {type: sglang, url: nope}\n")
    result = run("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}:4: models[0].backends[0].url" in result.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("models:\n  - id: m\n    backends:\n      - {type: tpu, url: 'http://x'}\n")
    result = run("check-config", "--config", str(unknown))
    assert result.returncode == 2 and "unknown backend type 'tpu'" in result.stderr
