"""The ``inferegator`` command's subcommands (the simulator's live in simulator/command.py)."""

import sys

DEFAULT_CONFIG = "config/inferegator.yaml"


def load_or_report(path):
    """The checked config at ``path`` (plugins' settings included), or None after printing
    every problem with its file and line."""
    from ..config import ConfigError
    from ..factory import load_checked_config

    try:
        return load_checked_config(path)
    except ConfigError as exc:
        print(f"inferegator: invalid configuration:\n{exc}", file=sys.stderr)
        return None
