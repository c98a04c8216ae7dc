"""``python -m inferegator.simulator.launch_server``: the simulator behind SGLang's command line.

It takes the flags of ``python -m sglang.launch_server`` that shape what a client sees and runs
``inferegator sim`` with them, so a ``type: sglang`` runtime entry runs on a machine without a
GPU by setting ``launcher_module: inferegator.simulator.launch_server``:

- ``--model-path`` (or ``--model``) and ``--served-model-name``: the model name served is the
  served name, else the model path, as with SGLang;
- ``--host``, ``--port``, ``--context-length``, ``--max-running-requests``, ``--page-size``,
  ``--chunked-prefill-size``: the simulator's settings of the same names;
- ``--max-total-tokens`` (the KV cache's size in tokens): ``--cache-capacity-tokens``;
- ``--is-embedding``: serve an embedding model, as ``inferegator sim --is-embedding``;
- ``--tool-call-parser`` and ``--reasoning-parser``: the simulator's settings of the same
  names (the families it models);
- ``--tp-size`` (``--tensor-parallel-size``) and ``--mem-fraction-static``: accepted, no effect.

Any other flag is accepted and ignored with a note on stderr. Simulator-only settings (timing,
faults) come from the environment variable ``INFEREGATOR_SIM_ARGS``, written like the flags of
``inferegator sim``, e.g. ``--instant --fault-503-rate 0.1``; the SGLang flags win over it.
"""

import argparse
import os
import shlex
import sys

from . import command

SIM_ARGS_ENV = "INFEREGATOR_SIM_ARGS"
# The SGLang flags mapped onto a simulator setting of the same name.
_SHARED = ("host", "port", "context_length", "max_running_requests", "page_size",
           "chunked_prefill_size", "is_embedding", "tool_call_parser", "reasoning_parser")
# SGLang flags mapped onto a simulator setting of another name: theirs -> ours.
_RENAMED = {"max_total_tokens": "cache_capacity_tokens"}


def sglang_parser() -> argparse.ArgumentParser:
    """The subset of SGLang's launch_server flags the simulator understands."""
    parser = argparse.ArgumentParser(
        prog="python -m inferegator.simulator.launch_server", allow_abbrev=False,
        description="Run the SGLang-compatible simulator with SGLang's launch_server flags; "
                    "flags it does not model are ignored with a note. Simulator settings: "
                    f"${SIM_ARGS_ENV} (see inferegator sim --help).")
    parser.add_argument("--model-path", "--model", dest="model_path", required=True,
                        help="the model; served under this name unless --served-model-name")
    parser.add_argument("--served-model-name", help="the model name clients send")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 30000)")
    parser.add_argument("--context-length", type=int, help="max prompt + completion tokens")
    parser.add_argument("--max-running-requests", type=int, help="requests decoded at once")
    parser.add_argument("--page-size", type=int, help="tokens per prefix-cache page")
    parser.add_argument("--chunked-prefill-size", type=int,
                        help="uncached prompt tokens prefilled per scheduling round")
    parser.add_argument("--max-total-tokens", type=int,
                        help="the KV cache's size in tokens (the prefix cache's capacity)")
    parser.add_argument("--is-embedding", action="store_true", default=None,
                        help="serve an embedding model (/v1/embeddings)")
    parser.add_argument("--tool-call-parser", help="parse tool calls in this family's format")
    parser.add_argument("--reasoning-parser", help="think first; split off reasoning_content")
    parser.add_argument("--tp-size", "--tensor-parallel-size", dest="tp_size", type=int,
                        help="accepted; the simulator has no GPUs to split a model over")
    parser.add_argument("--mem-fraction-static", type=float,
                        help="accepted; the simulator's cache size is --cache-capacity-tokens "
                             f"in ${SIM_ARGS_ENV}")
    return parser


def sim_arguments(argv: list[str], environ=None) -> tuple[argparse.Namespace, list[str]]:
    """``inferegator sim``'s parsed arguments for SGLang's ``argv``, and the ignored flags.

    Raises SystemExit (argparse's) on a bad flag value or bad ``INFEREGATOR_SIM_ARGS``.
    """
    environ = os.environ if environ is None else environ
    sglang_args, ignored = sglang_parser().parse_known_args(argv)
    sim = argparse.ArgumentParser(prog=f"${SIM_ARGS_ENV}")
    command.register(sim.add_subparsers())  # exactly the flags and defaults of `inferegator sim`
    args = sim.parse_args(["sim", *shlex.split(environ.get(SIM_ARGS_ENV, ""))])
    args.model = sglang_args.served_model_name or sglang_args.model_path
    for theirs, ours in (*((name, name) for name in _SHARED), *_RENAMED.items()):
        if getattr(sglang_args, theirs) is not None:
            setattr(args, ours, getattr(sglang_args, theirs))
    return args, ignored


def main(argv: list[str] | None = None) -> int:
    args, ignored = sim_arguments(sys.argv[1:] if argv is None else argv)
    if ignored:
        print("inferegator.simulator.launch_server: ignoring what the simulator does not "
              f"model: {shlex.join(ignored)}", file=sys.stderr, flush=True)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
