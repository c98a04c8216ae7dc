"""The simulator's deterministic tokenizer and chat template.

Rule (documented in docs/simulator.md): a token is
  * a special marker such as ``<|user|>``, or
  * a reasoning or tool-call tag: ``<think>``, ``</think>``, ``<tool_call>``,
    ``</tool_call>`` (whitespace before one is a token of its own), or
  * a run of word characters (``\\w+``) with the whitespace before it, or
  * one other non-space character with the whitespace before it, or
  * trailing whitespace.
So ``"Hello, world!"`` is 4 tokens: ``Hello`` ``,`` `` world`` ``!``. Token ids are
CRC-32 of the token text modulo the vocabulary size. Generated text is made of
such tokens, so re-tokenizing a completion gives back its completion_tokens.
"""

import json
import re
import zlib

VOCAB_SIZE = 128256
_TAG = r"</?(?:think|tool_call)>"
_TOKEN = re.compile(rf"<\|\w+\|>|{_TAG}|\s+(?={_TAG})|\s*\w+|\s*[^\w\s]|\s+")


def tokenize(text: str) -> list[str]:
    """Split text into token strings by the documented rule."""
    return _TOKEN.findall(text)


def token_id(token: str) -> int:
    """The id of one token string."""
    return zlib.crc32(token.encode()) % VOCAB_SIZE


def encode(text: str) -> list[int]:
    """Token ids of a text."""
    return [zlib.crc32(t.encode()) % VOCAB_SIZE for t in _TOKEN.findall(text)]


def message_text(content) -> str:
    """The text of an OpenAI message content: a string, a list of parts, or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def render_chat(messages: list[dict], tools: list | None = None, generation_prefix: str = "",
                render_calls=None) -> str:
    """Render a conversation with a Llama-3-like template, ending with the assistant's turn.

    A turn is ``<|role|>`` + content + ``<|eot|>``; the prompt ends with ``<|assistant|>``
    so that a conversation's next turn extends this one's prompt and answer exactly.
    Tools shown to the model come first, as ``<|tools|>`` + their JSON + ``<|eot|>``; an
    assistant turn's ``tool_calls`` follow its content as ``render_calls`` writes them;
    ``generation_prefix`` (e.g. a reasoning model's opened ``<think>``) follows the final
    ``<|assistant|>``.
    """
    parts = ["<|tools|>" + json.dumps(tools, ensure_ascii=False) + "<|eot|>"] if tools else []
    for m in messages:
        text = message_text(m.get("content"))
        if render_calls is not None and m.get("role") == "assistant" and m.get("tool_calls"):
            text += render_calls(m["tool_calls"])
        parts.append(f"<|{m.get('role', 'user')}|>{text}<|eot|>")
    parts.append("<|assistant|>" + generation_prefix)
    return "".join(parts)
