"""The building blocks of the configuration schema: value types, settings and sections.

Each type checks one YAML value, records problems with their line and field path, and
returns the value to build the dataclasses with (or INVALID). schema.py declares the
settings with them.
"""

import dataclasses
import difflib
import math
import shlex
from collections.abc import Callable
from urllib.parse import urlsplit


class _Invalid:
    """What a check returns once it has reported a problem: the parent builds nothing."""

    def __repr__(self):
        return "INVALID"


INVALID = _Invalid()


class EnvStr(str):
    """A string that came from ${VAR} interpolation; `problem` is set when it could not.

    Numeric and boolean settings accept an EnvStr ("${WORKERS:-2}"), since the environment only
    holds strings.
    """

    problem: str | None = None


class Where:
    """Where a value sits (field path, line) and the list its problems go to."""

    __slots__ = ("problems", "path", "line")

    def __init__(self, problems: list, path: str = "", line: int = 1):
        self.problems, self.path, self.line = problems, path, line

    def field(self, name: str, line: int | None = None) -> "Where":
        path = f"{self.path}.{name}" if self.path else name
        return Where(self.problems, path, line or self.line)

    def item(self, index: int, line: int | None = None) -> "Where":
        return Where(self.problems, f"{self.path}[{index}]", line or self.line)

    def fail(self, message: str) -> _Invalid:
        self.problems.append((self.line, self.path, message))
        return INVALID


def key_line(mapping, key) -> int | None:
    return getattr(mapping, "key_lines", {}).get(key)


def item_line(sequence, index: int) -> int | None:
    lines = getattr(sequence, "item_lines", ())
    return lines[index] if index < len(lines) else None


