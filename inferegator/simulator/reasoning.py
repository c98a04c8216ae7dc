"""Reasoning models behind SGLang's ``--reasoning-parser`` (deepseek-r1, qwen3).

What the model writes (the simulator's chat template plays the model's):

- ``deepseek-r1``: the template opens the thinking (the prompt ends with ``<think>\\n``), so
  the output is ``<reasoning>\\n</think>\\n\\n<answer>``; it always thinks.
- ``qwen3``: the model opens it itself: ``<think>\\n<reasoning>\\n</think>\\n\\n<answer>``.
  ``chat_template_kwargs: {"enable_thinking": false}`` (or ``reasoning_effort: "none"``)
  turns thinking off: the template then ends the prompt with an empty
  ``<think>\\n\\n</think>\\n\\n`` and the output is the answer alone.

SGLang's ``ReasoningParser`` (``parser/reasoning_parser.py``: ``DeepSeekR1Detector``,
``Qwen3Detector`` over ``BaseReasoningFormatDetector``) splits the output into
``reasoning_content`` (before ``</think>``, the opening tag dropped) and ``content`` (after
it), without trimming whitespace; streamed, reasoning is sent as it comes, holding back a
piece that may be the start of a tag. Reasoning tokens are counted by the scheduler
(``Req.update_reasoning_tokens``): every generated token up to and including ``</think>``
when the request thinks.
"""

PARSERS = ("deepseek-r1", "qwen3")
START, END = "<think>", "</think>"


def thinks(parser: str | None, template_kwargs: dict) -> bool:
    """Whether a request thinks (serving_chat._get_reasoning_from_request)."""
    if parser is None:
        return False
    if parser == "qwen3":
        return template_kwargs.get("enable_thinking") is not False
    return True


def prompt_suffix(parser: str | None, thinking: bool) -> str:
    """What the chat template adds after the assistant's turn marker."""
    if parser == "deepseek-r1":
        return START + "\n"
    if parser == "qwen3" and not thinking:
        return START + "\n\n" + END + "\n\n"
    return ""


def think_block(parser: str, reasoning: str) -> str:
    """The output's thinking, up to and including the closing tag."""
    opening = "" if parser == "deepseek-r1" else START + "\n"
    return opening + reasoning + "\n" + END


def _partial(buffer: str, token: str) -> int:
    """Length of the longest end of buffer that is a strict prefix of token."""
    for i in range(min(len(buffer), len(token) - 1), 0, -1):
        if token.startswith(buffer[-i:]):
            return i
    return 0


class ReasoningSplitter:
    """BaseReasoningFormatDetector for one choice: force_reasoning when the request thinks."""

    def __init__(self, thinking: bool, stream_reasoning: bool = True):
        self.in_reasoning = thinking
        self.stream_reasoning = stream_reasoning
        self.buffer = ""
        self.stripped_start = False

    def split(self, text: str) -> tuple[str | None, str]:
        """(reasoning, content) of a whole output (detect_and_parse)."""
        if not (self.in_reasoning or START in text):
            return None, text
        while text.startswith(START):
            text = text[len(START):]
        if END not in text:
            return text, ""  # cut off while thinking
        reasoning, content = text.split(END, 1)
        return reasoning, content

    def feed(self, delta: str) -> tuple[str, str]:
        """(reasoning, content) pieces for one more delta (parse_streaming_increment)."""
        self.buffer += delta
        text = self.buffer
        if any(tag.startswith(text) and tag != text for tag in (START, END)):
            return "", ""
        if not self.stripped_start and START in text:
            text = self.buffer = text.replace(START, "", 1)
            self.stripped_start = True
            self.in_reasoning = True
        if self.in_reasoning and END in text:
            at = text.find(END)
            self.buffer, self.in_reasoning = "", False
            return text[:at], text[at + len(END):]
        if self.in_reasoning:
            if not self.stream_reasoning:
                return "", ""
            tags = [END] if self.stripped_start else [END, START]
            held = max(_partial(text, tag) for tag in tags)
            self.buffer = text[len(text) - held:]
            return text[:len(text) - held], ""
        self.buffer = ""
        return "", text

    def finish(self) -> tuple[str, str]:
        """What is still held when the output ends (finish)."""
        held, self.buffer = self.buffer, ""
        if not self.in_reasoning:
            return "", held
        if held.startswith(START):
            held = held[len(START):]
        return held, ""
