"""The composition root: the one way to build a gateway, and the one place that names the
built-in plugins.

``build_gateway(config, plugins=..., store=..., clock=...)`` is what ``inferegator serve``
runs in each worker, what tests run in-process (inferegator.testing) and what an
embedding application calls. Built-in plugins are registered here by name (as datasette's
DEFAULT_PLUGINS), before third-party plugins found by entry point (group ``inferegator``)
and those given in code, so that with pluggy's last-registered-first order, and the
built-ins' ``trylast``, a user's plugin is asked first. Any plugin, built-in or not, is
turned off with ``plugins: {<name>: {enabled: false}}``.
"""

import dataclasses
import difflib
import importlib
import importlib.metadata
import logging
import os
import time

import pluggy

from . import hookspecs
from .config import ConfigError, load_config
from .config.fields import key_line
from .config.loader import Problem
from .config.plugin_settings import plugin_enabled, validate_plugin_settings

ENTRY_POINT_GROUP = "inferegator"
BUILTIN_PACKAGE = "inferegator_plugins"
# Order matters among the built-ins (registered in this order, called in reverse): the
# key's model allow-list answers before the limiter's refusal.
DEFAULT_PLUGINS = (
    "rate_limits", "auth_api_keys", "usage_ledger", "accounts_api", "admin_backends",
    "backend_sglang", "backend_openai", "routing_round_robin", "routing_weighted",
    "routing_least_load", "routing_power_of_two", "routing_cache_aware", "routing_sticky",
    "routing_prefix_index", "console", "metrics", "access_log", "tracing",
)
log = logging.getLogger("inferegator.plugins")


def build_plugin_manager(config=None, plugins=(), entry_points: bool = True):
    """A plugin manager: the enabled built-ins, then entry-point plugins, then ``plugins``
    (modules or objects, registered under their ``__name__`` when they have one)."""
    configured = config.plugins if config is not None else {}
    disabled = {name for name, raw in configured.items() if not plugin_enabled(raw)}
    if config is not None and not config.console.enabled:
        disabled.add("console")
    pm = pluggy.PluginManager("inferegator")
    pm.add_hookspecs(hookspecs)
    # Names given in code, loaded or disabled, for known_plugin_names().
    pm.inferegator_given_names = {getattr(p, "__name__", "").rsplit(".", 1)[-1]
                                  for p in plugins} - {""}
    for name in disabled:
        pm.set_blocked(name)
    for name in DEFAULT_PLUGINS:
        if name not in disabled:
            pm.register(importlib.import_module(f"{BUILTIN_PACKAGE}.{name}"), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in plugins:
        name = getattr(plugin, "__name__", None)
        name = name.rsplit(".", 1)[-1] if name else None
        if name not in disabled and not pm.is_registered(plugin) and not (
                name and pm.get_plugin(name) is not None):  # installed by entry point too
            pm.register(plugin, name=name)
    pm.check_pending()
    if os.environ.get("INFEREGATOR_TRACE_HOOKS"):
        pm.trace.root.setwriter(log.info)
        pm.enable_tracing()
    return pm


def describe_plugins(pm) -> list[dict]:
    """Each plugin's name, version and implemented hooks (for `inferegator plugins`)."""
    versions = {id(plugin): dist.version for plugin, dist in pm.list_plugin_distinfo()}
    return sorted(({"name": pm.get_name(plugin), "version": versions.get(id(plugin)),
                    "builtin": pm.get_name(plugin) in DEFAULT_PLUGINS,
                    "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or ())}
                   for plugin in pm.get_plugins()), key=lambda p: p["name"])


def declared_settings(pm) -> dict:
    """Plugin name -> the Section its module declares as SETTINGS."""
    return {pm.get_name(plugin): plugin.SETTINGS for plugin in pm.get_plugins()
            if getattr(plugin, "SETTINGS", None) is not None}


def known_plugin_names(pm) -> set:
    """Every name a plugin may have here: the built-ins, those installed by entry point and
    those given in code, whether loaded or turned off."""
    names = set(DEFAULT_PLUGINS) | {pm.get_name(plugin) for plugin in pm.get_plugins()}
    names |= getattr(pm, "inferegator_given_names", set())
    names |= {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return names


def check_plugin_names(config, pm) -> None:
    """ConfigError naming (file:line) each ``plugins:`` entry that no plugin has."""
    source = config.plugins_source or config.plugins or {}
    known = known_plugin_names(pm)
    problems = []
    for name in source:
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(Problem(
            config.path, key_line(source, name), f"plugins.{name}",
            f"no plugin is named {str(name)!r} (built-in, installed by entry point, or given "
            f"in code){hint}"))
    if problems:
        raise ConfigError(problems)


def with_plugin_settings(config, pm):
    """config whose ``plugins`` hold each declaring plugin's validated settings; a
    ConfigError naming each problem otherwise (lines come from load_config's own check),
    an unknown plugin name included."""
    check_plugin_names(config, pm)
    schemas = declared_settings(pm)
    pending = {name for name in schemas if not dataclasses.is_dataclass(
        config.plugins.get(name))}
    if not pending:
        return config
    found = []
    settings = validate_plugin_settings(config.plugins_source or config.plugins, schemas,
                                        found)
    if found:
        raise ConfigError([Problem(config.path, line, field, message)
                           for line, field, message in found])
    return dataclasses.replace(config, plugins=settings)


def load_checked_config(path):
    """The config at ``path`` (None: the embedded default) with every plugin's name and
    settings checked too, each problem named with its file and line (ConfigError)."""
    config = load_config(path)
    pm = build_plugin_manager(config)
    check_plugin_names(config, pm)
    schemas = declared_settings(pm)
    return load_config(path, plugin_schemas=schemas) if schemas else config


def build_gateway(config, *, plugins=(), store=None, clock=time.monotonic,
                  entry_points: bool = True):
    """A ready gateway: plugins registered, settings checked, catalog built, startup hooks
    run and its WSGI app at ``gateway.app``. Health checks are started by the caller
    (``gateway.start_health_checks()``: serve does, in-process tests need not).
    ``gateway.close()`` runs the shutdown hooks and closes the store."""
    from .gateway.app import create_app
    from .gateway.core import Gateway

    pm = build_plugin_manager(config, plugins, entry_points)
    config = with_plugin_settings(config, pm)
    gateway = Gateway(config, pm, store, clock=clock)
    gateway.hook.inferegator_startup(gateway=gateway)
    gateway.app = create_app(gateway)
    return gateway
