"""Deterministic, readable model output derived from the prompt and the seed."""

import random
import zlib

from .tokenizer import token_id

_WORDS = (
    "the a model runtime token cache prefix batch request answer question system user "
    "gateway GPU kernel memory latency throughput stream chunk reply server client fleet "
    "router policy replica queue prompt context window layer attention weight value key "
    "simple fast steady careful quiet bright clear small large early late shared local "
    "serves routes reads writes keeps sends holds finds builds measures counts returns "
    "and or but so then while because when if as with from into over under for of to in "
    "on by at is are was were has have can will may should"
).split()


class TextGenerator:
    """Yields tokens of sentence-like text; the same prompt and seed give the same text.

    The natural length (where the model would emit EOS) is drawn from
    [min_tokens, max_tokens] by the same generator.
    """

    __slots__ = ("_rng", "natural_length", "_left", "_sentence_start", "_first")

    def __init__(self, prompt_ids: list[int], seed: int, min_tokens: int, max_tokens: int):
        material = zlib.crc32(bytes(str(prompt_ids[-64:]), "ascii")) ^ (len(prompt_ids) << 32)
        self._rng = random.Random(material * 1_000_003 + seed)
        self.natural_length = self._rng.randint(min_tokens, max_tokens)
        self._left = 0
        self._sentence_start = True
        self._first = True

    def next_token(self) -> tuple[str, int]:
        """The next token's text and id: a word with its leading space, or a full stop."""
        if self._left == 0 and not self._sentence_start:
            self._sentence_start = True
            text = "."
        else:
            word = self._rng.choice(_WORDS)
            if self._sentence_start:
                self._left = self._rng.randint(5, 12)
                word = word.capitalize()
                self._sentence_start = False
            text = word if self._first else " " + word
            self._first = False
            self._left -= 1
        return text, token_id(text)
