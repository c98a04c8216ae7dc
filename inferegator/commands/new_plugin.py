"""`inferegator new-plugin NAME`: write an installable plugin package to start from.

The skeleton is what docs/plugins.md describes: a pyproject.toml with the ``inferegator``
entry point, a module with one hook implementation and a SETTINGS section, a README, and
a test using inferegator.testing's fixtures that passes as written.
"""

import keyword
import os
import re
import sys

_NAME = re.compile(r"[a-z][a-z0-9_]*")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "inferegator-{dist}"
version = "0.1.0"
description = "An Inferegator plugin: {name}"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["inferegator"]

[project.entry-points.inferegator]
{name} = "{name}"

[tool.setuptools]
packages = ["{name}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

MODULE = '''\
"""{name}: an Inferegator plugin (made by `inferegator new-plugin`).

It adds a header to every request the gateway sends to a backend. Its settings live under
``plugins: {{{name}: {{header: ..., value: ...}}}}`` in the gateway's YAML and are checked
when the gateway starts. Import from ``inferegator.plugin`` only: nothing else is promised.
"""

import dataclasses

from inferegator.plugin import Section, Setting, String, hookimpl, plugin_settings

NAME = "{name}"  # the entry point's name, which is also where its settings live


@dataclasses.dataclass(frozen=True)
class Settings:
    header: str = "{header}"
    value: str = "{name}"


SETTINGS = Section(
    Settings,
    Setting("header", String(), "The header added to each backend request."),
    Setting("value", String(), "Its value."),
)


@hookimpl
def inferegator_before_upstream(gateway, headers):
    settings = plugin_settings(gateway, NAME)
    headers[settings.header] = settings.value
'''

TEST = '''\
"""{name}, tested in front of a real simulator with inferegator.testing's fixtures."""

import pytest
from inferegator.testing import ConfigError

import {name}


def test_adds_its_header_to_every_backend_request(make_gateway):
    gateway = make_gateway(plugins=[{name}])
    key, _ = gateway.user()
    assert gateway.chat(key).status_code == 200
    assert gateway.upstream[-1].headers["{header}"] == "{name}"


def test_reads_its_settings(make_gateway):
    gateway = make_gateway(plugins=[{name}], settings={{"{name}": {{"value": "tuned"}}}})
    key, _ = gateway.user()
    assert gateway.chat(key).status_code == 200
    assert gateway.upstream[-1].headers["{header}"] == "tuned"


def test_refuses_unknown_settings(make_gateway):
    with pytest.raises(ConfigError, match="plugins.{name}.colour"):
        make_gateway(plugins=[{name}], settings={{"{name}": {{"colour": "red"}}}})
'''

README = """\
# {name}

An Inferegator plugin: adds `{header}: {name}` to every request
the gateway sends to a backend.

    pip install -e .                # registers the `inferegator` entry point {name}
    inferegator plugins             # lists it, with its hooks
    pytest                          # its tests, with inferegator.testing's fixtures

Settings, in the gateway's YAML:

```yaml
plugins:
  {name}:
    header: {header}   # the header's name
    value: {name}      # its value
    # enabled: false   # turns the plugin off
```
"""


def files(name: str) -> dict[str, str]:
    """Relative path -> text of the package for plugin ``name``."""
    fields = {"name": name, "dist": name.replace("_", "-"),
              "header": "X-" + "-".join(p.capitalize() for p in name.split("_") if p)}
    return {"pyproject.toml": PYPROJECT.format(**fields),
            f"{name}/__init__.py": MODULE.format(**fields),
            f"tests/test_{name}.py": TEST.format(**fields),
            "README.md": README.format(**fields)}


def problem_with(name: str) -> str | None:
    from ..factory import DEFAULT_PLUGINS

    if not _NAME.fullmatch(name) or keyword.iskeyword(name):
        return f"{name!r} is not a plugin name: lowercase letters, digits and _, " \
               "starting with a letter"
    if name in DEFAULT_PLUGINS or name in sys.stdlib_module_names or name in (
            "inferegator", "inferegator_plugins", "tests"):
        return f"{name!r} is taken (a built-in plugin, a standard module or inferegator's)"
    return None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "new-plugin", help="Write a new plugin package: entry point, a hook, settings, a "
                           "passing test.", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the plugin's name, also its module's (e.g. acme_audit)")
    parser.add_argument("--dir", default=".", help="where the package folder NAME is "
                                                   "created (default: .)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    problem = problem_with(args.name)
    target = os.path.join(args.dir, args.name)
    if problem is None and os.path.exists(target):
        problem = f"{target} exists already"
    if problem is not None:
        print(f"inferegator new-plugin: {problem}", file=sys.stderr)
        return 2
    for path, text in files(args.name).items():
        os.makedirs(os.path.dirname(os.path.join(target, path)), exist_ok=True)
        with open(os.path.join(target, path), "w", encoding="utf-8") as f:
            f.write(text)
    print(f"Created the plugin package {target}. Next:\n"
          f"  pip install -e {target} && pytest {target}\n"
          f"  then edit {target}/{args.name}/__init__.py (hooks: docs/hooks.md)")
    return 0
