"""`type: sglang` runtimes: the launch_server command line, its validation, and the simulator
standing in for SGLang under a real `inferegator serve`."""

import dataclasses
import os
import re
import shlex
import signal
import sys
import textwrap
import types

import openai
import pytest
import requests

from inferegator.config import ConfigError, RuntimeConfig, parse_config
from inferegator.config.launch import DERIVED_FLAGS, FLAG_ALIASES, health_url, sglang_command
from inferegator.runtimes import launch_spec
from inferegator.simulator import launch_server
from tests.gateway_fixtures import MODEL, gateway_yaml, sdk
from tests.support.processes import free_port, wait_until

# SGLang's documented launch_server flags, for the settings we set and the simulator reads.
# Source: sgl-project/sglang, python/sglang/srt/server_args.py at commit
# 001067fffe33427bee0ed2f007fb7551a1d76b44. There, ServerArgs declares the fields model_path
# (alias --model), served_model_name, host, port, tp_size (alias --tensor-parallel-size),
# context_length, mem_fraction_static, max_running_requests, max_total_tokens,
# chunked_prefill_size, page_size, is_embedding, tool_call_parser and reasoning_parser; each
# field's flag is "--" + its name with "_" turned into "-" (_field_to_cli_name in
# python/sglang/srt/arg_groups/arg_utils.py at 0116c6066d6ead4b97c0468f65e04cad47ca021e).
# An older server_args.py (469c63e54e7d94591617ef9590c6aa26d54dc1bb) spells --model-path,
# --host, --port, --mem-fraction-static and --tp-size out in add_argument calls.
SGLANG_DOCUMENTED_FLAGS = {
    "--model-path", "--model",
    "--served-model-name",
    "--host",
    "--port",
    "--tp-size", "--tensor-parallel-size",
    "--context-length",
    "--mem-fraction-static",
    "--max-running-requests",
    "--max-total-tokens",
    "--chunked-prefill-size",
    "--page-size",
    "--is-embedding",
    "--tool-call-parser",
    "--reasoning-parser",
}

MESSAGES = [{"role": "user", "content": "hello"}]
MODELS = "models:\n  - id: m\n    backends: [{type: sglang, url: 'http://127.0.0.1:30000'}]\n"


def config_text(entry: str) -> str:
    """A config whose one runtime is `entry` (a YAML mapping); the entry starts on line 5."""
    return MODELS + "runtimes:\n  - " + textwrap.indent(textwrap.dedent(entry).strip(),
                                                        "    ").lstrip() + "\n"


def load_runtime(entry: str) -> RuntimeConfig:
    [runtime] = parse_config(config_text(entry), "conf.yaml", {}).runtimes
    return runtime


def problems_of(entry: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text(entry), "conf.yaml", {})
    return str(caught.value).splitlines()


def flags(argv: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]


FULL = """\
    name: llama
    type: sglang
    model_path: meta-llama/Llama-3.1-70B-Instruct
    served_model_name: llama-70b
    host: 0.0.0.0
    port: 30001
    gpu_ids: [2, 3]
    context_length: 65536
    mem_fraction_static: 0.85
    extra_args: [--trust-remote-code, --chunked-prefill-size, "4096"]
    env: {HF_HOME: /models}
    python: /opt/sglang/bin/python
"""


# ---------------------------------------------------------------- the command line


def test_full_entry_builds_the_launch_server_command():
    runtime = load_runtime(FULL)
    argv, env = sglang_command(runtime)
    assert argv == [
        "/opt/sglang/bin/python", "-m", "sglang.launch_server",
        "--model-path", "meta-llama/Llama-3.1-70B-Instruct",
        "--host", "0.0.0.0",
        "--port", "30001",
        "--tp-size", "2",
        "--served-model-name", "llama-70b",
        "--context-length", "65536",
        "--mem-fraction-static", "0.85",
        "--trust-remote-code", "--chunked-prefill-size", "4096",
    ]
    assert env == {"HF_HOME": "/models", "CUDA_VISIBLE_DEVICES": "2,3"}
    # What the config holds, what check-config prints and what the supervisor runs agree.
    assert runtime.command == tuple(argv) and launch_spec(runtime) == (argv, env)
    assert runtime.health == "http://127.0.0.1:30001/health"  # not the wildcard address


