"""Inferegator's configuration: load_config() validates the YAML into frozen dataclasses."""

from .loader import ConfigError, Problem, load_config, parse_config
from .model import (
    AuthConfig,
    BackendConfig,
    Config,
    ModelConfig,
    Pricing,
    RuntimeConfig,
    ServerConfig,
)

__all__ = [
    "AuthConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "ModelConfig",
    "Pricing",
    "Problem",
    "RuntimeConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
]
