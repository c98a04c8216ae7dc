"""access_log (built-in plugin; being written)."""
