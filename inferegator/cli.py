"""The `inferegator` command: one subcommand per job (serve, check-config, plugins, users,
keys, new-plugin, sim); `inferegator --help` lists them, one line each."""

import argparse
import sys

from . import __version__
from .commands import accounts as accounts_command
from .commands import gateway as gateway_command
from .commands import new_plugin as new_plugin_command
from .simulator import command as sim_command

SUBCOMMANDS = (gateway_command, accounts_command, sim_command, new_plugin_command)


DESCRIPTION = """\
Inferegator, an OpenAI-compatible inference gateway: OpenAI's API served from SGLang
runtimes and OpenAI-compatible servers, with API keys, limits, usage and a web console."""
EPILOG = """\
Without --config, commands use the embedded default config (one simulated model; its
SQLite database is ./inferegator.db in the current directory). Start with
`inferegator serve`; `inferegator COMMAND --help` tells more. Docs: docs/*.md."""


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=20)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferegator", description=DESCRIPTION,
                                     epilog=EPILOG, formatter_class=_formatter)
    parser.add_argument("--version", action="version", version=f"inferegator {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
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