def shown(value) -> str:
    """A value as an error message quotes it: YAML spelling for scalars, a noun for the rest."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(str(value)) if isinstance(value, str) else repr(value)


# ---------------------------------------------------------------- field types


class Type:
    """A setting's type: checks one YAML value and converts it for the dataclass.

    str(type) is how the reference names it.
    """

    name = "value"

    def __str__(self):
        return self.name

    def validate(self, value, where: Where):
        if isinstance(value, EnvStr) and value.problem:
            return where.fail(value.problem)
        return self.check(value, where)

    def check(self, value, where: Where):
        raise NotImplementedError


class String(Type):
    name = "string"

    def check(self, value, where):
        if not isinstance(value, str):
            return where.fail(f"must be a string, got {shown(value)}")
        if not value.strip():
            return where.fail("must not be empty")
        return str(value)


class Int(Type):
    def __init__(self, min: int | None = None):
        self.min = min
        self.name = "integer" if min is None else f"integer >= {min}"

    def check(self, value, where):
        if isinstance(value, EnvStr):
            try:
                value = int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            return where.fail(f"must be an integer, got {shown(value)}")
        if self.min is not None and value < self.min:
            return where.fail(f"must be >= {self.min}, got {value}")
        return value


class Float(Type):
    """A number; `min` and `max` are inclusive, `above` exclusive."""

    def __init__(self, min: float | None = None, above: float | None = None,
                 max: float | None = None):
        self.min, self.above, self.max = min, above, max
        bound = f" >= {min:g}" if min is not None else f" > {above:g}" if above is not None else ""
        self.name = "number" + bound + (f" <= {max:g}" if max is not None else "")

    def check(self, value, where):
        if isinstance(value, EnvStr):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            return where.fail(f"must be a number, got {shown(value)}")
        if not math.isfinite(value):
            return where.fail(f"must be a finite number, got {value}")
        if self.min is not None and value < self.min:
            return where.fail(f"must be >= {self.min:g}, got {value:g}")
        if self.above is not None and value <= self.above:
            return where.fail(f"must be > {self.above:g}, got {value:g}")
        if self.max is not None and value > self.max:
            return where.fail(f"must be <= {self.max:g}, got {value:g}")
        return float(value)


class Bool(Type):
    name = "boolean"
    _ENV = {"true": True, "yes": True, "on": True, "1": True,
            "false": False, "no": False, "off": False, "0": False}

    def check(self, value, where):
        if isinstance(value, EnvStr) and value.strip().lower() in self._ENV:
            return self._ENV[value.strip().lower()]
        if not isinstance(value, bool):
            return where.fail(f"must be true or false, got {shown(value)}")
        return value


class Enum(Type):
    """One of the choices; an alias (an older name) is accepted as the choice it names."""

    def __init__(self, *choices: str, aliases: dict | None = None):
        self.choices = choices
        self.aliases = aliases or {}
        self.name = "one of: " + ", ".join(choices)

    def check(self, value, where):
        if isinstance(value, str) and value in self.aliases:
            return self.aliases[value]
        if value is False and "off" in self.choices:  # YAML 1.1 reads a bare `off` as false
            return "off"
        if value not in self.choices:
            listed = " or ".join(repr(c) for c in self.choices)
            close = difflib.get_close_matches(str(value), self.choices, n=1)
            hint = f", did you mean {close[0]!r}?" if close else ""
            return where.fail(f"must be {listed}, got {shown(value)}{hint}")
        return str(value)


class URL(Type):
    name = "http(s) URL"

    def check(self, value, where):
        try:
            parts = urlsplit(value) if isinstance(value, str) else None
            ok = (parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
                  and not any(c.isspace() for c in value))
            ok = ok and (parts.port is None or parts.port > 0)  # .port raises on a bad port
        except ValueError:
            ok = False
        if not ok:
            return where.fail(f"must be an http(s) URL, got {shown(value)}")
        return str(value)


class HostPort(Type):
    name = "host:port"

    def check(self, value, where):
        host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
        if not (host and port.isascii() and port.isdigit() and int(port) <= 65535):
            return where.fail(f"must be host:port, e.g. 127.0.0.1:8080, got {shown(value)}")
        return str(value)


class ListOf(Type):
    """A list; its items are checked one by one, each at its own line.

    `unique` names an item field whose value must not repeat; `split` accepts one string and
    splits it like a shell (for commands).
    """

    def __init__(self, item: Type, min_items: int = 0, unique: str | None = None,
                 split: bool = False):
        self.item, self.min_items, self.unique, self.split = item, min_items, unique, split
        self.name = ("non-empty " if min_items else "") + f"list of {item}s"
        if split:
            self.name += " (or one string, split like a shell)"

    def check(self, value, where):
        if self.split and isinstance(value, str):
            try:
                value = shlex.split(value)
            except ValueError as exc:
                return where.fail(f"cannot split {shown(value)}: {exc}")
        if not isinstance(value, list):
            return where.fail(f"must be a list, got {shown(value)}")
        if len(value) < self.min_items:
            return where.fail("must not be empty")
        items = [self.item.validate(v, where.item(i, item_line(value, i)))
                 for i, v in enumerate(value)]
        unique = self._check_unique(value, where) if self.unique else True
        if not unique or any(v is INVALID for v in items):
            return INVALID
        return tuple(items)

    def _check_unique(self, value, where) -> bool:
        first_lines, ok = {}, True
        for i, item in enumerate(value):
            key = item.get(self.unique) if isinstance(item, dict) else None
            if not isinstance(key, str):
                continue  # a missing or mistyped key is reported by the item's own check
            at = where.item(i, item_line(value, i))
            at = at.field(self.unique, key_line(item, self.unique))
            if key in first_lines:
                at.fail(f"duplicate {self.unique} {key!r}, first used on line {first_lines[key]}")
                ok = False
            else:
                first_lines[key] = at.line
        return ok


def _check_duplicate_keys(mapping, where) -> bool:
    """PyYAML keeps the last of repeated keys silently; the loader records them, we report them."""
    for key, line, first in getattr(mapping, "duplicates", ()):
        where.field(str(key), line).fail(f"duplicate key {key!r}, first on line {first}")
    return not getattr(mapping, "duplicates", ())


def plain(value, where: Where):
    """Free-form YAML as plain dicts, lists and strs, reporting env and duplicate-key problems."""
    if isinstance(value, EnvStr):
        return where.fail(value.problem) if value.problem else str(value)
    if isinstance(value, dict):
        ok = _check_duplicate_keys(value, where)
        out = {k: plain(v, where.field(str(k), key_line(value, k))) for k, v in value.items()}
        return out if ok and all(v is not INVALID for v in out.values()) else INVALID
    if isinstance(value, list):
        out = [plain(v, where.item(i, item_line(value, i))) for i, v in enumerate(value)]
        return out if all(v is not INVALID for v in out) else INVALID
    return value


class FreeDict(Type):
    """A mapping the schema does not look into (a plugin's own settings); empty means {}."""

    name = "mapping"

    def validate(self, value, where):
        return {} if value is None else super().validate(value, where)

    def check(self, value, where):
        if not isinstance(value, dict):
            return where.fail(f"must be a mapping, got {shown(value)}")
        return plain(value, where)


class EnvValue(Type):
    """An environment variable's value: a string; numbers are accepted and turned into one."""

    name = "string"

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return where.fail(f"must be a string, got {shown(value)}")
        return str(value)


class Mapping(Type):
    """Names (strings) to values of one type."""

    def __init__(self, value: Type):
        self.value = value
        self.name = f"mapping of names to {value}s"

    def check(self, value, where):
        if not isinstance(value, dict):
            return where.fail(f"must be a mapping, got {shown(value)}")
        ok = _check_duplicate_keys(value, where)
        out = {}
        for key, raw in value.items():
            at = where.field(str(key), key_line(value, key))
            if not isinstance(key, str) or not key:
                at.fail(f"names must be non-empty strings, got {shown(key)}")
                ok = False
                continue
            out[key] = self.value.validate(raw, at)
        return out if ok and all(v is not INVALID for v in out.values()) else INVALID


# ---------------------------------------------------------------- settings and sections


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting. The default comes from the section's dataclass; `default_from` names an
    earlier sibling whose value is the default instead."""

    name: str
    type: Type
    doc: str
    default_from: str | None = None
    factory: Callable | None = None  # set by Section from the dataclass; None: required

    @property
    def required(self) -> bool:
        return self.factory is None and self.default_from is None

    @property
    def default(self):
        return self.factory() if self.factory else None


class Section(Type):
    """A mapping of known settings that builds one dataclass; unknown keys are errors.

    A setting left out or null takes its default. `internal` names dataclass fields that are
    not settings (Config.path).
    """

    name = "mapping"

    def __init__(self, cls: type, *settings: Setting, internal: tuple[str, ...] = ()):
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in internal}
        if {s.name for s in settings} != set(fields):
            raise TypeError(f"schema and {cls.__name__} disagree: "
                            f"{sorted({s.name for s in settings} ^ set(fields))}")
        self.cls = cls
        self.settings = tuple(dataclasses.replace(s, factory=_factory(fields[s.name]))
                              for s in settings)
        self.names = [s.name for s in self.settings]

    def validate(self, value, where):
        return super().validate({} if value is None else value, where)

    def check(self, value, where):
        values = self.values(value, where)
        return INVALID if values is INVALID else self.cls(**values)

    def values(self, value, where: Where):
        """The checked settings as a dict of dataclass arguments, or INVALID."""
        if not isinstance(value, dict):
            return where.fail(f"must be a mapping, got {shown(value)}")
        ok = _check_duplicate_keys(value, where)
        for key in value:
            if key not in self.names:
                close = difflib.get_close_matches(str(key), self.names, n=1)
                hint = f", did you mean {close[0]!r}?" if close else ""
                at = where.field(str(key), key_line(value, key))
                at.fail(f"unknown field {str(key)!r}{hint}")
                ok = False
        values = {}
        for setting in self.settings:
            raw, at = value.get(setting.name), where.field(setting.name,
                                                          key_line(value, setting.name))
            if raw is not None:
                values[setting.name] = setting.type.validate(raw, at)
            elif setting.default_from:
                values[setting.name] = values[setting.default_from]
            elif setting.factory:
                values[setting.name] = setting.factory()
            else:
                null = setting.name in value
                values[setting.name] = at.fail("is required, got null" if null
                                               else "required field is missing")
        return values if ok and all(v is not INVALID for v in values.values()) else INVALID


def _factory(field: dataclasses.Field) -> Callable | None:
    if field.default is not dataclasses.MISSING:
        return lambda: field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory
    return None
