"""Validation of the accounts API's request bodies and query strings (and the CLI's input).

Every check raises a 400 ``invalid_request_error`` whose ``param`` names the offending
field, so the admin API, the user API and ``inferegator users/keys`` share one set of
rules. Limits are capped at 2**31 - 1 because PostgreSQL stores them as INTEGER.
"""


import math
import re
from datetime import date

from ..errors import ECHO_CHARS, invalid_request, shown
from .accounts import ROLES

MIN_PASSWORD = 12
MAX_PASSWORD = 1024
MAX_NAME = 100
MAX_INT_LIMIT = 2 ** 31 - 1
MAX_BUDGET_USD = 1e12
INT_LIMITS = ("requests_per_minute", "tokens_per_minute")
LIMITS = (*INT_LIMITS, "monthly_budget_usd", "allowed_models")
USAGE_GROUPS = ("day", "model", "key")
# Domain without a dot is allowed: the bootstrap admin is admin@localhost.
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _type_error(param: str, expected: str):
    return invalid_request(f"Invalid type for '{param}': expected {expected}.", param,
                           "invalid_type")


def _value_error(param: str, message: str):
    return invalid_request(f"Invalid value for '{param}': {message}", param, "invalid_value")


def only(fields: dict, allowed, required=(), where: str = "parameter") -> None:
    """Refuse unknown names first, then missing required ones."""
    for name in fields:
        if name not in allowed:
            name = name[:ECHO_CHARS]
            raise invalid_request(f"Unrecognized request {where}: {shown(name)}.", name,
                                  f"unknown_{where}")
    for name in required:
        if name not in fields:
            raise invalid_request(f"Missing required {where}: '{name}'.", name,
                                  "missing_required_parameter")


def email(value, param: str = "email") -> str:
    if not isinstance(value, str):
        raise _type_error(param, "a string")
    value = value.strip()
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise _value_error(param, "not a valid email address.")
    return value.lower()


def password(value, param: str = "password") -> str:
    if not isinstance(value, str):
        raise _type_error(param, "a string")
    if not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        raise _value_error(param, f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long.")
    return _unicode(value, param)


def _unicode(value: str, param: str) -> str:
    """Refuse lone surrogates (from the CLI's argv; JSON bodies are checked when parsed)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _value_error(param, "must be valid Unicode text.") from None
    return value


def role(value, param: str = "role") -> str:
    if not isinstance(value, str):
        raise _type_error(param, "a string")
    if value not in ROLES:
        raise _value_error(param, f"must be one of {', '.join(ROLES)}, got {shown(value)}.")
    return value


def boolean(value, param: str) -> bool:
    if not isinstance(value, bool):
        raise _type_error(param, "a boolean")
    return value


def text(value, param: str, max_len: int = MAX_NAME) -> str:
    """A non-empty string (an id or a name)."""
    if not isinstance(value, str):
        raise _type_error(param, "a string")
    if not value.strip() or len(value) > max_len:
        raise _value_error(param, f"must be 1 to {max_len} characters long.")
    return _unicode(value, param)


def limit(name: str, value, model_ids):
    """One per-key limit; None clears it (the configured defaults apply)."""
    if value is None:
        return None
    if name in INT_LIMITS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _type_error(name, "an integer")
        if not 1 <= value <= MAX_INT_LIMIT:
            raise _value_error(name, f"must be between 1 and {MAX_INT_LIMIT}, got "
                                     f"{shown(value)}.")
        return value
    if name == "monthly_budget_usd":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _type_error(name, "a number")
        if not 0 <= value <= MAX_BUDGET_USD or not math.isfinite(value):  # big ints: no float
            raise _value_error(name, f"must be between 0 and {MAX_BUDGET_USD:g}, got "
                                     f"{shown(value)}.")
        return float(value)
    return allowed_models(value, model_ids)


def allowed_models(value, model_ids, param: str = "allowed_models") -> list[str]:
    """Model ids the catalog serves, deduplicated in order; at least one (null: all models)."""
    if not isinstance(value, list):
        raise _type_error(param, "an array of model ids, or null for every model")
    if not value:
        raise _value_error(param, "must name at least one model; use null to allow every "
                                  "model.")
    models = []
    for i, model in enumerate(value):
        if not isinstance(model, str):
            raise _type_error(f"{param}[{i}]", "a string")
        if model not in model_ids:
            raise _value_error(f"{param}[{i}]", f"the model {shown(model)} does not exist.")
        if model not in models:
            models.append(model)
    return models


def limits(body: dict, model_ids) -> dict:
    """The limit fields present in body, validated (absent ones are left out)."""
    return {name: limit(name, body[name], model_ids) for name in LIMITS if name in body}


def new_user(body: dict) -> dict:
    """POST /v1/admin/users: {email, password, role?} as create_user's arguments."""
    only(body, ("email", "password", "role"), ("email", "password"))
    return {"email": email(body["email"]), "password": password(body["password"]),
            "role": role(body.get("role", "user"))}


def user_patch(body: dict) -> bool:
    """PATCH /v1/admin/users/{id}: {disabled}; the new disabled state."""
    only(body, ("disabled",), ("disabled",))
    return boolean(body["disabled"], "disabled")


def new_key(body: dict, model_ids, admin: bool) -> dict:
    """POST keys: {user_id, name, limits...} for an admin, {name} for a user's own key."""
    if not admin:
        for name in LIMITS:
            if name in body:
                raise invalid_request(f"'{name}' can only be set by an admin.", name,
                                      "unknown_parameter")
        only(body, ("name",), ("name",))
        return {"name": text(body["name"], "name")}
    only(body, ("user_id", "name", *LIMITS), ("user_id", "name"))
    return {"user_id": text(body["user_id"], "user_id", 254), "name": text(body["name"], "name"),
            **limits(body, model_ids)}


def key_patch(body: dict, model_ids) -> dict:
    """PATCH /v1/admin/keys/{id}: any limits; null clears one."""
    only(body, LIMITS)
    return limits(body, model_ids)


def day(value, param: str) -> str:
    if not isinstance(value, str) or not _DAY.fullmatch(value):
        raise _value_error(param, f"expected a date as YYYY-MM-DD, got {shown(value)}.")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise _value_error(param, f"{shown(value)} is not a calendar date.") from None
    return value


def query(params: dict, allowed) -> dict:
    """Query parameters: only known names, each given once."""
    only(params, allowed, where="parameter")
    for name, value in params.items():
        if not isinstance(value, str):
            raise _value_error(name, "give it once.")
    return params


def usage_query(params: dict) -> dict:
    """GET /v1/me/usage: group_by (day|model|key, default day), start and end days."""
    query(params, ("group_by", "start", "end"))
    group_by = params.get("group_by", "day")
    if group_by not in USAGE_GROUPS:
        raise _value_error("group_by", f"must be one of {', '.join(USAGE_GROUPS)}, got "
                                       f"{shown(group_by)}.")
    start = day(params["start"], "start") if "start" in params else None
    end = day(params["end"], "end") if "end" in params else None
    if start and end and end < start:
        raise _value_error("end", "must not be before 'start'.")
    return {"group_by": group_by, "start_day": start, "end_day": end}
