"""Build the pluggy plugin manager: hook specs, entry-point plugins, and any given in code.

Built per worker in the app factory (after gevent has patched), never at import time.
Set INFEREGATOR_TRACE_HOOKS=1 to log every hook call.
"""

import logging
import os

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "inferegator"
log = logging.getLogger("inferegator.plugins")


def get_plugin_manager(extra_plugins=(), load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with every installed plugin plus ``extra_plugins`` (modules/objects)."""
    pm = pluggy.PluginManager("inferegator")
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    if os.environ.get("INFEREGATOR_TRACE_HOOKS"):
        pm.trace.root.setwriter(log.info)
        pm.enable_tracing()
    return pm


def describe_plugins(pm: pluggy.PluginManager) -> list[dict]:
    """Each plugin's name, version and implemented hooks (for `inferegator plugins`)."""
    versions = {id(plugin): dist.version for plugin, dist in pm.list_plugin_distinfo()}
    return sorted(({"name": pm.get_name(plugin), "version": versions.get(id(plugin)),
                    "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or ())}
                   for plugin in pm.get_plugins()), key=lambda p: p["name"])
