"""The configuration schema, declared once: each setting's name, type, default and description.

The loader validates the YAML against it and docs/configuration.md is generated from it (the
spirit of gunicorn's config.py). Defaults are read from the dataclasses in model.py, so each
default lives in exactly one place.
"""

from .fields import (  # noqa: F401  (the types are part of the schema's vocabulary)
    INVALID,
    URL,
    Bool,
    Enum,
    EnvStr,
    EnvValue,
    Float,
    FreeDict,
    HostPort,
    Int,
    ListOf,
    Mapping,
    Section,
    Setting,
    String,
    Type,
    Where,
    item_line,
    key_line,
    shown,
)
from .launch import flag_conflict, launch_spec, runtime_health
from .model import (
    AccessLogConfig,
    AuthConfig,
    BackendConfig,
    Config,
    ConsoleConfig,
    MetricsConfig,
    ModelConfig,
    ModelLimits,
    Pricing,
    RateLimitConfig,
    ResilienceConfig,
    RuntimeConfig,
    ServerConfig,
    TracingConfig,
)

# ---------------------------------------------------------------- the schema

# What a model may declare under `capabilities`: the endpoints it serves (the relayed
# routes' names, inferegator.gateway.endpoints) and the features requests may ask of it
# (inferegator.gateway.features maps request fields onto them).
ENDPOINT_CAPABILITIES = ("chat", "completions", "embeddings", "responses", "generate",
                         "rerank", "score")
FEATURE_CAPABILITIES = ("streaming", "tools", "json_mode", "structured_outputs", "regex",
                        "ebnf", "logprobs", "reasoning", "vision")
CAPABILITIES = ENDPOINT_CAPABILITIES + FEATURE_CAPABILITIES
CAPABILITY_ALIASES = {"json_schema": "structured_outputs"}  # the name before issue 13

SERVER = Section(
    ServerConfig,
    Setting("bind", HostPort(), "Address the gateway listens on."),
    Setting("workers", Int(min=1), "Gunicorn worker processes."),
    Setting("worker_connections", Int(min=1), "Most concurrent connections per gevent worker."),
    Setting("max_body_bytes", Int(min=1), "Largest request body accepted; larger ones get 413."),
    Setting("header_timeout_s", Float(above=0), "Seconds a client has to send its request line "
            "and headers; slower clients are disconnected."),
    Setting("body_timeout_s", Float(above=0), "Seconds a client has to send its whole request "
            "body; slower ones get 408."),
    Setting("graceful_timeout_s", Float(min=0),
            "Seconds requests in flight get to finish on shutdown or reload."),
    Setting("health_check_interval_s", Float(above=0), "Seconds between backend health checks."),
    Setting("load_poll_interval_s", Float(above=0),
            "Seconds between reads of each SGLang runtime's own load (/v1/loads)."),
    Setting("ledger_flush_interval_s", Float(above=0),
            "Seconds between batched usage-ledger writes; a graceful stop writes the rest."),
    Setting("reload_on_change", Bool(), "Reload when the config file changes, as on SIGHUP: "
            "the new file is checked first and refused (the old one keeps serving) if it has "
            "any problem."),
)

PRICING = Section(
    Pricing,
    Setting("prompt", Float(min=0), "USD per 1M prompt tokens."),
    Setting("completion", Float(min=0), "USD per 1M completion tokens."),
    Setting("cached_prompt", Float(min=0), "USD per 1M prompt tokens served from the prefix cache.",
            default_from="prompt"),
)

BACKEND = Section(
    BackendConfig,
    Setting("type", String(), "Backend adapter type (a plugin): `sglang`, `openai`, ..."),
    Setting("url", URL(), "Base URL: an SGLang runtime's root, or an OpenAI API base with /v1."),
    Setting("api_key", String(), "Key sent upstream as a Bearer token; write it as `${ENV_VAR}`."),
    Setting("model", String(), "The upstream's name for the model; unset: the public `id`."),
    Setting("weight", Float(min=0), "Relative share of traffic, for policies that weigh backends."),
    Setting("role", Enum("primary", "fallback"),
            "`fallback` backends get a request only when no primary can take it."),
    Setting("connect_timeout_s", Float(above=0), "Seconds to connect to the backend."),
    Setting("read_timeout_s", Float(above=0), "Seconds to wait for the backend's next bytes."),
    Setting("total_timeout_s", Float(above=0),
            "Seconds a whole answer (a stream included) may take; past them it fails with 504."),
    Setting("max_response_bytes", Int(min=1),
            "Largest non-streamed answer read from the backend; larger ones fail with 502."),
    Setting("max_event_bytes", Int(min=1),
            "Largest single SSE event read from the backend; larger ones fail with 502."),
    Setting("pool_size", Int(min=1), "Keep-alive connections pooled per worker."),
)

