"""The default config ships inside the package; config paths are relative to the file; the
small checks of issue 12 (plugin names, capabilities, the banner, health-check logging)."""

import logging
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import zipfile

import openai
import pytest
import requests

from inferegator.commands.gateway import banner
from inferegator.config import ConfigError, load_config, parse_config
from inferegator.config.loader import DEFAULT_CONFIG_PATH
from inferegator.config.schema import CAPABILITIES
from inferegator.factory import build_plugin_manager, check_plugin_names, load_checked_config
from tests.support.processes import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
README_MODEL = "meta-llama/llama-3.1-8b-instruct"
SIM_PORTS = (30001, 30002)  # the embedded default's simulators: chat, embeddings
EMBEDDING_MODEL = "BAAI/bge-m3"

MINIMAL = """\
models:
  - id: m
    backends:
      - {type: sglang, url: "http://127.0.0.1:30000"}
"""


# ---------------------------------------------------------------- the packaged default


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built (not -e) from a copy of the checkout, so the checkout stays clean."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "test-artifacts", "__pycache__",
        "*.db", "*.ledger-journal"))
    out = tmp / "dist"
    result = subprocess.run([str(BIN / "pip"), "wheel", "--no-deps", "-q", "-w", str(out),
                             str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = out.glob("inferegator-*.whl")
    return path


def test_the_wheel_carries_the_default_config_and_the_console_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "inferegator/config/default.yaml" in names
    assert "inferegator_plugins/console/templates/base.html" in names
    assert "inferegator_plugins/console/static/console.css" in names
    for path in (ROOT / "plugins" / "console").glob("*/*"):
        if path.parent.name in ("templates", "static"):
            assert f"inferegator_plugins/console/{path.parent.name}/{path.name}" in names
    assert any(n.startswith("inferegator/ratelimit/") and n.endswith(".lua") for n in names)


def test_the_checkout_config_is_the_embedded_default():
    checkout = ROOT / "config" / "inferegator.yaml"
    assert checkout.read_text() == pathlib.Path(DEFAULT_CONFIG_PATH).read_text()


def _installed_inferegator(wheel, tmp_path) -> pathlib.Path:
    """`inferegator` from a fresh venv with the wheel installed (not -e), its dependencies
    from the package index."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120,
                   capture_output=True)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                               timeout=600, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return venv / "bin" / "inferegator"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_serve_with_no_config_from_an_empty_folder(wheel, tmp_path):
    for port in SIM_PORTS:
        assert _port_free(port), f"port {port}, an embedded default simulator's, is in use " \
            "by something else on this machine"
    inferegator = _installed_inferegator(wheel, tmp_path)
    folder = tmp_path / "empty"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(inferegator.parent / "python"), "-c",
                            "import inferegator; print(inferegator.__file__)"],
                           cwd=folder, env=env, capture_output=True, text=True,
                           check=True).stdout
    assert str(ROOT) not in where and "site-packages" in where  # the wheel, not this checkout
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([str(inferegator), "serve", "--bind", f"127.0.0.1:{port}"],
                            cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def output():
        log.flush()
        return (tmp_path / "serve.log").read_text(errors="replace")

    try:
        deadline = time.monotonic() + 60
        key = None
        while time.monotonic() < deadline and key is None:
            assert proc.poll() is None, output()
            found = re.findall(r"API key:\s+(sk-inf-\S+)", output())
            key = found[0] if found else None
            time.sleep(0.1)
        assert key, output()
        ready = None
        while time.monotonic() < deadline:  # until both supervised simulators pass a probe
            try:
                ready = requests.get(url + "/ready", timeout=1)
                if ready.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        assert ready is not None and ready.status_code == 200, output()
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        reply = client.chat.completions.create(
            model=README_MODEL,
            messages=[{"role": "user", "content": "Explain GPU inference in one sentence."}])
        assert reply.choices[0].message.content
        assert (folder / "inferegator.db").is_file(), sorted(os.listdir(folder))
        assert client.responses.create(model=README_MODEL, input="Hi.",
                                       max_output_tokens=16).output_text
        vectors = client.embeddings.create(model=EMBEDDING_MODEL, input=["a", "b"])
        assert [len(item.embedding) for item in vectors.data] == [1024, 1024]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        print(output())  # shown by pytest when the test failed
        log.close()


def test_the_embedded_default_keeps_its_database_in_the_working_directory(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.path == DEFAULT_CONFIG_PATH
    assert config.storage == f"sqlite:///{tmp_path}/inferegator.db"
    assert load_checked_config(None).storage == config.storage


# ---------------------------------------------------------------- relative paths


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "gw.yaml"
    path.write_text("storage: sqlite:///./data/x.db\nledger_journal: journal\n" + MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/gw.yaml")
    assert config.storage == f"sqlite:///{folder}/data/x.db"
    assert config.ledger_journal == str(folder / "journal")


def test_the_default_database_sits_beside_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "gw.yaml").write_text(MINIMAL)
    monkeypatch.chdir("/")
    assert load_config(tmp_path / "gw.yaml").storage == f"sqlite:///{tmp_path}/inferegator.db"


def test_absolute_and_non_sqlite_storage_are_kept(tmp_path):
    for storage in ("sqlite:////var/lib/x.db", "postgresql://u@db/inferegator"):
        (tmp_path / "gw.yaml").write_text(f"storage: '{storage}'\n" + MINIMAL)
        assert load_config(tmp_path / "gw.yaml").storage == storage
    (tmp_path / "gw.yaml").write_text("ledger_journal: /var/tmp/j\n" + MINIMAL)
    assert load_config(tmp_path / "gw.yaml").ledger_journal == "/var/tmp/j"


def test_yaml_in_hand_keeps_relative_paths_as_written():
    assert parse_config("storage: sqlite:///./x.db\n" + MINIMAL).storage == "sqlite:///./x.db"


# ---------------------------------------------------------------- plugin names


def test_an_unknown_plugin_name_is_refused_with_file_and_line(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(MINIMAL + "plugins:\n  console: {enabled: false}\n  rate_limitz: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_checked_config(path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.field) == (str(path), 7, "plugins.rate_limitz")
    assert "did you mean 'rate_limits'?" in problem.message


def test_check_config_reports_an_unknown_plugin_name(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(MINIMAL + "plugins:\n  no_such_plugin: {threshold: 3}\n")
    result = subprocess.run([str(BIN / "inferegator"), "check-config", "--config", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{path}:6: plugins.no_such_plugin: no plugin is named" in result.stderr


def test_built_in_and_in_code_plugin_names_are_known(tmp_path):
    config = parse_config(MINIMAL + "plugins:\n  auth_api_keys: {enabled: false}\n"
                          "  my_plugin: {enabled: false}\n  backend_openai: {}\n")
    my_plugin = types.ModuleType("my_plugin")
    check_plugin_names(config, build_plugin_manager(config, plugins=[my_plugin]))
    with pytest.raises(ConfigError, match="plugins.my_plugin"):
        check_plugin_names(config, build_plugin_manager(config))


# ---------------------------------------------------------------- capabilities


def test_a_capability_typo_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL + "    capabilities: [chat, streming, embeddings]\n",
                     path="gw.yaml")
    (problem,) = caught.value.problems
    assert str(problem).startswith("gw.yaml:5: models[0].capabilities[1]: must be ")
    assert str(problem).endswith("got 'streming', did you mean 'streaming'?")


def test_every_known_capability_is_accepted_and_the_old_name_too():
    config = parse_config(MINIMAL + f"    capabilities: [{', '.join(CAPABILITIES)}]\n")
    assert config.models[0].capabilities == CAPABILITIES
    renamed = parse_config(MINIMAL + "    capabilities: [chat, json_schema]\n")
    assert renamed.models[0].capabilities == ("chat", "structured_outputs")


# ---------------------------------------------------------------- the banner


def _curl_argv(text: str) -> list:
    start = text.index("  curl ")
    command = text[start:].split("\n  (", 1)[0].replace("\\\n", " ")
    return shlex.split(command)


def test_the_banners_curl_line_quotes_only_the_header():
    config = load_config(None)
    text = banner(config, "127.0.0.1:8080")
    argv = _curl_argv(text)
    assert argv[argv.index("-H") + 1] == "Authorization: Bearer sk-inf-YOUR_KEY"
    assert argv[-2] == "-d" and argv[-1].startswith('{"model"')
    last = text.splitlines()[-1]
    assert "inferegator keys create --user EMAIL" in last and "curl" not in last
    assert last.count("'") == 0

    first = banner(config, "127.0.0.1:8080", "sk-inf-abc")
    argv = _curl_argv(first)
    assert argv[argv.index("-H") + 1] == "Authorization: Bearer sk-inf-abc"
    assert "keys create" not in first


# ---------------------------------------------------------------- health-check logging


def test_health_checks_log_a_first_pass_and_a_backend_never_healthy(start_sim, caplog,
                                                                    tmp_path):
    from inferegator.factory import build_gateway
    from inferegator.store.store import Store

    sim = start_sim("--instant")
    dead = f"http://127.0.0.1:{free_port()}"
    config = parse_config(
        "models:\n  - id: m\n    backends:\n"
        f"      - {{type: sglang, url: '{sim.url}', model: sim-model}}\n"
        f"      - {{type: sglang, url: '{dead}', model: sim-model}}\n"
        "plugins:\n  console: {enabled: false}\n")
    gateway = build_gateway(config, store=Store(f"sqlite:///{tmp_path}/s.db"),
                            entry_points=False)
    try:
        with caplog.at_level(logging.INFO, logger="inferegator.gateway"):
            for _ in range(10):
                gateway.check_health()
    finally:
        gateway.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "inferegator.gateway"]
    assert lines.count(f"backend sglang:{sim.url} is healthy") == 1
    never = [line for line in lines if line.startswith(f"backend sglang:{dead} has not")]
    assert len(never) == 1 and "first 10 health checks" in never[0]
