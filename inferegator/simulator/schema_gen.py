"""A deterministic JSON instance for a JSON Schema: what a grammar-constrained model writes.

``instance(schema, rng)`` follows the schema: ``$ref`` (local JSON pointers, ``$defs``),
``const``, ``enum``, ``allOf`` (merged), ``anyOf``/``oneOf`` (the first non-null branch),
``type`` (a list: its first non-null type; absent: inferred from the keywords, else a
string); objects get every declared property in order (required ones only when nested
more than six deep, so recursive schemas end), arrays ``max(minItems, 1..3)`` items (capped
by ``maxItems``; ``prefixItems``, ``uniqueItems``), strings a few words (``minLength``,
``maxLength``, ``pattern`` through the regex generator, ``format``: date, time, date-time,
email, uri, uuid, ipv4, ...), numbers and integers within their bounds (``multipleOf``),
booleans and nulls. An object without ``properties`` that allows other members (e.g. the
``{"type": "object"}`` of ``json_object``) gets one to three word keys with word values.

``xgrammar_problem`` says which schemas SGLang's default grammar backend refuses
(``constrained/json_schema_validation.py``); ``schema_problem`` is a light check of a tool's
``parameters`` standing in for jsonschema's metaschema check.
"""

import math
import random
import uuid

from . import regex_gen
from .textgen import _WORDS

TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")
# The DB/ORM type names SGLang rewrites in tool schemas (normalize_json_schema_types).
TYPE_ALIASES = {
    "str": "string", "text": "string", "varchar": "string", "char": "string",
    "enum": "string", "uuid": "string", "date": "string", "datetime": "string",
    "time": "string", "timestamp": "string", "bool": "boolean", "int": "integer",
    "bigint": "integer", "smallint": "integer", "long": "integer", "float": "number",
    "double": "number", "decimal": "number", "real": "number", "numeric": "number",
    "list": "array", "arr": "array", "tuple": "array", "set": "array", "dict": "object",
    "map": "object",
}
XGRAMMAR_UNSUPPORTED = ("contains", "dependentRequired", "dependentSchemas", "else", "if",
                        "maxContains", "minContains", "multipleOf", "not", "then",
                        "uniqueItems")
XGRAMMAR_FORMATS = ("date", "date-time", "duration", "email", "hostname", "ipv4", "ipv6",
                    "json-pointer", "relative-json-pointer", "time", "uri", "uri-reference",
                    "uri-template", "uuid")
_ONE = ("additionalItems", "additionalProperties", "contains", "contentSchema", "else", "if",
        "items", "not", "propertyNames", "then", "unevaluatedItems", "unevaluatedProperties")
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("$defs", "definitions", "dependentSchemas", "patternProperties", "properties")
DEEP = 6  # nesting beyond which objects keep only required members and arrays minItems


class SchemaError(ValueError):
    """No instance can be made (an unresolvable $ref, an impossible range, ...)."""


def subschemas(schema, pointer: str = "#"):
    """(subschema, JSON pointer) of every schema in schema, itself first."""
    if not isinstance(schema, dict):
        return
    yield schema, pointer
    for key in _ONE:
        child = schema.get(key)
        if isinstance(child, dict):
            yield from subschemas(child, f"{pointer}/{key}")
        elif key == "items" and isinstance(child, list):
            for i, item in enumerate(child):
                yield from subschemas(item, f"{pointer}/items/{i}")
    for key in _MANY:
        if isinstance(schema.get(key), list):
            for i, child in enumerate(schema[key]):
                yield from subschemas(child, f"{pointer}/{key}/{i}")
    for key in _MAP:
        if isinstance(schema.get(key), dict):
            for name, child in schema[key].items():
                escaped = str(name).replace("~", "~0").replace("/", "~1")
                yield from subschemas(child, f"{pointer}/{key}/{escaped}")


def xgrammar_problem(schema) -> str | None:
    """Why xgrammar would not compile schema (SGLang's message), or None."""
    if not isinstance(schema, (dict, bool)):
        return f"Invalid JSON schema: expected an object, got {type(schema).__name__}"
    for sub, pointer in subschemas(schema):
        where = f"JSON Schema at {pointer} is not supported by xgrammar: "
        unsupported = sorted(set(XGRAMMAR_UNSUPPORTED) & sub.keys())
        if unsupported:
            return where + f"keyword(s) {', '.join(unsupported)} would be ignored"
        kind = sub.get("type")
        stringy = kind is None or kind == "string" or (isinstance(kind, list)
                                                       and "string" in kind)
        if stringy and "format" in sub and sub["format"] not in XGRAMMAR_FORMATS:
            return where + f"string format {sub['format']!r} is not implemented"
        groups = [g for g, keys in (("format", ("format",)), ("pattern", ("pattern",)),
                                    ("minLength/maxLength", ("minLength", "maxLength")))
                  if any(k in sub for k in keys)] if stringy else []
        if len(groups) > 1:
            return where + f"constraints {', '.join(groups)} cannot be enforced together"
        for name in kind if isinstance(kind, list) else [kind]:
            if name is not None and name not in TYPES:
                return f"Unsupported type {name!r} at {pointer}"
    return None


