"""The README's commands are the ones CI and newcomers actually run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```sh\n(.+?)\n```", text)
    assert match, f"README has no {marker} block"
    return match.group(1)


def test_ci_runs_the_readme_test_command():
    command = readme_command("test-command")
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines
    assert "pytest" in command


def test_readme_run_command_starts_inferegator():
    assert "inferegator " in readme_command("run-command")