MODEL = Section(
    ModelConfig,
    Setting("id", String(), "Public model id that clients send as `model`; unique."),
    Setting("backends", ListOf(BACKEND, min_items=1), "Where this model's requests go."),
    Setting("owned_by", String(), "`owned_by` in /v1/models."),
    Setting("context_length", Int(min=1), "Context window in tokens; unset: unknown."),
    Setting("pricing", PRICING, "Prices for the usage ledger's cost, USD per 1M tokens."),
    Setting("capabilities", ListOf(Enum(*CAPABILITIES, aliases=CAPABILITY_ALIASES)),
            "What the model supports: the endpoints it serves ("
            + ", ".join(f"`{c}`" for c in ENDPOINT_CAPABILITIES) + ") and the features "
            "requests may use (" + ", ".join(f"`{c}`" for c in FEATURE_CAPABILITIES)
            + "). A request to an endpoint the model lacks gets 404 `unsupported_endpoint`; "
            "one using a feature it lacks (`tools`, `response_format`, `logprobs`, an image "
            "part ...) gets 400 `unsupported_parameter` naming the field. `json_schema` is "
            "accepted as the older name of `structured_outputs`."),
    Setting("max_completion_tokens", Int(min=1), "Most tokens one answer may generate; a "
            "larger max_tokens gets 400. Published in /v1/models; unset: the context bounds "
            "it."),
    Setting("routing", String(), "Routing policy (a plugin) that orders this model's backends."),
    Setting("routing_options", FreeDict(), "The routing policy's own settings (see "
            "docs/routing.md)."),
    Setting("default_max_tokens", Int(min=1),
            "Completion tokens to reserve for token limits when a request sets no max_tokens."),
)

class Port(Int):
    """A TCP port number."""

    def __init__(self):
        super().__init__(min=1)
        self.name = "integer 1-65535"

    def check(self, value, where):
        value = super().check(value, where)
        if value is not INVALID and value > 65535:
            return where.fail(f"must be <= 65535, got {value}")
        return value


RUNTIME_TYPES = ("command", "sglang")
# Settings that only a type sglang runtime reads.
SGLANG_ONLY = ("model_path", "served_model_name", "host", "port", "gpu_ids", "tp_size",
               "context_length", "mem_fraction_static", "extra_args", "python",
               "launcher_module")