def normalize_types(schema) -> None:
    """Rewrite DB-style type names in place, as SGLang does to tool parameters."""
    for sub, _ in list(subschemas(schema)):
        kind = sub.get("type")
        if isinstance(kind, str):
            sub["type"] = TYPE_ALIASES.get(kind.split("(")[0].strip().lower(), kind)
        elif isinstance(kind, list):
            names = []
            for k in kind:
                k = TYPE_ALIASES.get(k.lower(), k) if isinstance(k, str) else k
                if k not in names:
                    names.append(k)
            sub["type"] = names


def schema_problem(schema) -> str | None:
    """The first thing jsonschema's metaschema check would refuse in schema, or None."""
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f"{schema!r} is not of type 'object', 'boolean'"
    for sub, _ in subschemas(schema):
        kind = sub.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        if kind is not None and not all(k in TYPES for k in kinds):
            return f"{kind!r} is not valid under any of the given schemas"
        for key in ("properties", "$defs", "definitions", "patternProperties"):
            if key in sub and not isinstance(sub[key], dict):
                return f"{sub[key]!r} is not of type 'object'"
            for child in (sub.get(key) or {}).values() if isinstance(sub.get(key), dict) \
                    else ():
                if not isinstance(child, (dict, bool)):
                    return f"{child!r} is not of type 'object', 'boolean'"
        required = sub.get("required")
        if required is not None and not (isinstance(required, list)
                                         and all(isinstance(r, str) for r in required)):
            return f"{required!r} is not of type 'array'"
        if "enum" in sub and not isinstance(sub["enum"], list):
            return f"{sub['enum']!r} is not of type 'array'"
        for key in ("minimum", "maximum", "multipleOf"):
            if key in sub and (isinstance(sub[key], bool)
                               or not isinstance(sub[key], (int, float))):
                return f"{sub[key]!r} is not of type 'number'"
        for key in ("minLength", "maxLength", "minItems", "maxItems", "minProperties",
                    "maxProperties"):
            value = sub.get(key)
            if key in sub and (isinstance(value, bool) or not isinstance(value, int)
                               or value < 0):
                return f"{value!r} is not a 'non-negative integer'"
        for key in ("allOf", "anyOf", "oneOf"):
            if key in sub and not (isinstance(sub[key], list) and sub[key]):
                return f"{sub[key]!r} is not of type 'array'"
    return None


def instance(schema, rng: random.Random):
    """A JSON value valid for schema, the same for the same rng state; SchemaError when the
    schema admits none or is malformed in a way the generator cannot follow."""
    try:
        return _Generator(schema, rng).value(schema, 0)
    except SchemaError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError,
            RecursionError) as exc:
        raise SchemaError(f"cannot follow the schema: {exc!r}") from None


def words(rng: random.Random, low: int = 1, high: int = 3) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


