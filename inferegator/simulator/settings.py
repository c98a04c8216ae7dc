"""The simulator's settings: declared once here, turned into both the dataclass and `--help`."""

import argparse
import dataclasses
from dataclasses import dataclass, field

from .reasoning import PARSERS as REASONING_PARSERS
from .tool_parsers import PARSERS as TOOL_PARSERS


def _opt(default, help, group="general", flag=None):
    return field(default=default, metadata={"help": help, "group": group, "flag": flag})


@dataclass(frozen=True)
class SimSettings:
    """Everything that shapes one simulated SGLang runtime."""

    host: str = _opt("127.0.0.1", "Address to bind.", "server")
    port: int = _opt(30000, "Port to bind (SGLang's default is 30000).", "server")
    model: str = _opt("sim-model", "Model name served (SGLang's --served-model-name).", "server")
    context_length: int = _opt(32768, "Maximum prompt + completion tokens per request.", "server")
    worker_connections: int = _opt(1000, "Concurrent connections the gevent worker accepts.",
                                   "server")

    instant: bool = _opt(False, "Instant mode: no prefill or decode delays (tests, overhead "
                                "benchmarks). Queueing and the cache still apply.", "timing")
    prefill_tokens_per_s: float = _opt(20000.0, "Prefill rate for prompt tokens not in the "
                                                "prefix cache; sets time to first token.",
                                       "timing")
    decode_ms_per_token: float = _opt(12.0, "Inter-token latency with one running request.",
                                      "timing")
    decode_batch_slope: float = _opt(0.015, "Inter-token latency grows by this fraction per "
                                            "additional running request.", "timing")
    max_running_requests: int = _opt(64, "Requests decoded at once; the rest wait in a FIFO "
                                         "queue.", "timing")
    chunked_prefill_size: int = _opt(8192, "Uncached prompt tokens prefilled per scheduling "
                                           "round (SGLang's --chunked-prefill-size): waiting "
                                           "requests join a round's prefill batch up to this "
                                           "many tokens; a longer prompt is prefilled in "
                                           "chunks over several rounds.", "timing")
    output_tokens_min: int = _opt(16, "Shortest natural answer (tokens) before EOS.", "output")
    output_tokens_max: int = _opt(96, "Longest natural answer (tokens) before EOS.", "output")
    tool_call_parser: str = _opt("none", "SGLang's --tool-call-parser: the model writes "
                                         "tool calls in this family's format and they are "
                                         "parsed into tool_calls (qwen25, qwen, llama3); "
                                         "none (SGLang's default): no parser, tools only "
                                         "shape the prompt.", "output")
    reasoning_parser: str | None = _opt(None, "SGLang's --reasoning-parser: the model thinks "
                                              "first, in <think>...</think> (deepseek-r1, "
                                              "qwen3), split off as reasoning_content.",
                                        "output")

    cache_capacity_tokens: int = _opt(262144, "Prefix cache capacity in tokens "
                                              "(SGLang's max_total_num_tokens); LRU eviction.",
                                      "cache")
    page_size: int = _opt(16, "Tokens per cache block; only whole blocks are cached.", "cache")

    is_embedding: bool = _opt(False, "Serve an embedding model (SGLang's --is-embedding): "
                                     "/v1/embeddings answers; generation routes do not "
                                     "generate.", "embedding")
    embedding_dim: int = _opt(1024, "Length of the embedding vectors (the model's hidden "
                                    "size).", "embedding")
    matryoshka: bool = _opt(False, "The embedding model is a Matryoshka model: /v1/embeddings "
                                   "accepts dimensions <= --embedding-dim (truncated, then "
                                   "renormalized). Without it SGLang refuses dimensions.",
                            "embedding")
    is_reranker: bool = _opt(False, "Serve a cross-encoder reranker (a *ForSequenceClassification "
                                    "model, which SGLang serves as a non-generation model; "
                                    "implies --is-embedding): /v1/rerank scores documents by the "
                                    "query words they share.", "embedding")

    fault_seed: int = _opt(0, "Seed for fault injection: the same seed and request order give "
                              "the same faults.", "faults")
    fault_500_rate: float = _opt(0.0, "Fraction of inference requests answered with 500.",
                                 "faults")
    fault_503_rate: float = _opt(0.0, "Fraction of inference requests answered with 503.",
                                 "faults")
    fault_hang_rate: float = _opt(0.0, "Fraction of inference requests that never answer "
                                       "(until the client goes away).", "faults")
    fault_drop_rate: float = _opt(0.0, "Fraction of inference requests whose connection is "
                                       "dropped mid-answer (mid-stream for streams).", "faults")
    slow_start_s: float = _opt(0.0, "Answer 503 on /health and inference endpoints for this "
                                    "many seconds after start.", "faults")

    def __post_init__(self):
        if self.is_reranker:  # SGLang tells a reranker from its architecture, flag or not
            object.__setattr__(self, "is_embedding", True)

    @property
    def fault_rates(self):
        """The fault kinds with their probabilities, in the order they are drawn."""
        return (("500", self.fault_500_rate), ("503", self.fault_503_rate),
                ("hang", self.fault_hang_rate), ("drop", self.fault_drop_rate))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one command-line flag per SimSettings field, grouped as declared."""
    groups = {}
    for f in dataclasses.fields(SimSettings):
        name = f.metadata["group"]
        group = groups.get(name) or parser.add_argument_group(name)
        groups[name] = group
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            group.add_argument(flag, dest=f.name, action="store_true", help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            if f.type == str | None:  # an optional name (a parser), unset by default
                kind = str
            group.add_argument(flag, dest=f.name, type=kind, default=f.default,
                               help=f"{f.metadata['help']} (default: {f.default})")


def from_arguments(args: argparse.Namespace) -> SimSettings:
    """Build settings from parsed flags, rejecting values that cannot work."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SimSettings)}
    settings = SimSettings(**values)
    problems = []
    if settings.max_running_requests < 1:
        problems.append("--max-running-requests must be at least 1")
    if settings.page_size < 1:
        problems.append("--page-size must be at least 1")
    if settings.chunked_prefill_size < 1:
        problems.append("--chunked-prefill-size must be at least 1")
    if not 1 <= settings.output_tokens_min <= settings.output_tokens_max:
        problems.append("need 1 <= --output-tokens-min <= --output-tokens-max")
    if any(not 0.0 <= rate <= 1.0 for _, rate in settings.fault_rates):
        problems.append("each fault rate must be between 0 and 1")
    elif sum(rate for _, rate in settings.fault_rates) > 1.0:
        problems.append("the fault rates add up to more than 1")
    if settings.decode_ms_per_token < 0 or settings.decode_batch_slope < 0:
        problems.append("--decode-ms-per-token and --decode-batch-slope must not be negative")
    if settings.context_length < 2:
        problems.append("--context-length must be at least 2")
    if settings.cache_capacity_tokens < settings.page_size:
        problems.append("--cache-capacity-tokens must hold at least one page")
    if settings.embedding_dim < 1:
        problems.append("--embedding-dim must be at least 1")
    if settings.prefill_tokens_per_s <= 0:
        problems.append("--prefill-tokens-per-s must be positive")
    if settings.tool_call_parser not in ("none", *TOOL_PARSERS):
        problems.append(f"--tool-call-parser must be one of {', '.join(TOOL_PARSERS)}, none")
    if settings.reasoning_parser not in (None, *REASONING_PARSERS):
        problems.append(f"--reasoning-parser must be one of {', '.join(REASONING_PARSERS)}")
    if problems:
        raise ValueError("; ".join(problems))
    return settings
