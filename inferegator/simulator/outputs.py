"""What the simulated model writes when a request asks for more than free text.

An ``OutputPlan`` (decided when the request is parsed) says whether the model thinks first
and what its answer is: free text (the ``TextGenerator``'s words), a JSON value for a schema,
a string for a regex or an EBNF grammar, or tool calls. Its ``source`` is the token stream the
engine decodes: the same request and seed always give the same tokens, and re-tokenizing the
output gives back its tokens.

A structured answer or tool calls end the output (EOS right after them, whatever
``ignore_eos`` says, as a finished grammar ends generation); free text ends at its natural
length like any answer. With ``ignore_eos`` a regex or grammar that can go on (an unbounded
repeat) does: the model may not stop, so it writes on until the token limit.
"""

import json
import random
import zlib
from dataclasses import dataclass

from . import ebnf_gen, reasoning, regex_gen, schema_gen
from .textgen import TextGenerator
from .tokenizer import token_id, tokenize
from .tool_parsers import render_calls

REASONING_SEED = 7_777  # the thinking's words come from the answer's seed plus this


@dataclass(frozen=True)
class OutputPlan:
    """thinking: the reasoning parser whose model thinks first (None: no thinking).
    kind: "text", "json" (spec: a schema), "regex" (a pattern), "ebnf" (a grammar) or
    "calls" (spec: [(name, parameters schema)], tool_format: the parser's format or None
    for the JSON array of a json_schema constraint)."""

    thinking: str | None = None
    kind: str = "text"
    spec: object = None
    tool_format: str | None = None

    def answer(self, rng: random.Random, extend: bool = False) -> str:
        """The structured answer's text (extend: as long as the structure allows)."""
        if self.kind == "json":
            return json.dumps(schema_gen.instance(self.spec, rng), ensure_ascii=False)
        if self.kind == "regex":
            return regex_gen.generate(self.spec, rng, extend)
        if self.kind == "ebnf":
            return ebnf_gen.generate(self.spec, rng, extend)
        calls = []
        for name, parameters in self.spec:
            try:
                arguments = schema_gen.instance(parameters, rng)
            except schema_gen.SchemaError:  # the model would write something; {} will do
                arguments = {}
            calls.append((name, arguments if isinstance(arguments, dict) else {}))
        return render_calls(self.tool_format, calls)

    def source(self, prompt_ids: list[int], seed: int, min_tokens: int, max_tokens: int,
               ignore_eos: bool = False):
        """The token source for one choice (its seed)."""
        prefix = ""
        if self.thinking:
            words = TextGenerator(prompt_ids, seed + REASONING_SEED, min_tokens, max_tokens)
            thought = "".join(words.next_token()[0] for _ in range(words.natural_length))
            prefix = reasoning.think_block(self.thinking, thought)
        if self.kind == "text":
            tokens = tokenize(prefix)
            tail = TextGenerator(prompt_ids, seed, min_tokens, max_tokens)
            return Scripted(tokens, len(tokens), tail, "\n\n" if prefix else "")
        material = zlib.crc32(bytes(str(prompt_ids[-64:]), "ascii")) ^ (len(prompt_ids) << 32)
        answer = self.answer(random.Random(material * 1_000_003 + seed), ignore_eos)
        joiner = "\n\n" if prefix and self.kind == "calls" else ""
        tokens = tokenize(prefix + joiner + answer)
        think = 0
        if prefix:
            think = next(i + 1 for i, t in enumerate(tokens) if t.endswith(reasoning.END))
        return Scripted(tokens, think, None, "")


class Scripted:
    """Tokens decided in advance, then (optionally) free text.

    ``joiner`` is put in front of the free text's first token (the blank line after the
    thinking), so that the output re-tokenizes into the same tokens.
    """

    __slots__ = ("_tokens", "_at", "_tail", "_joiner", "natural_length", "forced_end",
                 "think_tokens")

    def __init__(self, tokens: list[str], think_tokens: int, tail: TextGenerator | None,
                 joiner: str):
        self._tokens = tokens
        self._at = 0
        self._tail = tail
        self._joiner = joiner
        self.think_tokens = think_tokens
        self.forced_end = tail is None
        self.natural_length = len(tokens) + (tail.natural_length if tail else 0)

    def next_token(self) -> tuple[str, int]:
        if self._at < len(self._tokens):
            text = self._tokens[self._at]
            self._at += 1
            return text, token_id(text)
        text, tid = self._tail.next_token()
        if self._joiner:
            text, self._joiner = self._joiner + text, ""
            tid = token_id(text)
        return text, tid
