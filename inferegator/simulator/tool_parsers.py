"""The tool-call formats the simulator's model writes, and SGLang's parsing of them.

A simulator started with ``--tool-call-parser NAME`` writes tool calls the way the model
family behind that SGLang parser does, and turns its own output back into OpenAI
``tool_calls`` the way SGLang 0.5.23's detector does (``function_call/``):

- ``qwen25`` / ``qwen`` (``Qwen25Detector``): each call is
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, calls separated by
  ``\\n``;
- ``llama3`` (``Llama32Detector``): ``{"name": ..., "parameters": {...}}``, calls separated
  by ``;``.

Non-streamed, the text before the first call is the content (``detect_and_parse``).
Streamed, the detector sees the output token by token (``BaseFormatDetector.
parse_streaming_increment``): a call's first delta carries its name and empty arguments
once the name is complete, then the arguments follow as the growing common prefix of
``json.dumps`` of the partially parsed arguments; a call's last piece is sent when its JSON
object is complete (or, when the answer ends early, by ``_check_for_unstreamed_tool_args``).
"""

import json
import re

PARSERS = ("qwen25", "qwen", "llama3")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WS = " \t\n\r"


def render_calls(parser: str | None, calls: list[tuple[str, dict]]) -> str:
    """The text the model writes for calls [(name, arguments)] in parser's format.

    No parser: the JSON array SGLang's json_schema constraint asks for when tool_choice is
    "required" or names a function (``get_json_schema_constraint``).
    """
    if parser is None:
        return json.dumps([{"name": n, "parameters": a} for n, a in calls], ensure_ascii=False)
    if parser == "llama3":
        return ";".join(json.dumps({"name": n, "parameters": a}, ensure_ascii=False)
                        for n, a in calls)
    return "\n".join("<tool_call>\n" + json.dumps({"name": n, "arguments": a},
                                                  ensure_ascii=False) + "\n</tool_call>"
                     for n, a in calls)


# -- partial JSON, as partial_json_parser reads a prefix (Allow.ALL, or without STR) --------


class Malformed(ValueError):
    """The text is not (the start of) a JSON value."""


class _Incomplete(Exception):
    """The input ended before a value could start."""


def partial_loads(text: str, partial_strings: bool) -> tuple[object, int]:
    """(value, end) of the JSON value that text starts with, complete or not.

    A complete value followed by more text ends where it ends; an incomplete one is read
    as far as it goes (end = len(text)): unfinished members and elements are dropped,
    numbers and literals taken as far as they are valid, strings cut (only when
    partial_strings; otherwise an unfinished string drops its member).
    """
    i = _skip(text, 0)
    try:
        value, end, _ = _value(text, i, partial_strings)
    except _Incomplete:
        raise Malformed("no value") from None
    if end < len(text):
        return value, end
    return value, len(text)


def is_complete_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def _skip(text, i):
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _value(text, i, partial_strings):
    """(value, end, complete); _Incomplete when nothing of a value is there yet."""
    if i >= len(text):
        raise _Incomplete
    c = text[i]
    if c == "{":
        return _object(text, i + 1, partial_strings)
    if c == "[":
        return _array(text, i + 1, partial_strings)
    if c == '"':
        value, end, complete = _string(text, i)
        if not complete and not partial_strings:
            raise _Incomplete
        return value, end, complete
    if c == "-" or c.isdigit():
        match = _NUMBER.match(text, i)
        if not match:
            if text[i:] == "-":
                raise _Incomplete
            raise Malformed(f"bad number at {i}")
        end = match.end()
        raw = match.group()
        value = float(raw) if any(ch in raw for ch in ".eE") else int(raw)
        return value, end, end < len(text)
    for word, value in (("true", True), ("false", False), ("null", None)):
        if text.startswith(word, i):
            return value, i + len(word), True
        if word.startswith(text[i:]):
            return value, len(text), False
    raise Malformed(f"unexpected character {c!r} at {i}")


def _string(text, i):
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == '"':
            return json.loads(text[i:j + 1]), j + 1, True
        j += 1
    body = text[i + 1:]
    for cut in range(len(body), max(-1, len(body) - 7), -1):  # drop an unfinished escape
        try:
            return json.loads('"' + body[:cut] + '"'), len(text), False
        except ValueError:
            continue
    return "", len(text), False


