"""metrics (built-in plugin; being written)."""