def test_every_flag_we_emit_is_one_sglang_documents():
    runtime = dataclasses.replace(load_runtime(FULL), extra_args=())
    argv, env = sglang_command(runtime)
    emitted = flags(argv)
    assert set(emitted) == set(DERIVED_FLAGS)  # the full entry sets every one
    assert set(emitted) <= SGLANG_DOCUMENTED_FLAGS
    assert set(FLAG_ALIASES) <= SGLANG_DOCUMENTED_FLAGS
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_the_simulator_launcher_reads_only_sglang_flags():
    parser = launch_server.sglang_parser()
    ours = {option for action in parser._actions for option in action.option_strings
            if option not in ("-h", "--help")}
    assert ours <= SGLANG_DOCUMENTED_FLAGS


def test_minimal_entry_uses_this_python_and_one_rank():
    runtime = load_runtime("{name: r, type: sglang, model_path: /models/tiny, port: 30002}")
    argv, env = sglang_command(runtime)
    assert argv == [sys.executable, "-m", "sglang.launch_server", "--model-path",
                    "/models/tiny", "--host", "127.0.0.1", "--port", "30002", "--tp-size", "1"]
    assert env == {}  # no gpu_ids: CUDA_VISIBLE_DEVICES is inherited, not set
    assert runtime.health == "http://127.0.0.1:30002/health" and runtime.restart


@pytest.mark.parametrize("gpu_ids, tp_size, expected", [
    ((0,), None, "1"), ((0, 1, 2, 3), None, "4"), ((0, 1, 2, 3), 2, "2"), ((), 2, "2"),
])
def test_tp_size_defaults_to_one_rank_per_gpu(gpu_ids, tp_size, expected):
    runtime = RuntimeConfig(name="r", type="sglang", model_path="m", port=1, gpu_ids=gpu_ids,
                            tp_size=tp_size)
    argv, env = sglang_command(runtime)
    assert argv[argv.index("--tp-size") + 1] == expected
    assert env.get("CUDA_VISIBLE_DEVICES") == (",".join(map(str, gpu_ids)) or None)


def test_extra_args_as_one_string_and_an_own_health_url():
    runtime = load_runtime("""\
        name: r
        type: sglang
        model_path: m
        port: 30003
        extra_args: --trust-remote-code --chat-template 'my template.jinja'
        health: http://127.0.0.1:30003/health_generate
        launcher_module: inferegator.simulator.launch_server
        """)
    argv, _ = sglang_command(runtime)
    assert argv[1:3] == ["-m", "inferegator.simulator.launch_server"]
    assert argv[-3:] == ["--trust-remote-code", "--chat-template", "my template.jinja"]
    assert runtime.health == "http://127.0.0.1:30003/health_generate"


@pytest.mark.parametrize("host, url", [
    ("127.0.0.1", "http://127.0.0.1:9/health"), ("0.0.0.0", "http://127.0.0.1:9/health"),
    ("::", "http://127.0.0.1:9/health"), ("gpu-a.internal", "http://gpu-a.internal:9/health"),
    ("::1", "http://[::1]:9/health"),
])
def test_default_health_url_is_reachable(host, url):
    assert health_url(RuntimeConfig(name="r", type="sglang", model_path="m", port=9,
                                    host=host)) == url


