"""Inferegator's built-in plugins, installed as ``inferegator_plugins``: registered by name
by inferegator.factory (DEFAULT_PLUGINS) before any third-party plugin, and held to the
same rule as those: they import only ``inferegator.plugin``."""
