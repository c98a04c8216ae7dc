"""The YAML config: what loads, what each mistake reads like, and the generated reference page."""

import pathlib
import re
import textwrap

import pytest

from inferegator.config import (
    AuthConfig,
    BackendConfig,
    Config,
    ConfigError,
    ModelConfig,
    Pricing,
    RuntimeConfig,
    ServerConfig,
    load_config,
    parse_config,
)
from inferegator.config.reference import render_document, render_reference

ROOT = pathlib.Path(__file__).resolve().parent.parent

FULL = """\
server:
  bind: 0.0.0.0:9000
  workers: 2
storage: "${DB_URL}"
auth:
  key_cache_ttl_s: 1.5
runtimes:
  - name: sim-a
    command: inferegator sim --port "30001"
    health: http://127.0.0.1:30001/health
    env: {SIM_SEED: 7}
models:
  - id: meta-llama/llama-3.1-70b-instruct
    owned_by: meta-llama
    context_length: 131072
    pricing: {prompt: 0.59, completion: 0.79, cached_prompt: 0.30}
    capabilities: [chat, tools]
    routing: cache_aware
    backends:
      - {type: sglang, url: http://gpu-a:30000}
      - type: openai
        url: https://upstream.example/v1
        api_key: ${UPSTREAM_KEY}
        model: Llama-3.1-70B
        role: fallback
        weight: 2
  - id: small
    pricing: {prompt: 0.1}
    backends: [{type: sglang, url: "http://127.0.0.1:30001"}]
plugins:
  my_plugin: {threshold: 3, names: [a, b]}
  bare_plugin:
"""

ENV = {"DB_URL": "postgresql://gw@db/inferegator", "UPSTREAM_KEY": "up-secret"}


def problems_of(text: str, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "conf.yaml", environ or {})
    return str(caught.value).splitlines()


def minimal(**backend) -> str:
    fields = {"type": "sglang", "url": "http://a:1", **backend}
    return "models:\n  - id: m\n    backends:\n      - " + "\n        ".join(
        f"{k}: {v}" for k, v in fields.items()) + "\n"


def test_full_config_loads_into_the_dataclasses(tmp_path):
    path = tmp_path / "inferegator.yaml"
    path.write_text(FULL)
    config = load_config(path, environ=ENV)
    assert config == Config(
        path=str(path),
        server=ServerConfig(bind="0.0.0.0:9000", workers=2),
        storage="postgresql://gw@db/inferegator",
        auth=AuthConfig(key_cache_ttl_s=1.5),
        runtimes=(RuntimeConfig(name="sim-a", command=("inferegator", "sim", "--port", "30001"),
                                health="http://127.0.0.1:30001/health",
                                env={"SIM_SEED": "7"}),),
        models=(
            ModelConfig(
                id="meta-llama/llama-3.1-70b-instruct",
                owned_by="meta-llama",
                context_length=131072,
                pricing=Pricing(prompt=0.59, completion=0.79, cached_prompt=0.30),
                capabilities=("chat", "tools"),
                routing="cache_aware",
                backends=(
                    BackendConfig(type="sglang", url="http://gpu-a:30000"),
                    BackendConfig(type="openai", url="https://upstream.example/v1",
                                  api_key="up-secret", model="Llama-3.1-70B", role="fallback",
                                  weight=2.0),
                ),
            ),
            ModelConfig(id="small", pricing=Pricing(prompt=0.1, cached_prompt=0.1),
                        backends=(BackendConfig(type="sglang", url="http://127.0.0.1:30001"),)),
        ),
        plugins={"my_plugin": {"threshold": 3, "names": ["a", "b"]}, "bare_plugin": {}},
    )
    # What the rest of the code gets is plain Python, not loader types.
    assert type(config.plugins["my_plugin"]) is dict
    assert type(config.models[0].backends[1].api_key) is str


def test_defaults_come_from_the_dataclasses():
    config = parse_config(minimal(), "conf.yaml", {})
    assert config == Config(path="conf.yaml", models=(
        ModelConfig(id="m", backends=(BackendConfig(type="sglang", url="http://a:1"),)),))


def test_empty_values_take_their_defaults():
    config = parse_config(minimal() + "server:\nruntimes:\nplugins:\n", "conf.yaml", {})
    assert config.server == ServerConfig() and config.runtimes == () and config.plugins == {}


