"""Durations as OpenAI writes them in x-ratelimit-reset-*: 12ms, 1s, 1.5s, 6m0s."""


def format_duration(ms: float) -> str:
    ms = max(int(round(ms)), 0)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        seconds = ms / 1000
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(ms, 60_000)
    return f"{minutes}m{rest // 1000}s"
