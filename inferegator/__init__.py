"""Inferegator: an OpenAI-compatible inference gateway for fleets of SGLang GPU runtimes."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("inferegator")
"""Decorator for plugin hook implementations: ``from inferegator import hookimpl``."""