def _object(text, i, partial_strings):
    result = {}
    i = _skip(text, i)
    if i < len(text) and text[i] == "}":
        return result, i + 1, True
    while True:
        i = _skip(text, i)
        if i >= len(text):
            return result, len(text), False
        if text[i] != '"':
            raise Malformed(f"expected a key at {i}")
        key, i, complete = _string(text, i)
        if not complete:
            return result, len(text), False
        i = _skip(text, i)
        if i >= len(text):
            return result, len(text), False
        if text[i] != ":":
            raise Malformed(f"expected ':' at {i}")
        try:
            value, i, complete = _value(text, _skip(text, i + 1), partial_strings)
        except _Incomplete:
            return result, len(text), False
        result[key] = value
        if not complete:
            return result, len(text), False
        i = _skip(text, i)
        if i >= len(text):
            return result, len(text), False
        if text[i] == "}":
            return result, i + 1, True
        if text[i] != ",":
            raise Malformed(f"expected ',' or '}}' at {i}")
        i += 1


def _array(text, i, partial_strings):
    result = []
    i = _skip(text, i)
    if i < len(text) and text[i] == "]":
        return result, i + 1, True
    while True:
        try:
            value, i, complete = _value(text, _skip(text, i), partial_strings)
        except _Incomplete:
            return result, len(text), False
        result.append(value)
        if not complete:
            return result, len(text), False
        i = _skip(text, i)
        if i >= len(text):
            return result, len(text), False
        if text[i] == "]":
            return result, i + 1, True
        if text[i] != ",":
            raise Malformed(f"expected ',' or ']' at {i}")
        i += 1


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _partial_suffix(buffer: str, token: str) -> int:
    """Length of the end of buffer that is a strict prefix of token (the shortest, as
    BaseFormatDetector._ends_with_partial_token checks)."""
    for i in range(1, min(len(buffer) + 1, len(token))):
        if token.startswith(buffer[-i:]):
            return i
    return 0


# -- detectors --------------------------------------------------------------------------


class ToolDelta:
    """One streamed tool-call piece: the call's index, its name (first piece only) and an
    arguments fragment."""

    __slots__ = ("index", "name", "arguments")

    def __init__(self, index: int, name: str | None, arguments: str):
        self.index, self.name, self.arguments = index, name, arguments


class Detector:
    """BaseFormatDetector's streaming state machine over one choice's output."""

    bot_token = ""
    eot_token = ""
    separator = ", "

    def __init__(self, tool_names: list[str]):
        self.names = set(tool_names)
        self.buffer = ""
        self.current = -1  # the call being streamed
        self.name_sent = False
        self.previous: list[dict] = []  # last parsed state of each call
        self.streamed: list[str] = []  # arguments text sent for each call

    def has_tool_call(self, text: str) -> bool:
        return self.bot_token in text

    # non-streamed --------------------------------------------------------------------

    def calls_in(self, objects) -> list[tuple[str, str]]:
        """(name, arguments JSON) of the objects that call a declared tool (parse_base_json)."""
        calls = []
        for obj in objects:
            if not isinstance(obj, dict):
                continue
            name = obj.get("name")
            if name and name in self.names:
                arguments = obj.get("parameters") or obj.get("arguments", {})
                calls.append((name, json.dumps(arguments, ensure_ascii=False)))
        return calls

    def parse(self, text: str) -> tuple[str, list[tuple[str, str]]]:
        raise NotImplementedError

    # streamed ------------------------------------------------------------------------

    def increment(self, new_text: str) -> tuple[str, list[ToolDelta]]:
        """(normal text, tool-call deltas) after one more piece of output."""
        self.buffer += new_text
        text = self.buffer
        if not (self.has_tool_call(text)
                or (self.current > 0 and text.startswith(self.separator))):
            if _partial_suffix(self.buffer, self.bot_token):
                return "", []
            normal, self.buffer = self.buffer, ""
            if self.eot_token and self.eot_token in normal:
                normal = normal.replace(self.eot_token, "")
            return normal, []
        try:
            by_separator = self.current > 0 and text.startswith(self.separator)
            if by_separator:
                start = len(self.separator)
            else:
                at = text.find(self.bot_token)
                start = at + len(self.bot_token) if at != -1 else 0
            if start >= len(text):
                return "", []
            try:
                obj, end = partial_loads(text[start:], self.name_sent)
            except Malformed:
                if not (by_separator and self.bot_token in text):
                    raise
                start = text.find(self.bot_token) + len(self.bot_token)
                if start >= len(text):
                    return "", []
                obj, end = partial_loads(text[start:], self.name_sent)
        except Malformed:
            return "", []
        if not isinstance(obj, dict) or not obj:
            return "", []
        complete = is_complete_json(text[start:start + end])
        if "name" in obj and obj["name"] not in self.names:
            self.buffer, self.current, self.name_sent = "", -1, False
            if self.streamed:
                self.streamed.pop()
            return "", []
        if "parameters" in obj:
            obj["arguments"] = obj["parameters"]
        if not self.name_sent:
            name = obj.get("name")
            if not name:
                return "", []
            if self.current == -1:
                self.current = 0
            while len(self.streamed) <= self.current:
                self.streamed.append("")
            self.name_sent = True
            return "", [ToolDelta(self.current, name, "")]
        arguments = obj.get("arguments")
        if arguments is None:
            return "", []
        index = self.current
        sent = len(self.streamed[index])
        now = json.dumps(arguments, ensure_ascii=False)
        before = self.previous[index].get("arguments") if index < len(self.previous) else None
        diff = None
        if complete:
            diff = now[sent:]
            self.buffer = text[start + end:]
        elif before:
            then = json.dumps(before, ensure_ascii=False)
            if now != then:
                diff = _common_prefix(then, now)[sent:]
        while len(self.previous) <= index:
            self.previous.append({})
        self.previous[index] = obj
        if complete:
            self.name_sent = False
            self.current += 1
        if diff is None:
            return "", []
        self.streamed[index] += diff
        return "", [ToolDelta(index, None, diff)]

    def finish(self) -> tuple[str, list[ToolDelta]]:
        """What the detector flushes at the end of the stream (BaseFormatDetector.finish)."""
        return "", []

    def unstreamed(self) -> ToolDelta | None:
        """_check_for_unstreamed_tool_args: the rest of the last call's arguments."""
        if not self.previous or not self.streamed:
            return None
        index = len(self.previous) - 1
        if index >= len(self.streamed):
            return None
        expected = self.previous[index].get("arguments", {})
        if not isinstance(expected, str):
            expected = json.dumps(expected, ensure_ascii=False)
        actual = self.streamed[index]
        rest = expected[len(actual):] if expected.startswith(actual) else ""
        if not rest:
            return None
        self.streamed[index] += rest
        return ToolDelta(index, None, rest)


