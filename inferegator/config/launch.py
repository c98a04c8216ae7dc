"""How a ``runtimes:`` entry is launched: its argv, its extra environment and its health URL.

The one place a runtime's command line is derived. ``type: command`` runs ``command`` as
written. ``type: sglang`` names the model, the port and the GPUs and becomes
``python -m sglang.launch_server`` with SGLang's flags (``--model-path``, ``--host``,
``--port``, ``--tp-size``, ``--served-model-name``, ``--context-length``,
``--mem-fraction-static``) followed by the entry's ``extra_args``; ``gpu_ids`` becomes
``CUDA_VISIBLE_DEVICES``. SGLang itself is the optional extra ``inferegator[sglang]``;
``launcher_module: inferegator.simulator.launch_server`` runs the same entry on the
simulator, on a machine without a GPU.

Three readers, one derivation: the schema checks an entry's ``extra_args`` against the
derived flags and stores the derived command and health URL in the loaded RuntimeConfig
(what ``check-config`` prints); the supervisor (inferegator.runtimes) launches and probes
with it. It belongs to the configuration layer and imports only the config's model, so the
schema needs nothing above it.
"""

import sys

from .model import RuntimeConfig

DEFAULT_LAUNCHER = "sglang.launch_server"

# The flags sglang_command writes, with the RuntimeConfig field each comes from.
DERIVED_FLAGS = {
    "--model-path": "model_path",
    "--host": "host",
    "--port": "port",
    "--tp-size": "tp_size",
    "--served-model-name": "served_model_name",
    "--context-length": "context_length",
    "--mem-fraction-static": "mem_fraction_static",
}
# SGLang's other spellings of those flags: in extra_args they would fight the derived ones.
FLAG_ALIASES = {"--model": "model_path", "--tensor-parallel-size": "tp_size"}

# Hosts a server listens on that a client cannot connect to as written.
_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


def launch_spec(runtime: RuntimeConfig) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` for any runtime: ``env`` is what the process gets on top of the
    gateway's environment."""
    if runtime.type == "sglang":
        return sglang_command(runtime)
    if not runtime.command:
        raise ValueError(f"runtime {runtime.name} has no command")
    return list(runtime.command), {key: str(value) for key, value in runtime.env.items()}


def runtime_health(runtime: RuntimeConfig) -> str | None:
    """The URL that answers 200 once the runtime is ready: its own ``health``, or for type
    sglang SGLang's ``/health`` on its host and port; None when there is none."""
    return health_url(runtime) if runtime.type == "sglang" else runtime.health


def connect_host(host: str) -> str:
    """The host to reach a server bound to ``host``: loopback for a wildcard address."""
    if host in _ANY_ADDRESS:
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        return f"[{host}]"
    return host


def health_url(runtime: RuntimeConfig) -> str:
    """A type sglang runtime's health URL: its own, else ``/health`` on its host and port."""
    if runtime.health:
        return runtime.health
    return f"http://{connect_host(runtime.host)}:{runtime.port}/health"


def tp_size(runtime: RuntimeConfig) -> int:
    """``tp_size`` when given, else one rank per GPU in ``gpu_ids``, else 1."""
    return runtime.tp_size or len(runtime.gpu_ids) or 1


def flag_conflict(arg: str) -> str | None:
    """The RuntimeConfig field that already sets ``arg`` (``--port`` or ``--port=1``), if any."""
    name = arg.split("=", 1)[0]
    return DERIVED_FLAGS.get(name) or FLAG_ALIASES.get(name)


def sglang_command(runtime: RuntimeConfig) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` for a type sglang runtime: its own ``env`` and, when ``gpu_ids`` is
    set, ``CUDA_VISIBLE_DEVICES``."""
    if not runtime.model_path or runtime.port is None:
        raise ValueError(f"runtime {runtime.name}: type sglang needs model_path and port")
    argv = [runtime.python or sys.executable, "-m", runtime.launcher_module or DEFAULT_LAUNCHER,
            "--model-path", runtime.model_path,
            "--host", runtime.host,
            "--port", str(runtime.port),
            "--tp-size", str(tp_size(runtime))]
    if runtime.served_model_name:
        argv += ["--served-model-name", runtime.served_model_name]
    if runtime.context_length is not None:
        argv += ["--context-length", str(runtime.context_length)]
    if runtime.mem_fraction_static is not None:
        argv += ["--mem-fraction-static", str(runtime.mem_fraction_static)]
    argv += list(runtime.extra_args)
    env = {key: str(value) for key, value in runtime.env.items()}
    if runtime.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in runtime.gpu_ids)
    return argv, env