def test_command_runtimes_are_unchanged():
    runtime = load_runtime("{name: a, command: inferegator sim --port 1, env: {A: 1}}")
    assert runtime == RuntimeConfig(name="a", command=("inferegator", "sim", "--port", "1"),
                                    env={"A": "1"})
    assert launch_spec(runtime) == (["inferegator", "sim", "--port", "1"], {"A": "1"})


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("entry, expected", [
    pytest.param("{name: r, type: sglang, port: 1}",
                 ["conf.yaml:5: runtimes[0].model_path: required field is missing for type "
                  "sglang"], id="no-model-path"),
    pytest.param("{name: r, type: sglang, model_path: m}",
                 ["conf.yaml:5: runtimes[0].port: required field is missing for type sglang"],
                 id="no-port"),
    pytest.param("name: r\ntype: sglang\nmodel_path: m\nport:\n",
                 ["conf.yaml:8: runtimes[0].port: is required for type sglang, got null"],
                 id="null-port"),
    pytest.param("name: r\ntype: sglang\nmodel_path: m\nport: 1\ncommand: [sim]\n",
                 ["conf.yaml:9: runtimes[0].command: not allowed with type sglang: the command "
                  "is derived from model_path, port and the other settings; put more "
                  "launch_server flags in extra_args"], id="command-with-sglang"),
    pytest.param("name: r\ncommand: sim\nmodel_path: m\n",
                 ["conf.yaml:7: runtimes[0].model_path: only for type sglang; this runtime's "
                  "type is 'command'"], id="sglang-setting-on-a-command"),
    pytest.param("{name: r}", ["conf.yaml:5: runtimes[0].command: required field is missing"],
                 id="command-without-command"),
    pytest.param("{name: r, type: vllm, command: x}",
                 ["conf.yaml:5: runtimes[0].type: must be 'command' or 'sglang', got 'vllm'"],
                 id="unknown-type"),
    pytest.param("name: r\ntype: sglang\nmodel_path: m\nport: 70000\n",
                 ["conf.yaml:8: runtimes[0].port: must be <= 65535, got 70000"],
                 id="port-out-of-range"),
    pytest.param("name: r\ntype: sglang\nmodel_path: m\nport: 1\nmem_fraction_static: 1.5\n",
                 ["conf.yaml:9: runtimes[0].mem_fraction_static: must be <= 1, got 1.5"],
                 id="memory-fraction-above-one"),
    pytest.param("name: r\ntype: sglang\nmodel_path: m\nport: 1\ngpu_ids: [0, 1]\n"
                 "tp_size: 4\n",
                 ["conf.yaml:10: runtimes[0].tp_size: 4 tensor-parallel ranks need 4 GPUs, but "
                  "gpu_ids lists 2"], id="more-ranks-than-gpus"),
    pytest.param("name: r\ntype: sglang\nmodel_path: m\nport: 1\ngpu_ids:\n  - 0\n  - 0\n",
                 ["conf.yaml:11: runtimes[0].gpu_ids[1]: GPU 0 is listed twice"],
                 id="gpu-listed-twice"),
    pytest.param("name: r\ntype: sglang\nmodel_path: m\nport: 1\ngpu_ids: [0]\n"
                 "env:\n  CUDA_VISIBLE_DEVICES: '1'\n",
                 ["conf.yaml:11: runtimes[0].env.CUDA_VISIBLE_DEVICES: is set from gpu_ids; "
                  "give one or the other"], id="gpus-twice"),
    pytest.param("name: r\ntype: sglang\nmodel_path: m\nport: 1\nextra_args:\n  - --port\n"
                 "  - '2'\n  - --tensor-parallel-size=2\n",
                 ["conf.yaml:10: runtimes[0].extra_args[0]: --port is set by the 'port' setting; "
                  "set that instead",
                  "conf.yaml:12: runtimes[0].extra_args[2]: --tensor-parallel-size is set by "
                  "the 'tp_size' setting; set that instead"], id="extra-args-fight-settings"),
])
def test_each_problem_names_line_and_field(entry, expected):
    assert problems_of(entry) == expected


def test_problems_of_several_runtimes_are_reported_together():
    text = MODELS + textwrap.dedent("""\
        runtimes:
          - {name: a, type: sglang}
          - {name: b, type: sglang, model_path: m, port: 1, host: ''}
        """)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "conf.yaml", {})
    assert str(caught.value).splitlines() == [
        "conf.yaml:5: runtimes[0].model_path: required field is missing for type sglang",
        "conf.yaml:5: runtimes[0].port: required field is missing for type sglang",
        "conf.yaml:6: runtimes[1].host: must not be empty",
    ]


# ---------------------------------------------------------------- the simulator as SGLang


def test_simulator_launcher_maps_sglang_flags_onto_its_settings():
    args, ignored = launch_server.sim_arguments(
        ["--model-path", "/models/llama", "--served-model-name", "llama", "--host", "0.0.0.0",
         "--port", "31000", "--tp-size", "2", "--context-length", "4096",
         "--mem-fraction-static", "0.8", "--max-running-requests", "8", "--page-size", "1",
         "--trust-remote-code", "--chunked-prefill-size", "512", "--max-total-tokens", "9000",
         "--enable-metrics"],
        environ={"INFEREGATOR_SIM_ARGS": "--instant --port 1 --decode-ms-per-token 3"})
    assert (args.model, args.host, args.port) == ("llama", "0.0.0.0", 31000)
    assert (args.context_length, args.max_running_requests, args.page_size) == (4096, 8, 1)
    assert (args.chunked_prefill_size, args.cache_capacity_tokens) == (512, 9000)
    assert args.instant and args.decode_ms_per_token == 3.0  # from the environment
    assert ignored == ["--trust-remote-code", "--enable-metrics"]


