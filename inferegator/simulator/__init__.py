"""An SGLang-compatible runtime simulator for machines without GPUs (`inferegator sim`)."""