class RuntimeSection(Section):
    """A `runtimes:` entry: which settings apply depends on its `type`.

    A type sglang runtime's `command` and default `health` are derived from its model, port and
    GPUs (config/launch.py, the one derivation the supervisor launches with too), so every
    loaded RuntimeConfig has a command to show.
    """

    def values(self, value, where):
        values = super().values(value, where)
        if not isinstance(value, dict):
            return values
        kind = "command" if value.get("type") is None else value.get("type")
        if kind not in RUNTIME_TYPES:
            return values  # the type's own check reported it
        found = len(where.problems)
        self._check_settings_for(kind, value, where)
        if values is not INVALID and kind == "sglang" and len(where.problems) == found:
            self._check_sglang(values, value, where)
        if values is INVALID or len(where.problems) > found:
            return INVALID
        if kind == "sglang":
            runtime = self.cls(**values)
            values["command"] = tuple(launch_spec(runtime)[0])
            values["health"] = runtime_health(runtime)
        return values

    @staticmethod
    def _check_settings_for(kind: str, value, where) -> None:
        """Settings that the runtime's type requires, or does not allow."""
        def at(name):
            return where.field(name, key_line(value, name))

        def missing(name, why=""):
            at(name).fail(f"is required{why}, got null" if name in value
                          else f"required field is missing{why}")

        given = {key for key, item in value.items() if item is not None}
        if kind == "command":
            if "command" not in given:
                missing("command")
            for name in SGLANG_ONLY:
                if name in given:
                    at(name).fail("only for type sglang; this runtime's type is 'command'")
            return
        if "command" in given:
            at("command").fail(
                "not allowed with type sglang: the command is derived from model_path, port "
                "and the other settings; put more launch_server flags in extra_args")
        for name in ("model_path", "port"):
            if name not in given:
                missing(name, " for type sglang")

    @staticmethod
    def _check_sglang(values: dict, value, where) -> None:
        """What only the checked values tell: GPUs, tensor parallelism, extra flags."""
        gpu_ids, tp_size = values["gpu_ids"], values["tp_size"]
        at_gpus = where.field("gpu_ids", key_line(value, "gpu_ids"))
        for i, gpu in enumerate(gpu_ids):
            if gpu in gpu_ids[:i]:
                at_gpus.item(i, item_line(value["gpu_ids"], i)).fail(f"GPU {gpu} is listed twice")
        if gpu_ids and tp_size is not None and tp_size > len(gpu_ids):
            where.field("tp_size", key_line(value, "tp_size")).fail(
                f"{tp_size} tensor-parallel ranks need {tp_size} GPUs, but gpu_ids lists "
                f"{len(gpu_ids)}")
        if gpu_ids and "CUDA_VISIBLE_DEVICES" in values["env"]:
            env = where.field("env", key_line(value, "env"))
            env.field("CUDA_VISIBLE_DEVICES", key_line(value["env"], "CUDA_VISIBLE_DEVICES")).fail(
                "is set from gpu_ids; give one or the other")
        at_extra = where.field("extra_args", key_line(value, "extra_args"))
        for i, arg in enumerate(values["extra_args"]):
            field = flag_conflict(arg)
            if field:
                at_extra.item(i, item_line(value["extra_args"], i)).fail(
                    f"{arg.split('=', 1)[0]} is set by the '{field}' setting; set that instead")


RUNTIME = RuntimeSection(
    RuntimeConfig,
    Setting("name", String(), "Name in logs and status; unique."),
    Setting("type", Enum(*RUNTIME_TYPES),
            "`command` runs `command` as written; `sglang` runs SGLang's `python -m "
            "sglang.launch_server` with flags made from the settings marked sglang below "
            "(install it with `pip install inferegator[sglang]`)."),
    Setting("command", ListOf(String(), min_items=1, split=True),
            "Program and its arguments; required for type `command`. Type `sglang` derives it "
            "and does not allow it."),
    Setting("health", URL(), "URL that answers 200 once the runtime is ready; type `sglang`: "
            "unset means `http://<host>:<port>/health`."),
    Setting("restart", Bool(), "Restart the process when it exits."),
    Setting("env", Mapping(EnvValue()), "Extra environment variables for the process."),
    Setting("model_path", String(), "sglang, required: `--model-path`, a local folder or a "
            "Hugging Face repo id."),
    Setting("served_model_name", String(), "sglang: `--served-model-name`, the model name the "
            "runtime answers to (a backend's `model`); unset: the model path."),
    Setting("host", String(), "sglang: `--host`, the address the runtime listens on."),
    Setting("port", Port(), "sglang, required: `--port`."),
    Setting("gpu_ids", ListOf(Int(min=0)), "sglang: the GPUs the runtime may use, passed as "
            "`CUDA_VISIBLE_DEVICES`; unset: inherited from the gateway."),
    Setting("tp_size", Int(min=1), "sglang: `--tp-size`, tensor-parallel ranks; unset: one per "
            "GPU in `gpu_ids` (1 without)."),
    Setting("context_length", Int(min=1), "sglang: `--context-length`; unset: the model's own."),
    Setting("mem_fraction_static", Float(above=0, max=1), "sglang: `--mem-fraction-static`, "
            "the share of GPU memory for weights and KV cache; unset: SGLang's choice."),
    Setting("extra_args", ListOf(String(), split=True), "sglang: more launch_server flags, "
            "passed as written after the derived ones, e.g. `[--trust-remote-code]`."),
    Setting("python", String(), "sglang: the Python interpreter that has SGLang installed; "
            "unset: the gateway's own."),
    Setting("launcher_module", String(), "sglang: the module run with `python -m`; "
            "`inferegator.simulator.launch_server` serves the same entry from the simulator "
            "(no GPU needed)."),
)

