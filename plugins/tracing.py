"""tracing (built-in plugin; being written)."""
