"""The `inferegator` command: one subcommand per job (serve, check-config, plugins, users,
keys, new-plugin, sim)."""

import argparse
import sys

from . import __version__
from .commands import accounts as accounts_command
from .commands import gateway as gateway_command
from .commands import new_plugin as new_plugin_command
from .simulator import command as sim_command

SUBCOMMANDS = (gateway_command, accounts_command, sim_command, new_plugin_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferegator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"inferegator {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
