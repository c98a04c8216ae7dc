"""Copies of a hot shared prefix: a system prompt that one runtime holds and more users
open with than that runtime should serve.

A runtime's cache cannot be moved, only prefilled again. Without a copy, the prompt's
new users either queue where it is held or pay its whole prefill elsewhere, one of them
at a time, each on their own first answer. So when the runtime chosen for a new user of
the prompt (the least used of its holders, give or take their queues) got more than
``(1 + above)`` times the runtimes' mean of recent requests, the gateway prefills the
prompt on the least used runtime that lacks it (one request of its own, ``max_tokens``
1, on no user's path) and records it there once that answer is in; new users of the
prompt then split between its holders (the recent requests lean the choice among equal
holders). One copy costs one prefill of the prompt, the same as one user sent there
uncached would have, and spares that user the wait.
"""

SHARED_ROLES = ("system", "developer")


def shared_head(messages) -> list | None:
    """A conversation's leading system (or developer) messages when this is its first turn
    (no answer in it yet): the part other conversations may open with too."""
    if not isinstance(messages, list):
        return None
    head = 0
    while head < len(messages) and isinstance(messages[head], dict) \
            and messages[head].get("role") in SHARED_ROLES:
        head += 1
    rest = messages[head:]
    if not head or not rest:
        return None
    if any(not isinstance(m, dict) or m.get("role") in ("assistant", "tool") for m in rest):
        return None
    return messages[:head]


def is_hot(recent: list[float], chosen: int, above: float) -> bool:
    """Whether the chosen runtime got more than ``(1 + above)`` times the mean recent
    requests and at least one more than the mean."""
    mean = sum(recent) / len(recent)
    lately = recent[chosen]
    return lately > (1.0 + above) * mean and lately >= mean + 1


def copy_target(held: list[int], recent: list[float], head_cuts: int, chosen: int,
                above: float) -> int | None:
    """The runtime to copy a head of ``head_cuts`` cuts to, or None.

    Only when the chosen runtime holds the head (it is shared: an earlier conversation
    sent it), got more than ``(1 + above)`` times the mean recent requests and at least
    one more than the mean, and some runtime that lacks it got fewer than the mean: the
    one of those that got the fewest.
    """
    if held[chosen] < head_cuts or not is_hot(recent, chosen, above):
        return None
    mean = sum(recent) / len(recent)
    lacking = [(recent[i], i) for i, have in enumerate(held) if have < head_cuts]
    if not lacking:
        return None
    fewest, target = min(lacking)
    return target if fewest < mean else None
