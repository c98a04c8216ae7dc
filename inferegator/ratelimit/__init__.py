"""Per-key rate limits and budgets: sliding-window admission with reconciliation."""
