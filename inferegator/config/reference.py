"""docs/configuration.md, generated from the schema so the settings reference never drifts.

Regenerate the page with: python -m inferegator.config.reference > docs/configuration.md
(tests/test_config.py fails while the page and the schema disagree).
"""

import sys

from . import schema

INTRO = """\
# Configuration

<!-- Generated from inferegator/config/schema.py and reference.py; do not edit by hand.
     Regenerate: python -m inferegator.config.reference > docs/configuration.md -->

Inferegator reads one YAML file, given with `--config PATH`. Without `--config` it uses the
embedded default that ships inside the package, `inferegator/config/default.yaml` (in a
checkout, `config/inferegator.yaml` is the same file): one simulated model, with its SQLite
database at `./inferegator.db` in the directory `inferegator` is started in. Only `models` is
required; every other setting has a default, and a setting left empty (`null`) takes it too.

**Relative paths** in a config file (a relative SQLite `storage` such as
`sqlite:///./inferegator.db`, the default one included, and `ledger_journal`) resolve against
the folder of the config file, not the working directory, so a file means the same wherever
`inferegator` is started; the embedded default resolves them against the working directory.

```yaml
server: {bind: 127.0.0.1:8080, workers: 1}
storage: postgresql://inferegator@db.internal/inferegator  # default: sqlite:///./inferegator.db
models:
  - id: meta-llama/llama-3.1-70b-instruct
    owned_by: meta-llama
    context_length: 131072
    pricing: {prompt: 0.59, completion: 0.79, cached_prompt: 0.30}  # USD per 1M tokens
    capabilities: [chat, completions, streaming, tools, structured_outputs]
    routing: round_robin
    backends:
      - {type: sglang, url: "http://gpu-a:30000"}
      - {type: sglang, url: "http://gpu-b:30000"}
      - type: openai
        url: https://upstream.example/v1
        api_key: ${UPSTREAM_KEY}
        model: Llama-3.1-70B
        role: fallback
runtimes:
  - {name: sim-a, command: inferegator sim --port 30001, health: "http://127.0.0.1:30001/health"}
plugins:
  my_plugin: {threshold: 3}
```

**Environment variables.** `${NAME}` inside any string value is replaced by that environment
variable, so secrets stay out of the file; `${NAME:-default}` uses `default` when `NAME` is
unset or empty, and `$${` writes a literal `${`. A variable that is unset and has no default is
an error. Numbers and booleans may come from the environment too (`workers: ${WORKERS:-2}`).
Inside a flow mapping (`{...}`) quote the value: `{api_key: "${KEY}"}`.

**Checking.** `inferegator check-config --config PATH` validates the file (and that the
plugins it names are loaded) without serving. Every problem is reported at once, each as
`<file>:<line>: <field>: <problem>`, for example `config/inferegator.yaml:14:
models[0].backends[1].url: must be an http(s) URL, got 'gpu-a:30000'`. Unknown fields are
errors, with a suggestion when the name is close to a known one. `inferegator serve`
runs the same checks, and builds the gateway once, before gunicorn starts any worker: a
file `check-config` refuses makes `serve` exit 2 with the same message (a routing option
or backend type that no loaded plugin knows included), never a worker that fails to boot.

**Plugins.** `plugins.<name>` is passed, as written, to the plugin of that name; the plugin
validates its own settings. A name that no plugin has (built-in, installed by entry point, or
given in code) is an error, reported with its file and line, as a misspelt `capabilities`
entry is. Backend `type` and model `routing` name plugins too, and are checked against the
loaded plugins when the gateway starts.

"""


def render_reference() -> str:
    """Every setting, one markdown table per section: path, type, default and description."""
    parts = ["## Settings\n"]
    for path, section in _sections(schema.CONFIG, ""):
        parts.append(f"\n### {f'`{path}`' if path else 'Top level'}\n\n")
        parts.append("| Setting | Type | Default | Description |\n|---|---|---|---|\n")
        for setting in section.settings:
            full = f"{path}.{setting.name}" if path else setting.name
            nested = _nested(setting.type)
            kind = str(setting.type) + (f" (see `{full}{nested[1]}`)" if nested else "")
            cells = (f"`{full}`", kind, _default(setting), setting.doc)
            parts.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n")
    return "".join(parts)


def render_document() -> str:
    """The whole of docs/configuration.md."""
    return INTRO + render_reference()


def _nested(type_):
    """(section, path suffix) for a setting that holds a section or a list of them."""
    if isinstance(type_, schema.Section):
        return type_, ""
    if isinstance(type_, schema.ListOf) and isinstance(type_.item, schema.Section):
        return type_.item, "[]"
    return None


def _sections(section, path):
    yield path, section
    for setting in section.settings:
        nested = _nested(setting.type)
        if nested:
            full = f"{path}.{setting.name}" if path else setting.name
            yield from _sections(nested[0], full + nested[1])


def _default(setting) -> str:
    if setting.required:
        return "**required**"
    if setting.default_from:
        return f"same as `{setting.default_from}`"
    if isinstance(setting.type, schema.Section):
        return "per field"
    value = setting.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(map(str, value)) + "]`"
    return f"`{value}`"


if __name__ == "__main__":
    sys.stdout.write(render_document())
