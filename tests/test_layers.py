"""Which module may import which, read from the source with ``ast`` (nothing is imported).

Two rules keep the layers apart:

- plugins (the built-ins in ``plugins/``, the examples in ``examples/``) see the core only
  through ``inferegator.plugin``, the one module whose names are promised to plugin authors,
  and never import one another; an example's tests may also use ``inferegator.testing``
  (docs/plugins.md);
- the lower layers (store, rate limits, configuration, and the shared bottom: outcome, body,
  errors, auth) never import an upper one (the gateway, the commands, the composition root,
  the server, the CLI, the test fixtures, the built-in plugins), lazily inside a function
  or not.

Every import counts: module level, inside functions, under ``if TYPE_CHECKING``, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. The last
test plants violations in a scratch tree, so the checks are shown to be able to fail.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Source folder -> the package it is imported as.
PACKAGES = {"inferegator": "inferegator", "plugins": "inferegator_plugins",
            "examples": "examples"}
PUBLIC = "inferegator.plugin"
TESTING = "inferegator.testing"  # the fixtures, for a plugin's tests only
PLUGIN_FOLDERS = ("plugins", "examples")

UPPER = ("inferegator.gateway", "inferegator.commands", "inferegator.factory",
         "inferegator.serving", "inferegator.cli", "inferegator.testing",
         "inferegator_plugins")
# Each lower layer (a folder or one module) and what it must not import.
LOWER = {
    "inferegator/store": UPPER,
    "inferegator/ratelimit": UPPER,
    "inferegator/prefix_index": UPPER,
    "inferegator/redis_scripts.py": UPPER,
    # The configuration is read by the runtime supervisor and the SGLang launcher, never
    # the other way round (the launch description lives in inferegator/config/launch.py).
    "inferegator/config": UPPER + ("inferegator.runtimes", "inferegator.sglang_launch"),
    **{f"inferegator/{name}.py": UPPER + ("inferegator.store",)
       for name in ("outcome", "body", "errors", "auth")},
}


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    """``inferegator/store/accounts.py`` -> ``inferegator.store.accounts`` (the folder's
    package name for plugins/), ``.../__init__.py`` -> the package itself."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    parts[0] = PACKAGES.get(parts[0], parts[0])
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: pathlib.Path, root: pathlib.Path):
    """(line, dotted name) for everything the file imports, relative imports resolved.

    ``from a.b import c`` yields ``a.b.c``: c may be a module or a name in a.b, and either
    way it is a use of a.b's contents (``from inferegator import hookimpl`` is
    ``inferegator.hookimpl``, not the public module).
    """
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and _imports_by_name(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def _imports_by_name(func) -> bool:
    return (isinstance(func, ast.Name) and func.id == "__import__") or (
        isinstance(func, ast.Attribute) and func.attr == "import_module")


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def sources(root: pathlib.Path, place: str) -> list[pathlib.Path]:
    """The .py files of a folder (none if it does not exist), or the one file named."""
    target = root / place
    if target.suffix == ".py":
        return [target] if target.exists() else []
    return sorted(target.rglob("*.py")) if target.is_dir() else []


def is_test(path: pathlib.Path) -> bool:
    return path.name.startswith("test_") or path.name == "conftest.py"


def own_package(where: pathlib.Path) -> str:
    """The package a plugin made of several modules may import from itself:
    ``plugins/console/web.py`` -> ``inferegator_plugins.console``."""
    parts = where.parts
    if parts[0] == "plugins" and len(parts) > 2:
        return f"inferegator_plugins.{parts[1]}"
    return "-"


def plugin_violations(root: pathlib.Path) -> list[str]:
    """Imports of the core other than inferegator.plugin (and inferegator.testing in a
    test), and of another built-in plugin."""
    found = []
    for folder in PLUGIN_FOLDERS:
        for path in sources(root, folder):
            where = path.relative_to(root)
            allowed = (PUBLIC, TESTING) if is_test(path) else (PUBLIC,)
            for line, name in sorted(imported_names(path, root)):
                if within(name, "inferegator") and not any(within(name, a) for a in allowed):
                    found.append(f"{where}:{line}: imports {name}; use {PUBLIC}")
                elif within(name, "inferegator_plugins") and not within(name, own_package(
                        where)):
                    found.append(f"{where}:{line}: imports the built-in plugin {name}")
    return found


def layer_violations(root: pathlib.Path) -> list[str]:
    """Imports of an upper layer from a lower one."""
    found = []
    for place, forbidden in LOWER.items():
        for path in sources(root, place):
            where = path.relative_to(root)
            for line, name in sorted(imported_names(path, root)):
                upper = next((f for f in forbidden if within(name, f)), None)
                if upper is not None:
                    found.append(f"{where}:{line}: imports {name} ({place} is below {upper})")
    return found


def test_plugins_import_the_core_only_through_inferegator_plugin():
    assert sources(ROOT, "plugins"), "no plugin sources found: the check would prove nothing"
    assert plugin_violations(ROOT) == []


def test_lower_layers_do_not_import_upper_ones():
    assert all(sources(ROOT, place) for place in LOWER), "a lower layer's sources moved"
    assert layer_violations(ROOT) == []


def test_the_checks_catch_planted_violations(tmp_path):
    """A scratch tree with one bad import of each kind: each is reported with its line."""
    planted = {
        "plugins/bad.py": "from inferegator import hookimpl\n"
                          "from inferegator.plugin import Principal\n"
                          "from . import rate_limits\n",
        "plugins/lazy.py": "def f():\n    import inferegator.gateway.core\n",
        "examples/demo/plugin.py": "from inferegator_plugins.auth_api_keys import KeyCache\n"
                                   "from inferegator.testing import MODEL\n",
        "examples/demo/tests/test_plugin.py": "from inferegator.testing import ConfigError\n"
                                              "from inferegator.config import parse_config\n",
        "inferegator/store/bad.py": "def f():\n    from ..gateway import core\n",
        "inferegator/ratelimit/bad.py": "import importlib\n"
                                        "importlib.import_module('inferegator_plugins.x')\n",
        "inferegator/config/bad.py": "from .. import sglang_launch\n",
        "inferegator/errors.py": "from typing import TYPE_CHECKING\n"
                                 "if TYPE_CHECKING:\n    from .store.store import Store\n",
    }
    for name, text in planted.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert plugin_violations(tmp_path) == [
        "plugins/bad.py:1: imports inferegator.hookimpl; use inferegator.plugin",
        "plugins/bad.py:3: imports the built-in plugin inferegator_plugins.rate_limits",
        "plugins/lazy.py:2: imports inferegator.gateway.core; use inferegator.plugin",
        "examples/demo/plugin.py:1: imports the built-in plugin "
        "inferegator_plugins.auth_api_keys.KeyCache",
        "examples/demo/plugin.py:2: imports inferegator.testing.MODEL; use inferegator.plugin",
        "examples/demo/tests/test_plugin.py:2: imports inferegator.config.parse_config; use "
        "inferegator.plugin",
    ]
    assert layer_violations(tmp_path) == [
        "inferegator/store/bad.py:2: imports inferegator.gateway.core "
        "(inferegator/store is below inferegator.gateway)",
        "inferegator/ratelimit/bad.py:2: imports inferegator_plugins.x "
        "(inferegator/ratelimit is below inferegator_plugins)",
        "inferegator/config/bad.py:1: imports inferegator.sglang_launch "
        "(inferegator/config is below inferegator.sglang_launch)",
        "inferegator/errors.py:3: imports inferegator.store.store.Store "
        "(inferegator/errors.py is below inferegator.store)",
    ]