def test_command_given_as_a_list_is_kept():
    text = minimal() + "runtimes:\n  - {name: a, command: [sim, --port, '1']}\n"
    assert parse_config(text, "conf.yaml", {}).runtimes[0].command == ("sim", "--port", "1")


def test_env_interpolation_set_default_and_escape():
    text = minimal(api_key='"${KEY}"', model='"${MODEL:-fallback-name}"',
                   url='"http://${HOST:-localhost}:${PORT}"', type='"$${literal}"')
    text += "server: {workers: '${WORKERS:-3}', bind: '${BIND:-127.0.0.1:80}'}\n"
    config = parse_config(text, "conf.yaml", {"KEY": "k", "PORT": "30000", "BIND": ""})
    backend = config.models[0].backends[0]
    assert (backend.api_key, backend.model, backend.url) == ("k", "fallback-name",
                                                             "http://localhost:30000")
    assert backend.type == "${literal}"
    assert config.server.workers == 3 and config.server.bind == "127.0.0.1:80"


def test_env_interpolation_uses_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("INFEREGATOR_TEST_KEY", "from-os")
    config = parse_config(minimal(api_key="${INFEREGATOR_TEST_KEY}"), "conf.yaml")
    assert config.models[0].backends[0].api_key == "from-os"


def test_unset_env_variable_names_variable_file_line_and_field():
    assert problems_of(minimal(api_key='"${UPSTREAM_KEY}"')) == [
        "conf.yaml:6: models[0].backends[0].api_key: environment variable UPSTREAM_KEY is not "
        "set (give a default with ${UPSTREAM_KEY:-default})"]


def test_env_problems_in_plugin_settings_are_reported_too():
    assert problems_of(minimal() + "plugins:\n  p: {token: '${NOPE}', x: '${bad name}'}\n") == [
        "conf.yaml:7: plugins.p.token: environment variable NOPE is not set (give a default "
        "with ${NOPE:-default})",
        "conf.yaml:7: plugins.p.x: malformed reference '${bad name}': use ${NAME} or "
        "${NAME:-default}"]


@pytest.mark.parametrize("text, expected", [
    pytest.param("models:\n  - id: m\n    backends:\n      - type: sglang\n",
                 "conf.yaml:4: models[0].backends[0].url: required field is missing",
                 id="missing-required"),
    pytest.param("server: {}\n", "conf.yaml:1: models: required field is missing",
                 id="missing-models"),
    pytest.param(minimal() + "server:\n  workers: two\n",
                 "conf.yaml:7: server.workers: must be an integer, got 'two'", id="wrong-type"),
    pytest.param(minimal() + "server:\n  workers: 0\n",
                 "conf.yaml:7: server.workers: must be >= 1, got 0", id="below-minimum"),
    pytest.param(minimal(url="gpu-a:30000"),
                 "conf.yaml:5: models[0].backends[0].url: must be an http(s) URL, "
                 "got 'gpu-a:30000'", id="bad-url"),
    pytest.param(minimal(role="backup"),
                 "conf.yaml:6: models[0].backends[0].role: must be 'primary' or 'fallback', "
                 "got 'backup'", id="bad-role"),
    pytest.param(minimal(rol="fallback"),
                 "conf.yaml:6: models[0].backends[0].rol: unknown field 'rol', "
                 "did you mean 'role'?", id="unknown-key-with-suggestion"),
    pytest.param(minimal() + "storag: sqlite:///x.db\n",
                 "conf.yaml:6: storag: unknown field 'storag', did you mean 'storage'?",
                 id="unknown-key"),
    pytest.param(minimal() + "  - id: m\n    backends: [{type: x, url: 'http://b'}]\n",
                 "conf.yaml:6: models[1].id: duplicate id 'm', first used on line 2",
                 id="duplicate-model-id"),
    pytest.param(minimal() + "server:\n  bind: 8080\n",
                 "conf.yaml:7: server.bind: must be host:port, e.g. 127.0.0.1:8080, got 8080",
                 id="bad-bind"),
    pytest.param(minimal() + "server:\n  workers: 1\n  workers: 2\n",
                 "conf.yaml:8: server.workers: duplicate key 'workers', first on line 7",
                 id="duplicate-key"),
    pytest.param("models:\n  - id: m\n    backends: []\n",
                 "conf.yaml:3: models[0].backends: must not be empty", id="empty-backends"),
    pytest.param(minimal() + "runtimes:\n  - {name: a, command: []}\n",
                 "conf.yaml:7: runtimes[0].command: must not be empty", id="empty-command"),
    pytest.param(minimal() + "plugins:\n  p: [1, 2]\n",
                 "conf.yaml:7: plugins.p: must be a mapping, got a list", id="plugin-not-mapping"),
    pytest.param("- models\n", "conf.yaml:1: the top level must be a mapping of settings, "
                 "got a list", id="not-a-mapping"),
    pytest.param("", "conf.yaml:1: the file is empty; it needs at least 'models'", id="empty"),
])
def test_each_problem_names_line_and_field(text, expected):
    assert problems_of(text) == [expected]


