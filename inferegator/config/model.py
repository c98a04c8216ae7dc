"""The validated configuration, as the rest of Inferegator sees it (built by config.loader)."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "127.0.0.1:8080"
    workers: int = 1
    worker_connections: int = 1000
    max_body_bytes: int = 10 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    graceful_timeout_s: float = 30.0
    health_check_interval_s: float = 5.0
    load_poll_interval_s: float = 1.0
    ledger_flush_interval_s: float = 0.2
    reload_on_change: bool = True  # serve reloads when the config file changes (and on SIGHUP)


@dataclass(frozen=True)
class Pricing:
    """USD per 1M tokens."""

    prompt: float = 0.0
    completion: float = 0.0
    cached_prompt: float = 0.0

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float:
        """Cached prompt tokens are billed at the cached price."""
        uncached = max(prompt_tokens - cached_tokens, 0)
        return (uncached * self.prompt + cached_tokens * self.cached_prompt
                + completion_tokens * self.completion) / 1_000_000


@dataclass(frozen=True)
class BackendConfig:
    type: str
    url: str
    api_key: str | None = field(default=None, repr=False)  # a secret: never printed
    model: str | None = None  # the upstream's name for the model; None: the public id
    weight: float = 1.0
    role: str = "primary"  # primary | fallback
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 300.0
    total_timeout_s: float = 600.0
    max_response_bytes: int = 16 * 1024 * 1024
    max_event_bytes: int = 1024 * 1024
    pool_size: int = 64


@dataclass(frozen=True)
class ModelConfig:
    id: str
    backends: tuple[BackendConfig, ...]
    owned_by: str = "inferegator"
    context_length: int | None = None
    pricing: Pricing = field(default_factory=Pricing)
    capabilities: tuple[str, ...] = ("chat", "completions", "streaming")
    routing: str = "round_robin"
    routing_options: dict = field(default_factory=dict)  # the policy's own settings
    default_max_tokens: int | None = None
    max_completion_tokens: int | None = None


@dataclass(frozen=True)
class RuntimeConfig:
    name: str
    command: tuple[str, ...] | None = None  # type sglang: derived (config/launch.py) when loaded
    health: str | None = None  # type sglang: http://host:port/health when loaded
    restart: bool = True
    env: dict = field(default_factory=dict)
    type: str = "command"  # command | sglang
    # type sglang only: `python -m <launcher_module>` with SGLang's launch_server flags.
    model_path: str | None = None
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    gpu_ids: tuple[int, ...] = ()  # -> CUDA_VISIBLE_DEVICES; --tp-size defaults to its length
    tp_size: int | None = None
    context_length: int | None = None
    mem_fraction_static: float | None = None
    extra_args: tuple[str, ...] = ()
    python: str | None = None  # None: the gateway's own interpreter (sys.executable)
    launcher_module: str = "sglang.launch_server"


@dataclass(frozen=True)
class AuthConfig:
    key_cache_ttl_s: float = 2.0  # bounds how long a revoked key keeps working
    bootstrap_admin_email: str = "admin@localhost"


@dataclass(frozen=True)
class ConsoleConfig:
    """The web console (plugins/console)."""

    enabled: bool = True
    prefix: str = "/console"
    registration: str = "open"  # open | invite | closed
    base_url: str = ""  # "": from each request (and trusted proxies' X-Forwarded-*)
    session_ttl_h: float = 24.0
    secure_cookies: str = "auto"  # auto: when the request came over TLS | always | never
    trusted_proxies: tuple[str, ...] = ()
    signin_failures_per_account: int = 5
    signin_failures_per_address: int = 20
    signin_window_s: float = 900.0
    invite_ttl_days: float = 7.0
    support_contact: str = ""


@dataclass(frozen=True)
class ModelLimits:
    """Per-key limits on one model, on top of the key's own."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True)
class RateLimitConfig:
    store: str = "memory"  # memory (one worker) or redis://host:6379/0
    requests_per_minute: int = 60
    tokens_per_minute: int = 100_000
    window_s: float = 60.0
    default_max_tokens: int = 1024
    on_store_error: str = "closed"  # closed: 503; open: admit and log a warning
    models: dict = field(default_factory=dict)  # model id -> ModelLimits


@dataclass(frozen=True)
class ResilienceConfig:
    """Health checks, circuit breakers and retries (docs/routing.md)."""

    health_check_timeout_s: float = 2.0
    unhealthy_after: int = 2  # failed probes that take a backend out
    healthy_after: int = 1  # passed probes that bring it back
    breaker_failures: int = 5  # consecutive failed requests that open a backend's circuit
    breaker_open_s: float = 10.0  # open this long, then one half-open trial
    max_attempts: int = 3  # backends tried per request, the first included
    retry_backoff_ms: float = 25.0  # before the second attempt; doubles, with jitter
    retry_budget_ratio: float = 0.2  # retries may add at most this share of requests
    retry_budget_min_per_s: float = 3.0  # retries always allowed at this rate


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics (docs/metrics.md)."""

    enabled: bool = True
    bind: str | None = None  # host:port of its own listener; None: /metrics on server.bind
    per_key_labels: bool = False  # a key_id label on request and token counters


@dataclass(frozen=True)
class AccessLogConfig:
    format: str = "auto"  # auto: text on a terminal, else json | json | text | off


@dataclass(frozen=True)
class TracingConfig:
    exporter: str = "none"  # none | console | otlp
    endpoint: str = ""  # otlp: the collector's traces URL; console: a file ("" = stderr)
    service_name: str = "inferegator"


@dataclass(frozen=True)
class Config:
    path: str
    models: tuple[ModelConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: str = "sqlite:///./inferegator.db"
    ledger_journal: str = ""  # "": beside an SQLite file, else under the temporary directory
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    runtimes: tuple[RuntimeConfig, ...] = ()
    plugins: dict = field(default_factory=dict)  # plugin name -> its own settings
    # The `plugins:` mapping as read, with its YAML lines: a plugin's settings are checked
    # against its schema once the plugins are known (inferegator.factory).
    plugins_source: dict = field(default_factory=dict, repr=False, compare=False)
