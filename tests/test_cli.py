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