def test_required_field_given_as_null():
    assert problems_of(minimal(url="")) == [
        "conf.yaml:5: models[0].backends[0].url: is required, got null"]


def test_env_value_that_is_not_a_number():
    assert problems_of(minimal() + "server: {workers: '${W}'}\n", {"W": "many"}) == [
        "conf.yaml:6: server.workers: must be an integer, got 'many'"]


def test_merge_keys_override_without_counting_as_duplicates():
    text = """\
        models:
          - id: m
            backends:
              - &base {type: sglang, url: "http://a:1", pool_size: 8}
              - &second
                <<: *base
                url: http://b:2
          - id: n
            backends:
              - <<: *second
                url: http://c:3
                role: fallback
        """
    models = parse_config(textwrap.dedent(text), "conf.yaml", {}).models
    assert [(b.url, b.pool_size) for m in models for b in m.backends] == [
        ("http://a:1", 8), ("http://b:2", 8), ("http://c:3", 8)]


def test_yaml_syntax_error_names_file_and_line():
    assert problems_of("models:\n  - id: m\n    routing: a: b\n") == [
        "conf.yaml:3: invalid YAML: mapping values are not allowed here"]


def test_yaml_indentation_error_names_file_and_line():
    (problem,) = problems_of("server:\n  bind: x:1\n workers: 2\n")
    assert re.match(r"conf\.yaml:3: invalid YAML: .+", problem)


def test_all_problems_are_reported_together_in_line_order():
    text = """\
        server:
          bnd: 127.0.0.1:80
          workers: -1
        models:
          - id: a
            pricing: {prompt: -1}
            backends:
              - {type: sglang, url: "ftp://x", role: primary}
              - type: openai
        """
    assert problems_of(text) == [
        "conf.yaml:2: server.bnd: unknown field 'bnd', did you mean 'bind'?",
        "conf.yaml:3: server.workers: must be >= 1, got -1",
        "conf.yaml:6: models[0].pricing.prompt: must be >= 0, got -1",
        "conf.yaml:8: models[0].backends[0].url: must be an http(s) URL, got 'ftp://x'",
        "conf.yaml:9: models[0].backends[1].url: required field is missing",
    ]


def test_config_error_is_a_value_error_with_structured_problems():
    with pytest.raises(ValueError) as caught:
        parse_config(minimal(url="nope"), "conf.yaml", {})
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.field) == ("conf.yaml", 5,
                                                           "models[0].backends[0].url")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.yaml: cannot read the config file"):
        load_config(tmp_path / "nowhere.yaml")


def test_shipped_default_config_is_valid():
    config = load_config(ROOT / "config" / "inferegator.yaml", environ={})
    assert config.models and config.storage.startswith("sqlite:///")


def test_docs_configuration_md_is_generated_from_the_schema():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert render_reference() in doc
    assert doc == render_document(), (
        "docs/configuration.md is out of date: "
        "python -m inferegator.config.reference > docs/configuration.md")


def test_docs_example_is_a_valid_config():
    example = re.search(r"```yaml\n(.+?)```", render_document(), re.S).group(1)
    config = parse_config(example, "example.yaml", {"INFEREGATOR_KEY": "k", "UPSTREAM_KEY": "u"})
    assert config.models[0].backends[2].role == "fallback"