AUTH = Section(
    AuthConfig,
    Setting("key_cache_ttl_s", Float(min=0, max=5),
            "Seconds a key lookup is cached per worker: the longest a revoked key keeps "
            "working (at most 5)."),
    Setting("bootstrap_admin_email", String(),
            "Email of the admin created, with a printed key, when the store has no user."),
)

class UrlPrefix(String):
    """A URL path prefix of the gateway's own pages, clear of the API's paths."""

    RESERVED = ("/v1", "/health", "/ready", "/metrics")

    def __init__(self):
        super().__init__()
        self.name = "URL path such as /console"

    def check(self, value, where):
        value = super().check(value, where)
        if value is INVALID:
            return value
        path = value.rstrip("/")
        if not path.startswith("/") or not path[1:] or "//" in path or any(
                c in path for c in "?#{} "):
            return where.fail(f"must be a path such as /console, got {shown(value)}")
        if any(path == r or path.startswith(r + "/") for r in self.RESERVED):
            return where.fail(f"{shown(value)} collides with the API's own paths "
                              f"({', '.join(self.RESERVED)})")
        return path


CONSOLE = Section(
    ConsoleConfig,
    Setting("enabled", Bool(), "Serve the web console (sign up, API keys, usage, models, "
            "playground, admin); `false` removes it."),
    Setting("prefix", UrlPrefix(), "Where the console is mounted; not under /v1."),
    Setting("registration", Enum("open", "invite", "closed"), "Who may sign up: anyone "
            "(`open`), holders of an admin's invitation code (`invite`), or nobody (`closed`: "
            "admins create users)."),
    Setting("base_url", String(), "The API's public base URL shown in snippets and docs, "
            "e.g. `https://api.example.com/v1`; empty: from each request."),
    Setting("session_ttl_h", Float(above=0), "Hours a console sign-in lasts."),
    Setting("secure_cookies", Enum("auto", "always", "never"), "Mark the session cookie "
            "Secure: `auto` when the request came over TLS (or a trusted proxy says so)."),
    Setting("trusted_proxies", ListOf(String()), "Addresses of reverse proxies whose "
            "X-Forwarded-For/-Proto/-Host are believed (client address for sign-in "
            "throttling, TLS for cookies, host for the base URL)."),
    Setting("signin_failures_per_account", Int(min=1), "Failed sign-ins per email within "
            "the window before that email is refused for a while."),
    Setting("signin_failures_per_address", Int(min=1), "Failed sign-ins per client address "
            "within the window before that address is refused for a while."),
    Setting("signin_window_s", Float(above=0), "The window sign-in failures count over."),
    Setting("invite_ttl_days", Float(above=0), "Days an invitation code stays usable."),
    Setting("support_contact", String(), "Where users ask for higher limits (an email or "
            "URL), shown on the API Keys page."),
)

MODEL_LIMITS = Section(
    ModelLimits,
    Setting("requests_per_minute", Int(min=1), "Requests per key per window on this model."),
    Setting("tokens_per_minute", Int(min=1), "Tokens per key per window on this model."),
)

RATELIMIT = Section(
    RateLimitConfig,
    Setting("store", String(), "`memory` (one worker only) or a Redis URL such as "
            "`redis://127.0.0.1:6379/0` (needed with several workers or replicas)."),
    Setting("requests_per_minute", Int(min=1), "Default requests per key per window."),
    Setting("tokens_per_minute", Int(min=1), "Default tokens per key per window."),
    Setting("window_s", Float(above=0), "The sliding window the limits count over; 60 "
            "makes them per minute."),
    Setting("default_max_tokens", Int(min=1), "Completion tokens reserved for a request "
            "that sets no max_tokens, when its model sets no default_max_tokens."),
    Setting("on_store_error", Enum("closed", "open"), "When Redis is unreachable: `closed` "
            "answers 503, `open` admits and logs a warning."),
    Setting("models", Mapping(MODEL_LIMITS), "Extra per-key limits on given model ids."),
)