class _Generator:
    def __init__(self, root, rng):
        self.root = root
        self.rng = rng

    def resolve(self, ref):
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"cannot resolve $ref {ref!r}")
        node = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaError(f"cannot resolve $ref {ref!r}")
        return node

    def value(self, schema, depth):
        if depth > 40:
            raise SchemaError("the schema nests too deeply")
        if schema is True or schema == {}:
            return words(self.rng)
        if not isinstance(schema, dict):
            raise SchemaError("a false schema admits no value")
        if "$ref" in schema:
            target = self.resolve(schema["$ref"])
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.value({**target, **rest} if isinstance(target, dict) else target,
                              depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part["$ref"]) if isinstance(part, dict) \
                    and "$ref" in part else part
                merged = _merge(merged, part if isinstance(part, dict) else {})
            return self.value(merged, depth + 1)
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                options = schema[key]
                pick = next((o for o in options if not _is_null(o)), options[0])
                rest = {k: v for k, v in schema.items() if k != key}
                return self.value(_merge(rest, pick) if isinstance(pick, dict) else pick,
                                  depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
        if kind is None:
            kind = _infer(schema)
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, depth)
        if kind in ("number", "integer"):
            return self.number(schema, kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema)

    def object(self, schema, depth):
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        keys = list(properties) + [r for r in required if r not in properties]
        if depth > DEEP:
            keys = [k for k in keys if k in required]
        if isinstance(schema.get("maxProperties"), int):
            keys = sorted(keys, key=lambda k: k not in required)[:schema["maxProperties"]]
        extra = schema.get("additionalProperties", True)
        result = {}
        for key in keys:
            result[key] = self.value(properties.get(key, extra if isinstance(extra, dict)
                                                    else True), depth + 1)
        wanted = schema.get("minProperties", 0)
        if extra is not False and "properties" not in schema and not required \
                and depth <= DEEP:
            wanted = max(wanted, self.rng.randint(1, 3))
        n = 0
        while len(result) < wanted and extra is not False:
            key = self.rng.choice(_WORDS) if n < 20 else f"key{n}"
            n += 1
            if key not in result:
                result[key] = self.value(extra if isinstance(extra, dict) else True,
                                         depth + 1)
        return result

    def array(self, schema, depth):
        prefix = schema.get("prefixItems")
        items = schema.get("items", True)
        if isinstance(items, list):  # the older tuple form
            prefix, items = items, schema.get("additionalItems", True)
        prefix = prefix if isinstance(prefix, list) else []
        low = schema.get("minItems", 0)
        count = max(low, len(prefix), self.rng.randint(1, 3) if depth <= DEEP else 0)
        if isinstance(schema.get("maxItems"), int):
            count = min(count, schema["maxItems"])
        if items is False:
            count = min(count, len(prefix))
        result, seen = [], set()
        for i in range(count):
            part = prefix[i] if i < len(prefix) else items
            for _ in range(10):
                value = self.value(part, depth + 1)
                marker = repr(value)
                if not schema.get("uniqueItems") or marker not in seen:
                    break
            seen.add(marker)
            result.append(value)
        return result

    def number(self, schema, integer):
        low, high = schema.get("minimum"), schema.get("maximum")
        low_open = high_open = False
        if isinstance(schema.get("exclusiveMinimum"), bool):  # draft 4
            low_open = schema["exclusiveMinimum"]
        elif isinstance(schema.get("exclusiveMinimum"), (int, float)):
            low, low_open = schema["exclusiveMinimum"], True
        if isinstance(schema.get("exclusiveMaximum"), bool):
            high_open = schema["exclusiveMaximum"]
        elif isinstance(schema.get("exclusiveMaximum"), (int, float)):
            high, high_open = schema["exclusiveMaximum"], True
        if low is None and high is None:
            low, high = 0, 100
        elif low is None:
            low = high - 100
        elif high is None:
            high = low + 100
        step = schema.get("multipleOf")
        if integer or isinstance(step, (int, float)):
            step = step if isinstance(step, (int, float)) and step > 0 else 1
            first = math.ceil(low / step)
            last = math.floor(high / step)
            if low_open and first * step <= low:
                first += 1
            if high_open and last * step >= high:
                last -= 1
            if integer and step != int(step):
                raise SchemaError("an integer multipleOf must be a whole number")
            if first > last:
                raise SchemaError("no number fits the schema's bounds")
            value = self.rng.randint(first, last) * step
            return int(value) if integer else round(value, 10)
        value = round(self.rng.uniform(low, high), 2)
        if (low_open and value <= low) or (high_open and value >= high) \
                or not low <= value <= high:
            value = (low + high) / 2
        return value

    def string(self, schema):
        rng = self.rng
        if isinstance(schema.get("pattern"), str):
            try:
                return regex_gen.generate(schema["pattern"], rng)
            except regex_gen.RegexError as exc:
                raise SchemaError(str(exc)) from None
        fmt = schema.get("format")
        word = rng.choice(_WORDS).lower()
        date = f"{rng.randint(2000, 2030):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        time = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
        formats = {
            "date": date, "time": time, "date-time": f"{date}T{time}",
            "duration": f"P{rng.randint(1, 30)}D", "email": f"{word}@example.com",
            "hostname": f"{word}.example.com",
            "ipv4": ".".join(str(rng.randint(1, 254)) for _ in range(4)),
            "ipv6": f"2001:db8::{rng.randint(1, 0xffff):x}",
            "uri": f"https://example.com/{word}", "uri-reference": f"/{word}",
            "iri": f"https://example.com/{word}", "iri-reference": f"/{word}",
            "uri-template": "https://example.com/{id}",
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "json-pointer": f"/{word}", "relative-json-pointer": "0",
        }
        text = formats.get(fmt) if isinstance(fmt, str) else None
        if text is None:
            text = words(rng)
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        while len(text) < low:
            text += " " + rng.choice(_WORDS)
        if isinstance(high, int) and len(text) > high:
            text = text[:high]
        if len(text) < low:
            raise SchemaError("no string fits minLength and maxLength")
        return text


def _is_null(schema) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _infer(schema) -> str:
    if any(k in schema for k in ("properties", "required", "additionalProperties",
                                 "minProperties", "maxProperties", "patternProperties")):
        return "object"
    if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum",
                                 "exclusiveMaximum", "multipleOf")):
        return "number"
    return "string"


def _merge(base: dict, more: dict) -> dict:
    """allOf: one schema with both schemas' keywords (properties and required joined)."""
    merged = {**base, **more}
    if isinstance(base.get("properties"), dict) and isinstance(more.get("properties"), dict):
        merged["properties"] = {**base["properties"], **more["properties"]}
    if isinstance(base.get("required"), list) and isinstance(more.get("required"), list):
        merged["required"] = list(dict.fromkeys(base["required"] + more["required"]))
    return merged
