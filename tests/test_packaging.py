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
    found |= {".".join(("inferegator_plugins", *p.parent.relative_to(ROOT / "plugins").parts))
              for p in (ROOT / "plugins").rglob("__init__.py")}
    assert found == declared_packages()


def test_every_builtin_plugin_is_registered_by_the_factory_and_none_by_entry_point():
    from inferegator.factory import DEFAULT_PLUGINS

    on_disk = {p.stem for p in (ROOT / "plugins").glob("*.py") if p.stem != "__init__"}
    on_disk |= {p.parent.name for p in (ROOT / "plugins").glob("*/__init__.py")}
    assert on_disk == set(DEFAULT_PLUGINS)
    points = importlib.metadata.entry_points(group="inferegator")
    assert not [p for p in points if p.value.startswith("inferegator_plugins.")], sys.path
