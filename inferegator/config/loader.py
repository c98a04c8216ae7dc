"""Load a config file: YAML that remembers its lines, ${ENV} interpolation, validation.

Relative paths in it (a relative `sqlite:///` storage URL, `ledger_journal`) resolve against
the file's folder, so a config means the same wherever `inferegator` is started; the embedded
default (default.yaml, used without --config) resolves them against the working directory.

Every problem reads `<file>:<line>: <field path>: <problem>`, and all of them are reported at
once, so a broken file is fixed in one pass rather than one error per restart.
"""

import os
import re
from typing import NamedTuple

import yaml

from . import schema
from .model import Config
from .plugin_settings import validate_plugin_settings

# The embedded default config, shipped inside the package (package_data).
DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.yaml")


class Problem(NamedTuple):
    """One thing wrong with a config file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self):
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if not self.field:
            return f"{where}: {self.message}"
        return f"{where}: {self.field}: {self.message}"


class ConfigError(ValueError):
    """A config file that cannot be used; `problems` lists everything found, in line order."""

    def __init__(self, problems):
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def load_config(path=None, environ=None, plugin_schemas=None, base_dir=None) -> Config:
    """Read, interpolate and validate the YAML file at `path` (environ: default os.environ;
    plugin_schemas: plugin name -> the Section its settings are checked against).

    Relative paths in it resolve against `base_dir`: by default the file's folder, or the
    working directory for the embedded default (path None)."""
    if path is None:
        path, base_dir = DEFAULT_CONFIG_PATH, base_dir or os.getcwd()
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        problem = Problem(path, None, "", f"cannot read the config file: {exc}")
        raise ConfigError([problem]) from None
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(path))
    return parse_config(text, path, environ, plugin_schemas, base_dir=base_dir)


def parse_config(text: str, path: str = "<config>", environ=None,
                 plugin_schemas=None, base_dir=None) -> Config:
    """Like load_config, for YAML already in hand; `path` is what error messages name, and
    relative paths resolve against `base_dir` (None: left as written, i.e. against the
    working directory)."""
    try:
        data = _load_yaml(text, os.environ if environ is None else environ)
    except yaml.YAMLError as exc:
        raise ConfigError([_syntax_problem(exc, text, path)]) from None
    found = []
    values = schema.validate(data, found)
    if plugin_schemas and not found:
        values["plugins"] = validate_plugin_settings(data.get("plugins"), plugin_schemas,
                                                     found)
    if found:
        problems = [Problem(path, line, field, message) for line, field, message in found]
        raise ConfigError(sorted(problems, key=lambda p: p.line or 0))
    if base_dir is not None:
        resolve_relative_paths(values, os.fspath(base_dir))
    source = data.get("plugins") if isinstance(data.get("plugins"), dict) else {}
    return Config(path=path, plugins_source=source, **values)


SQLITE = "sqlite:///"


def resolve_relative_paths(values: dict, base_dir: str) -> None:
    """Make `storage` (a relative sqlite:/// file, or the default one when unset) and
    `ledger_journal` absolute, relative to base_dir."""
    storage = values.get("storage", Config.storage)
    if storage.startswith(SQLITE):
        file = storage[len(SQLITE):]
        if file and file != ":memory:" and not os.path.isabs(file):
            values["storage"] = SQLITE + os.path.normpath(os.path.join(base_dir, file))
    journal = values.get("ledger_journal")
    if journal and not os.path.isabs(journal):
        values["ledger_journal"] = os.path.normpath(os.path.join(base_dir, journal))


# ---------------------------------------------------------------- YAML with lines


class LineDict(dict):
    """A YAML mapping; key_lines: key -> line, duplicates: (key, line, first line)."""

    key_lines: dict
    duplicates: list


class LineList(list):
    """A YAML sequence; item_lines[i] is the line of item i."""

    item_lines: list


_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of every key and item and interpolates ${VAR}."""

    def __init__(self, text: str, environ):
        super().__init__(text)
        self.environ = environ
        self.own_keys = {}  # mapping node -> ids of its own key nodes, not merged ones

    def flatten_mapping(self, node):
        """Merge `<<: *anchor` keys in, after noting which keys the mapping wrote itself (a
        mapping can be flattened as another's merge source before it is constructed)."""
        if node not in self.own_keys:
            self.own_keys[node] = {id(k) for k, _ in node.value if k.tag != _MERGE}
        super().flatten_mapping(node)

    def construct_lined_map(self, node):
        data = LineDict()
        data.key_lines, data.duplicates = {}, []
        yield data
        self.flatten_mapping(node)  # merged keys come first, so the mapping's own keys win
        own, own_lines = self.own_keys[node], {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR:
                key = self.construct_scalar(key_node)  # keys are never interpolated
            else:
                key = self.construct_object(key_node)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found unhashable key", key_node.start_mark) from None
            line = key_node.start_mark.line + 1
            if id(key_node) in own:
                if key in own_lines:
                    data.duplicates.append((key, line, own_lines[key]))
                own_lines[key] = line
            data[key] = self.construct_object(value_node)
            data.key_lines[key] = line

    def construct_lined_seq(self, node):
        data = LineList()
        data.item_lines = [child.start_mark.line + 1 for child in node.value]
        yield data
        data.extend(self.construct_object(child) for child in node.value)

    def construct_interpolated_str(self, node):
        value = self.construct_scalar(node)
        return interpolate(value, self.environ) if "$" in value else value


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_lined_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_lined_seq)
_LineLoader.add_constructor(_STR, _LineLoader.construct_interpolated_str)


def _load_yaml(text: str, environ):
    loader = _LineLoader(text, environ)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _syntax_problem(exc: yaml.YAMLError, text: str, path: str) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        line = mark.line + 1
    elif isinstance(exc, yaml.reader.ReaderError):  # a bad character: it has only an offset
        line = text.count("\n", 0, exc.position) + 1
    else:
        line = None
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        problem = f"{context} on line {context_mark.line + 1}: {problem}"
    return Problem(path, line, "", f"invalid YAML: {problem}")


# ---------------------------------------------------------------- ${VAR} interpolation

_REFERENCE = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<end>\}?)")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?\Z", re.S)


def interpolate(text: str, environ) -> str:
    """Replace ${VAR} and ${VAR:-default} (used when VAR is unset or empty); $${ is a literal ${.

    Returns text unchanged if it references nothing, else an EnvStr; an EnvStr whose `problem`
    is set (an unset variable, a malformed reference) keeps the original text.
    """
    problems, replaced = [], False

    def replace(match):
        nonlocal replaced
        if match.group(0) == "$${":
            return "${"
        replaced = True
        body = _BODY.match(match.group("body"))
        if not match.group("end") or not body:
            problems.append(f"malformed reference {match.group(0)!r}: "
                            "use ${NAME} or ${NAME:-default}")
            return match.group(0)
        value, default = environ.get(body.group("name")), body.group("default")
        if default is not None and not value:
            return default
        if value is None:
            problems.append(f"environment variable {body.group('name')} is not set "
                            f"(give a default with ${{{body.group('name')}:-default}})")
            return match.group(0)
        return value

    result = _REFERENCE.sub(replace, text)
    if not replaced:
        return result
    value = schema.EnvStr(text if problems else result)
    value.problem = "; ".join(problems) or None
    return value
