"""The ``inferegator`` command's subcommands (the simulator's live in simulator/command.py)."""

import sys

# Without --config, the embedded default that ships inside the package
# (inferegator/config/default.yaml); its relative paths (the SQLite database,
# ./inferegator.db) resolve against the directory the command is started in.
DEFAULT_CONFIG = None
DEFAULT_CONFIG_HELP = ("default: the embedded default, inferegator/config/default.yaml, with "
                       "its database ./inferegator.db in the current directory")


def config_name(path) -> str:
    """How messages name the config file at ``path`` (None: the embedded default)."""
    return "the embedded default config" if path is None else str(path)


def load_or_report(path):
    """The checked config at ``path`` (None: the embedded default; plugins' settings
    included), or None after printing every problem with its file and line."""
    from ..config import ConfigError
    from ..factory import load_checked_config

    try:
        return load_checked_config(path)
    except ConfigError as exc:
        print(f"inferegator: invalid configuration:\n{exc}", file=sys.stderr)
        return None