RESILIENCE = Section(
    ResilienceConfig,
    Setting("health_check_timeout_s", Float(above=0), "Seconds a health probe may take."),
    Setting("unhealthy_after", Int(min=1), "Failed probes in a row that take a backend out."),
    Setting("healthy_after", Int(min=1), "Passed probes in a row that bring it back."),
    Setting("breaker_failures", Int(min=1), "Failed requests in a row (connect errors, "
            "timeouts, 5xx) that open a backend's circuit."),
    Setting("breaker_open_s", Float(above=0), "Seconds a circuit stays open before one "
            "half-open trial request."),
    Setting("max_attempts", Int(min=1), "Backends tried per request (first included), "
            "before the first byte reaches the client."),
    Setting("retry_backoff_ms", Float(min=0), "Wait before the second attempt; doubles per "
            "attempt, with jitter."),
    Setting("retry_budget_ratio", Float(min=0), "Retries may add at most this share of "
            "requests (over 10 s), so failures do not multiply load."),
    Setting("retry_budget_min_per_s", Float(min=0), "Retries always allowed at this rate."),
)

METRICS = Section(
    MetricsConfig,
    Setting("enabled", Bool(), "Serve Prometheus metrics at `/metrics`, summed over every "
            "worker (docs/metrics.md)."),
    Setting("bind", HostPort(), "host:port of a listener of their own (kept off the public "
            "port); unset: `/metrics` on `server.bind`, without authentication."),
    Setting("per_key_labels", Bool(), "Add a `key_id` label to the request and token "
            "counters (one series per key: mind the cardinality)."),
)

ACCESS_LOG = Section(
    AccessLogConfig,
    Setting("format", Enum("auto", "json", "text", "off"), "One line per API request on "
            "standard output: `json` (for log shippers), `text` (for people), `auto` (text "
            "when standard output is a terminal, else json) or `off`."),
)

TRACING = Section(
    TracingConfig,
    Setting("exporter", Enum("none", "console", "otlp"), "Where OpenTelemetry spans (one per "
            "request, one per upstream attempt) go: `none` (W3C traceparent is still "
            "continued and sent upstream), `console` (JSON, to the file `endpoint` or standard "
            "error) or `otlp` (OTLP/HTTP to `endpoint`; needs the `tracing` extra)."),
    Setting("endpoint", String(), "otlp: the collector's traces URL, e.g. "
            "`http://127.0.0.1:4318/v1/traces`; console: a file to append to."),
    Setting("service_name", String(), "The spans' `service.name`."),
)

CONFIG = Section(
    Config,
    Setting("models", ListOf(MODEL, min_items=1, unique="id"), "The models served."),
    Setting("server", SERVER, "HTTP server."),
    Setting("storage", String(), "Database for accounts, keys and the usage ledger: "
            "`sqlite:///path.db` (embedded default) or `postgresql://user@host/db`. A "
            "relative SQLite path (`sqlite:///./x.db`, and the default) resolves against "
            "the config file's folder; in the embedded default config (no `--config`), "
            "against the directory `inferegator` is started in. `sqlite:////abs/x.db` is "
            "absolute."),
    Setting("ledger_journal", String(), "Folder of the workers' usage journals (a row is "
            "journaled before its answer ends, so a killed worker loses none); empty: "
            "`<database file>.ledger-journal` for SQLite, else a folder under the temporary "
            "directory named after the storage URL. A relative folder resolves against the "
            "config file's folder."),
    Setting("ratelimit", RATELIMIT, "Per-key request and token limits."),
    Setting("resilience", RESILIENCE, "Health checks, circuit breakers and retries."),
    Setting("auth", AUTH, "Client authentication."),
    Setting("console", CONSOLE, "The web console for users and admins."),
    Setting("metrics", METRICS, "Prometheus metrics."),
    Setting("access_log", ACCESS_LOG, "The access log."),
    Setting("tracing", TRACING, "W3C trace context and OpenTelemetry spans."),
    Setting("runtimes", ListOf(RUNTIME, unique="name"),
            "Processes the gateway starts and supervises, e.g. simulators or SGLang servers."),
    Setting("plugins", Mapping(FreeDict()), "Each plugin's own settings, by plugin name, "
            "checked against the SETTINGS the plugin declares; `enabled: false` under a "
            "name turns that plugin off (built-ins included, e.g. `auth_api_keys`)."),
    internal=("path", "plugins_source"),
)


def validate(data, problems: list):
    """Config's arguments (all but path) from loaded YAML, or INVALID with `problems` filled
    with (line, field path, message)."""
    where = Where(problems)
    if data is None:
        return where.fail("the file is empty; it needs at least 'models'")
    if not isinstance(data, dict):
        return where.fail(f"the top level must be a mapping of settings, got {shown(data)}")
    return CONFIG.values(data, where)