def test_simulator_launcher_serves_the_model_path_without_a_served_name():
    args, ignored = launch_server.sim_arguments(["--model", "org/model"], environ={})
    assert args.model == "org/model" and args.port == 30000 and ignored == []
    assert args.is_embedding is False
    args, ignored = launch_server.sim_arguments(["--model", "org/embed", "--is-embedding"],
                                                environ={})
    assert args.is_embedding is True and ignored == []
    args, ignored = launch_server.sim_arguments(
        ["--model", "org/qwen", "--tool-call-parser", "qwen25", "--reasoning-parser", "qwen3"],
        environ={})
    assert (args.tool_call_parser, args.reasoning_parser, ignored) == ("qwen25", "qwen3", [])
    assert args.handler is launch_server.command.run  # `inferegator sim`'s own start


# ---------------------------------------------------------------- under inferegator serve


def runtime_leader(gateway_pid: int, port: int) -> int | None:
    """The pid of the gateway's child serving the simulator on `port` (Linux /proc)."""
    marks = (launch_server.__name__, f"inferegator-sim:{port}")  # before and after setproctitle
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if int(ppid) == gateway_pid and state != "Z" and any(m in cmdline for m in marks):
            return int(entry)
    return None


def chat_or_none(gateway):
    try:
        return sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES,
                                                    max_tokens=3)
    except openai.APIError:
        return None


@pytest.mark.slow
def test_serve_supervises_an_sglang_runtime_and_restarts_it(start_gateway, tmp_path):
    port = free_port()
    # `python:` is the interpreter to launch with; this one notes each launch, then is Python.
    # (The runtime's /proc environ cannot tell: gunicorn's setproctitle writes over it.)
    launches = tmp_path / "launches.log"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES $*" '
                      f'>> {shlex.quote(str(launches))}\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    runtime = textwrap.dedent(f"""\
        runtimes:
          - name: sglang-a
            type: sglang
            model_path: acme/weights
            served_model_name: sim-model
            port: {port}
            gpu_ids: [0]
            extra_args: [--trust-remote-code]
            python: {python}
            launcher_module: {launch_server.__name__}
            env: {{INFEREGATOR_SIM_ARGS: --instant}}
        """)
    backend = types.SimpleNamespace(url=f"http://127.0.0.1:{port}")
    gateway = start_gateway(gateway_yaml([backend], extra=runtime))

    def ready():
        return requests.get(gateway.url + "/ready", timeout=5).status_code == 200

    wait_until(ready, timeout=30, interval=0.05)
    # /ready counts passed health probes; a circuit opened by connections the starting runtime
    # refused may close a probe later, so the first completion is polled for too.
    reply = wait_until(lambda: chat_or_none(gateway), timeout=10, interval=0.05)
    assert reply.model == MODEL and reply.usage.completion_tokens == 3
    launch = (f"CUDA_VISIBLE_DEVICES=0 -m {launch_server.__name__} --model-path acme/weights "
              f"--host 127.0.0.1 --port {port} --tp-size 1 --served-model-name sim-model "
              "--trust-remote-code")
    assert launches.read_text().splitlines() == [launch]
    assert "ignoring what the simulator does not model: --trust-remote-code" in gateway.output()

    leader = wait_until(lambda: runtime_leader(gateway.proc.pid, port), timeout=5)
    os.kill(leader, signal.SIGKILL)
    restarted = wait_until(
        lambda: (pid := runtime_leader(gateway.proc.pid, port)) != leader and pid,
        timeout=15, interval=0.05)
    reply = wait_until(lambda: chat_or_none(gateway), timeout=30, interval=0.1)
    assert reply.usage.completion_tokens == 3
    wait_until(ready, timeout=10, interval=0.05)
    assert launches.read_text().splitlines() == [launch, launch]
    assert runtime_leader(gateway.proc.pid, port) == restarted  # the new process serves
    # Not "code -9": gunicorn's master reaps every child of its own, runtimes included, so
    # the supervisor finds its process gone without its exit status.
    assert re.search(r"runtime sglang-a exited with code .+; restarting in", gateway.output())

    gateway.stop()
    with pytest.raises(ProcessLookupError):  # the gateway stopped its runtime on the way out
        os.kill(restarted, 0)
