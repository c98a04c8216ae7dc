"""Per-call answer options: how a call's raw output becomes its OpenAI answer."""

from dataclasses import dataclass, field


@dataclass
class Features:
    """Set per call from its request (features.py), shared by its choices."""

    logprobs: bool = False
    top_logprobs: int = 0
    tool_parser: str | None = None  # the detector parsing tool calls, when parsing is on
    tool_names: list = field(default_factory=list)
    split_reasoning: bool = False  # reasoning_content apart from content
    thinking: bool = False  # the request thinks (the parser starts in reasoning)
    stream_reasoning: bool = True
    server_parsers: bool = False  # a reasoning or tool-call parser is configured
    refusal: str | None = None  # the grammar backend's refusal (400, or an error event)
