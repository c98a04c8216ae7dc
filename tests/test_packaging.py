"""Packaging: every package is installed, and the built-in plugins load through entry points."""

import importlib.metadata
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def declared_packages() -> set[str]:
    text = (ROOT / "setup.cfg").read_text()
    block = text.split("packages =", 1)[1].split("package_dir", 1)[0]
    return {line.strip() for line in block.splitlines() if line.strip()}


def test_every_package_directory_is_declared():
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "inferegator").rglob("__init__.py")}
    found.add("inferegator_plugins")
    assert found == declared_packages()


def test_builtin_plugins_are_entry_points_of_the_inferegator_group():
    points = importlib.metadata.entry_points(group="inferegator")
    modules = {p.value for p in points}
    on_disk = {f"inferegator_plugins.{p.stem}" for p in (ROOT / "plugins").glob("*.py")
               if p.stem != "__init__"}
    assert on_disk <= modules, sys.path
