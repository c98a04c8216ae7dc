"""A deterministic string that fully matches a regular expression (SGLang's ``regex``).

Generated from Python's own parse of the pattern (``re._parser``): literals, ``.``,
classes (ranges, ``\\d \\w \\s`` and their negations, negated classes), alternation,
groups (capturing, non-capturing, atomic), and repeats (``* + ? {m,n}``, lazy or
possessive: the minimum plus up to three more). Anchors (``^ $ \\A \\Z``) are accepted;
backreferences, lookarounds, conditionals and ``\\b`` are not (xgrammar refuses them too).
The result is checked with ``re.fullmatch``; a pattern no attempt satisfies is refused.

``extend`` (a request with ``ignore_eos``: the model may not stop while the pattern can go on)
repeats unbounded parts until the string is ``EXTEND_CHARS`` long.
"""

import random
import re

try:  # Python 3.11+
    from re import _constants as C
    from re import _parser as parser
except ImportError:  # pragma: no cover
    import sre_constants as C
    import sre_parse as parser

MAX_EXTRA = 3  # an unbounded or wide repeat adds at most this many beyond its minimum
EXTEND_CHARS = 8000  # how long an extended string grows
_PRINTABLE = [chr(c) for c in range(32, 127)]
_PREFERRED = [c for c in _PRINTABLE if c.isalnum()] + [" "]
_CATEGORIES = {
    C.CATEGORY_DIGIT: lambda c: c.isdigit(),
    C.CATEGORY_NOT_DIGIT: lambda c: not c.isdigit(),
    C.CATEGORY_SPACE: lambda c: c.isspace(),
    C.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
    C.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
    C.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
}
_ANCHORS = (C.AT_BEGINNING, C.AT_BEGINNING_STRING, C.AT_END, C.AT_END_STRING)


class RegexError(ValueError):
    """The pattern is invalid or uses a construct the generator does not support."""


def check(pattern: str) -> None:
    """Raise RegexError when generate() cannot serve pattern."""
    generate(pattern, random.Random(0))


def generate(pattern: str, rng: random.Random, extend: bool = False) -> str:
    """A string s with re.fullmatch(pattern, s)."""
    try:
        tree = parser.parse(pattern)
        compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise RegexError(f"invalid regex: {exc}") from None
    for _ in range(20):
        out: list[str] = []
        _emit(tree, rng, out, [0] if extend else None)
        text = "".join(out)
        if compiled.fullmatch(text):
            return text
    raise RegexError(f"no string matching {pattern!r} could be generated")


def _emit(items, rng, out, grown):
    """Append the characters of a string for items to out; grown: [length so far] when
    extending unbounded repeats, else None."""
    for op, arg in items:
        _item(op, arg, rng, out, grown)


def _put(out, grown, char):
    out.append(char)
    if grown is not None:
        grown[0] += 1


def _item(op, arg, rng, out, grown):
    if op == C.LITERAL:
        _put(out, grown, chr(arg))
    elif op == C.NOT_LITERAL:
        _put(out, grown, rng.choice([c for c in _PREFERRED if ord(c) != arg]))
    elif op == C.ANY:
        _put(out, grown, rng.choice(_PREFERRED))
    elif op == C.IN:
        _put(out, grown, _from_class(arg, rng))
    elif op == C.BRANCH:
        _emit(rng.choice(arg[1]), rng, out, grown)
    elif op == C.SUBPATTERN:
        _emit(arg[-1], rng, out, grown)
    elif op == getattr(C, "ATOMIC_GROUP", None):
        _emit(arg, rng, out, grown)
    elif op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
        low, high, body = arg
        if grown is not None and high == C.MAXREPEAT:
            count = 0
            while count < low or grown[0] < EXTEND_CHARS:
                before = grown[0]
                _emit(body, rng, out, grown)
                count += 1
                if grown[0] == before and count >= low:
                    break  # an empty body never grows the string
            return
        high = low + MAX_EXTRA if high == C.MAXREPEAT else min(high, low + MAX_EXTRA)
        for _ in range(rng.randint(low, high)):
            _emit(body, rng, out, grown)
    elif op == C.AT and arg in _ANCHORS:
        pass
    elif op == C.AT:
        raise RegexError(f"unsupported regex construct: {str(arg).lower()}")
    else:
        raise RegexError(f"unsupported regex construct: {str(op).lower()}")


def _from_class(items, rng) -> str:
    negate = bool(items) and items[0][0] == C.NEGATE
    tests, listed = [], []
    for op, arg in items[1:] if negate else items:
        if op == C.LITERAL:
            listed.append(chr(arg))
            tests.append(lambda c, v=arg: ord(c) == v)
        elif op == C.RANGE:
            lo, hi = arg
            listed.extend(chr(c) for c in range(lo, min(hi, lo + 255) + 1))
            tests.append(lambda c, lo=lo, hi=hi: lo <= ord(c) <= hi)
        elif op == C.CATEGORY and arg in _CATEGORIES:
            tests.append(_CATEGORIES[arg])
        else:
            raise RegexError(f"unsupported regex class member: {str(op).lower()}")
    member = (lambda c: not any(t(c) for t in tests)) if negate \
        else (lambda c: any(t(c) for t in tests))
    candidates = [c for c in _PREFERRED if member(c)] or [c for c in _PRINTABLE if member(c)]
    if not candidates and not negate:
        candidates = listed
    if not candidates:
        raise RegexError("a character class that matches nothing printable")
    return rng.choice(candidates)
