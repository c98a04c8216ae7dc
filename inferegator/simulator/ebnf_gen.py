"""A deterministic string from an EBNF grammar (SGLang's ``ebnf``, xgrammar's GBNF dialect).

Supported: rules ``name ::= expression`` (the start rule is ``root``), string literals
``"..."`` (escapes ``\\" \\\\ \\n \\r \\t \\xHH \\uXXXX``), character classes ``[a-z0-9_]``
and ``[^...]``, rule references, grouping ``( )``, alternation ``|``, repeats ``* + ?``
and ``{m}``, ``{m,}``, ``{m,n}``, and ``#`` comments. Anything else (lookahead ``(= ...)``,
xgrammar's structural extensions) is refused, as is a grammar without ``root``, one that
references an undefined rule or has no finite expansion.

Generation picks alternatives and repeat counts (minimum plus up to three) with the
request's random generator; past a nesting depth or an output size it takes the shortest
expansion, so recursive grammars end. ``extend`` (``ignore_eos``: the model may not stop
while the grammar can go on) repeats unbounded parts until the output is ``EXTEND_CHARS``
long.
"""

import random
import re

MAX_EXTRA = 3
MAX_DEPTH = 24
MAX_CHARS = 2000
EXTEND_CHARS = 8000
_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<define>::=)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.-]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<cls>\[(?:[^\]\\]|\\.)*\])
  | (?P<brace>\{\s*\d+\s*(?:,\s*\d*\s*)?\})
  | (?P<op>[()|*+?])
