"""Inferegator: an OpenAI-compatible inference gateway for fleets of SGLang GPU runtimes."""

__version__ = "0.1.0"
