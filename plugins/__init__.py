"""Inferegator's built-in plugins, installed as ``inferegator_plugins`` and registered through
the same ``inferegator`` entry-point group as third-party plugins."""