""", re.X | re.S)
_PREFERRED = [chr(c) for c in range(32, 127) if chr(c).isalnum()] + [" "]
_PRINTABLE = [chr(c) for c in range(32, 127)]


class EbnfError(ValueError):
    """The grammar is invalid or uses something the generator does not support."""


def _unescape(body: str) -> list[str]:
    """The characters of a literal's or class's body, escapes resolved."""
    out, i = [], 0
    simple = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'", "]": "]",
              "[": "[", "-": "-", "^": "^", "/": "/"}
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(body):
            raise EbnfError("a dangling backslash")
        e = body[i + 1]
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e in "xu":
            width = 2 if e == "x" else 4
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise EbnfError(f"a bad \\{e} escape")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:
            raise EbnfError(f"an unknown escape \\{e}")
    return out


def _tokens(text: str):
    pos, tokens = 0, []
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise EbnfError(f"unexpected {text[pos:pos + 10]!r} at offset {pos}")
        pos = match.end()
        kind = match.lastgroup
        if kind != "ws":
            tokens.append((kind, match.group()))
    return tokens


class Grammar:
    """A parsed grammar: rules as nested tuples, and each rule's shortest expansion."""

    def __init__(self, text: str):
        tokens = _tokens(text)
        self.rules: dict[str, tuple] = {}
        starts = [i for i in range(len(tokens) - 1)
                  if tokens[i][0] == "name" and tokens[i + 1][0] == "define"]
        if not starts or starts[0] != 0:
            raise EbnfError("a grammar is a list of rules `name ::= expression`")
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(tokens)
            name = tokens[start][1]
            if name in self.rules:
                raise EbnfError(f"rule {name!r} is defined twice")
            self._toks, self._at = tokens[start + 2:end], 0
            node = self._alternation()
            if self._at != len(self._toks):
                raise EbnfError(f"unexpected {self._toks[self._at][1]!r} in rule {name!r}")
            self.rules[name] = node
        if "root" not in self.rules:
            raise EbnfError("the grammar has no root rule")
        for node in self.rules.values():
            self._check_refs(node)
        self.cost = self._costs()
        if self.cost["root"] == float("inf"):
            raise EbnfError("the root rule has no finite expansion")

    # parsing ----------------------------------------------------------------------------

    def _peek(self):
        return self._toks[self._at] if self._at < len(self._toks) else (None, None)

    def _alternation(self):
        options = [self._sequence()]
        while self._peek() == ("op", "|"):
            self._at += 1
            options.append(self._sequence())
        return options[0] if len(options) == 1 else ("alt", options)

    def _sequence(self):
        items = []
        while True:
            kind, value = self._peek()
            if kind is None or (kind == "op" and value in "|)"):
                break
            items.append(self._repeat(self._atom()))
        if not items:
            raise EbnfError("an empty alternative")
        return items[0] if len(items) == 1 else ("seq", items)

    def _atom(self):
        kind, value = self._peek()
        self._at += 1
        if kind == "string":
            return ("lit", "".join(_unescape(value[1:-1])))
        if kind == "cls":
            body = value[1:-1]
            negate = body.startswith("^")
            chars = _unescape(body[1:] if negate else body)
            ranges, i = [], 0
            while i < len(chars):
                if i + 2 < len(chars) and chars[i + 1] == "-":
                    ranges.append((ord(chars[i]), ord(chars[i + 2])))
                    i += 3
                else:
                    ranges.append((ord(chars[i]), ord(chars[i])))
                    i += 1
            return ("cls", negate, tuple(ranges))
        if kind == "name":
            return ("ref", value)
        if (kind, value) == ("op", "("):
            node = self._alternation()
            if self._peek() != ("op", ")"):
                raise EbnfError("an unclosed parenthesis")
            self._at += 1
            return node
        raise EbnfError(f"unexpected {value!r}")

    def _repeat(self, node):
        kind, value = self._peek()
        if kind == "op" and value in "*+?":
            self._at += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[value]
            return ("rep", node, low, high)
        if kind == "brace":
            self._at += 1
            parts = value[1:-1].replace(" ", "").split(",")
            low = int(parts[0])
            high = low if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
            if high is not None and high < low:
                raise EbnfError(f"a bad repeat {value}")
            return ("rep", node, low, high)
        return node

    def _check_refs(self, node):
        if node[0] == "ref" and node[1] not in self.rules:
            raise EbnfError(f"rule {node[1]!r} is not defined")
        for child in _children(node):
            self._check_refs(child)

    def _costs(self):
        cost = dict.fromkeys(self.rules, float("inf"))
        changed = True
        while changed:
            changed = False
            for name, node in self.rules.items():
                value = self._node_cost(node, cost)
                if value < cost[name]:
                    cost[name], changed = value, True
        return cost

    def _node_cost(self, node, cost):
        kind = node[0]
        if kind == "lit":
            return len(node[1])
        if kind == "cls":
            return 1
        if kind == "ref":
            return cost[node[1]]
        if kind == "seq":
            return sum(self._node_cost(n, cost) for n in node[1])
        if kind == "alt":
            return min(self._node_cost(n, cost) for n in node[1])
        low = node[2]
        return 0 if low == 0 else low * self._node_cost(node[1], cost)

    # generation -------------------------------------------------------------------------

    def generate(self, rng: random.Random, extend: bool = False) -> str:
        out: list[str] = []
        self._extend = extend
        self._budget = EXTEND_CHARS if extend else MAX_CHARS
        self._size = 0
        self._emit(("ref", "root"), rng, 0, out)
        return "".join(out)

    def _put(self, out, text):
        out.append(text)
        self._size += len(text)

    def _emit(self, node, rng, depth, out):
        short = depth > MAX_DEPTH or self._size > self._budget
        kind = node[0]
        if kind == "lit":
            self._put(out, node[1])
        elif kind == "cls":
            self._put(out, _class_char(node[1], node[2], rng))
        elif kind == "ref":
            self._emit(self.rules[node[1]], rng, depth + 1, out)
        elif kind == "seq":
            for child in node[1]:
                self._emit(child, rng, depth + 1, out)
        elif kind == "alt":
            finite = [n for n in node[1] if self._node_cost(n, self.cost) < float("inf")]
            pick = min(finite, key=lambda n: self._node_cost(n, self.cost)) if short \
                else rng.choice(finite)
            self._emit(pick, rng, depth + 1, out)
        else:
            _, child, low, high = node
            if self._extend and high is None and not short \
                    and self._node_cost(child, self.cost) < float("inf"):
                count = 0
                while count < low or self._size < self._budget:
                    before = self._size
                    self._emit(child, rng, depth + 1, out)
                    count += 1
                    if self._size == before and count >= low:
                        break
                return
            if short or self._node_cost(child, self.cost) == float("inf"):
                count = low
            else:
                top = low + MAX_EXTRA if high is None else min(high, low + MAX_EXTRA)
                count = rng.randint(low, top)
            for _ in range(count):
                self._emit(child, rng, depth + 1, out)


def _children(node):
    if node[0] in ("seq", "alt"):
        return node[1]
    if node[0] == "rep":
        return [node[1]]
    return []


def _class_char(negate: bool, ranges, rng) -> str:
    def member(c):
        inside = any(lo <= ord(c) <= hi for lo, hi in ranges)
        return not inside if negate else inside

    candidates = [c for c in _PREFERRED if member(c)] or [c for c in _PRINTABLE if member(c)]
    if not candidates and not negate and ranges:
        lo, hi = ranges[0]
        candidates = [chr(lo + i) for i in range(min(hi - lo + 1, 64))]
    if not candidates:
        raise EbnfError("a character class that matches nothing printable")
    return rng.choice(candidates)


def check(text: str) -> Grammar:
    """The parsed grammar, or EbnfError."""
    try:
        return Grammar(text)
    except RecursionError:
        raise EbnfError("the grammar nests too deeply") from None


def generate(text: str, rng: random.Random, extend: bool = False) -> str:
    return check(text).generate(rng, extend)