class Qwen25(Detector):
    bot_token = "<tool_call>\n"
    eot_token = "\n</tool_call>"
    separator = "\n"
    _end = "</tool_call>"

    def __init__(self, tool_names):
        super().__init__(tool_names)
        self.normal_buffer = ""

    def parse(self, text):
        at = text.find(self.bot_token)
        if at == -1:
            return text, []
        pattern = re.escape(self.bot_token) + "(.*?)" + re.escape(self.eot_token)
        objects = []
        for block in re.findall(pattern, text, re.DOTALL):
            try:
                objects.append(json.loads(block.strip()))
            except ValueError:
                continue
        return text[:at].strip(), self.calls_in(objects)

    def increment(self, new_text):
        normal, deltas = super().increment(new_text)
        if normal:  # hold back what may be the start of "</tool_call>"
            self.normal_buffer += normal
            if self._end in self.normal_buffer:
                normal, self.normal_buffer = self.normal_buffer.replace(self._end, ""), ""
            else:
                held = _partial_suffix(self.normal_buffer, self._end)
                cut = len(self.normal_buffer) - held
                normal, self.normal_buffer = (self.normal_buffer[:cut],
                                              self.normal_buffer[cut:])
        return normal, deltas


class Llama3(Detector):
    bot_token = "<|python_tag|>"
    separator = ";"

    def has_tool_call(self, text):
        return self.bot_token in text or text.startswith("{")

    def parse(self, text):
        if not self.has_tool_call(text):
            return text, []
        if self.bot_token in text:
            normal, actions = text.split(self.bot_token, 1)
        else:
            normal, actions = "", text
        decoder = json.JSONDecoder()
        objects, i, safe = [], 0, 0
        while i < len(actions):
            try:
                obj, end = decoder.raw_decode(actions[i:])
            except ValueError:
                following = actions.find('{"name":', i + 1)
                if following == -1:
                    break
                i = following
                continue
            objects.append(obj)
            i += end + len(self.separator)
            safe = i
        trailing = actions[safe:].strip() if safe < len(actions) else ""
        return normal + trailing, self.calls_in(objects) if objects else []


def detector(parser: str, tool_names: list[str]) -> Detector:
    return (Llama3 if parser == "llama3" else Qwen25)(tool_names)
