"""Everything a plugin may use: the one module whose names are promised to plugin authors.

A plugin imports from here and nowhere else in ``inferegator``; what is not listed in
``__all__`` may change in any release. The built-in plugins (``inferegator_plugins``)
are held to the same rule by a test. See docs/hooks.md for every hook with a worked
example, and docs/plugins.md for packaging, settings and testing a plugin.
"""

from . import hookimpl
from .auth import Principal, authenticate, bearer_token
from .backends.base import BackendAdapter
from .body import json_object, read_body, read_json
from .catalog import may_use
from .config.fields import Bool, Enum, Float, Int, ListOf, Mapping, Section, Setting, String
from .config.plugin_settings import plugin_settings
from .errors import (
    GatewayBuildError,
    GatewayError,
    email_taken,
    internal_error,
    invalid_api_key,
    invalid_request,
    model_not_allowed,
    not_found,
    permission_denied,
    upstream_failed,
)
from .gateway.request import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    GENERATE,
    RESPONSES,
    ClientRequest,
    GatewayRequest,
)
from .observability.metrics import GatewayMetrics
from .observability.tracecontext import TraceContext, new_span_id
from .outcome import (
    CLIENT_DISCONNECTED,
    COMPLETED,
    FAILED,
    REJECTED,
    UPSTREAM_FAILED,
    RequestOutcome,
    Usage,
)
from .periodic import every
from .prefix_index.copies import copy_target, is_hot, shared_head
from .prefix_index.pages import (
    covered_chars,
    cuts_within,
    first_page_hash,
    page_hashes,
    prompt_pages,
)
from .prefix_index.stores import Costs, Runtime, open_prefix_index
from .ratelimit.limiter import RateLimiter
from .ratelimit.stores import open_window_store
from .redis_scripts import StoreUnavailable
from .routing import Option, RandomizedPolicy, RoutingPolicy, by_load, content_texts
from .routing_ring import HashRing, RingPolicy, stable_hash
from .store import api_validation as validate
from .store.accounts import LIMIT_FIELDS, ClaimRefused, DuplicateEmail, NotFound
from .store.ledger import month_spend, usage_summary
from .store.secrets import looks_like_key
from .ttl_cache import TTLCache

__all__ = [
    # hooks and the objects they pass
    "hookimpl", "Principal", "ClientRequest", "GatewayRequest", "CHAT", "COMPLETIONS",
    "EMBEDDINGS", "RESPONSES", "GENERATE",
    "RequestOutcome", "Usage", "COMPLETED", "CLIENT_DISCONNECTED", "UPSTREAM_FAILED",
    "REJECTED", "FAILED",
    # authentication and request bodies
    "authenticate", "bearer_token", "looks_like_key", "read_body", "read_json",
    "json_object",
    # errors in OpenAI's shape
    "GatewayError", "invalid_request", "invalid_api_key", "permission_denied",
    "not_found", "email_taken", "model_not_allowed", "upstream_failed", "internal_error",
    "GatewayBuildError",
    # observability: W3C trace context, Prometheus metrics
    "TraceContext", "new_span_id", "GatewayMetrics",
    # settings a plugin declares (SETTINGS = Section(...)) and reads
    "Section", "Setting", "Bool", "Enum", "Float", "Int", "ListOf", "Mapping", "String",
    "plugin_settings",
    # building blocks: backends, routing, limits, accounts and usage
    "BackendAdapter", "RoutingPolicy", "RandomizedPolicy", "RingPolicy", "Option",
    "by_load", "content_texts", "RateLimiter", "open_window_store", "validate", "LIMIT_FIELDS",
    "DuplicateEmail", "ClaimRefused", "NotFound", "usage_summary", "month_spend", "TTLCache",
    "may_use", "every", "page_hashes", "covered_chars", "first_page_hash", "open_prefix_index",
    "Runtime", "Costs", "HashRing", "stable_hash", "cuts_within", "shared_head", "copy_target",
    "is_hot",
    "prompt_pages",
    "StoreUnavailable",
]
