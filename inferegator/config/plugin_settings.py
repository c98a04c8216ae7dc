"""Plugins' own settings: declared by each plugin, validated with the core config's rules.

A plugin module may declare ``SETTINGS = Section(ItsDataclass, Setting(...), ...)`` (the
same vocabulary as inferegator/config/schema.py); its YAML lives under
``plugins: {<plugin name>: {...}}``, is checked when the gateway is built, with the same
``file:line: field: problem`` messages as the core config, and reaches the plugin as an
instance of its dataclass through ``plugin_settings(gateway, name)``. ``enabled: false``
under any plugin's name turns that plugin off.
"""

from .fields import INVALID, Where, key_line

ENABLED = "enabled"  # the one key every plugin's mapping may hold


def plugin_enabled(raw) -> bool:
    return not (isinstance(raw, dict) and raw.get(ENABLED) is False)


def validate_plugin_settings(raw_plugins: dict, schemas: dict, problems: list) -> dict:
    """Each plugin's settings: its SETTINGS dataclass where it declares one (problems go
    to ``problems`` as (line, field, message)), else the mapping as given."""
    where = Where(problems)
    out = {}
    for name, raw in (raw_plugins or {}).items():
        at = where.field(f"plugins.{name}", key_line(raw_plugins, name))
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            at.fail("must be a mapping of the plugin's settings")
            continue
        if ENABLED in raw and not isinstance(raw[ENABLED], bool):
            at.field(ENABLED, key_line(raw, ENABLED)).fail("must be true or false")
        schema = schemas.get(name)
        if schema is None:
            out[name] = raw
            continue
        given = type(raw)((k, v) for k, v in raw.items() if k != ENABLED)
        if hasattr(raw, "key_lines"):
            given.key_lines = raw.key_lines
            given.duplicates = getattr(raw, "duplicates", [])
        value = schema.validate(given, at)
        if value is not INVALID:
            out[name] = value
    for name, schema in schemas.items():  # declared but not configured: the defaults
        if name not in out and name not in (raw_plugins or {}):
            out[name] = schema.validate({}, where.field(f"plugins.{name}"))
    return out


def plugin_settings(gateway, name: str):
    """The plugin's validated settings (its SETTINGS dataclass), or its raw mapping."""
    return gateway.config.plugins.get(name, {})
