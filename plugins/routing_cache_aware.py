"""The ``cache_aware`` routing policy: one conversation, one runtime, on every replica.

The routing key is the start of the rendered prompt, which is what a runtime's prefix
cache holds: the system prompt(s) and the first user message of a chat or a Responses
input (the same in every turn of a conversation), or the first characters of a
completion prompt, an embedding input or a native /generate ``text`` / ``input_ids``. The key
goes through a bounded-load consistent-hash ring (see inferegator.routing_ring), so any
gateway replica, with no shared state, sends it to the same runtime while loads are
balanced, and a hot prefix spills over to the next runtime instead of swamping one.
"""

from inferegator.plugin import (
    CHAT,
    GENERATE,
    RESPONSES,
    Option,
    RingPolicy,
    content_texts,
    hookimpl,
)


def _text(content, limit: int) -> tuple[str, int]:
    """(the first `limit` characters of a message content, its full length in characters)."""
    pieces, used, length = [], 0, 0
    for text in content_texts(content):
        length += len(text)
        if used < limit:
            pieces.append(text[:limit - used])
            used += len(pieces[-1])
    return "".join(pieces), length


def chat_key(messages: list, system_prompt_min_chars: int, max_chars: int) -> str:
    """What a conversation's turns have in common: the messages before the first user
    message (system, developer), and the first user message unless those alone reach
    system_prompt_min_chars characters (then conversations sharing them share a key)."""
    pieces, used, preamble_chars, first_user = [], 0, 0, None
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "user":
            first_user = message
            break
        text, length = _text(message.get("content"), max_chars - used)
        preamble_chars += length
        if used < max_chars:
            pieces.append(f"<{role}>{text}")
            used += len(pieces[-1])
    if first_user is not None and used < max_chars and not (
            preamble_chars and preamble_chars >= system_prompt_min_chars):
        text, _ = _text(first_user.get("content"), max_chars - used)
        pieces.append(f"<user>{text}")
    return "".join(pieces)[:max_chars]


def prompt_key(prompt, prefix_chars: int) -> str:
    """The first prefix_chars characters of a completion prompt (of the first prompt of a
    batch); for token ids, the first prefix_chars / 4 ids (about 4 characters a token)."""
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):
            return first[:prefix_chars]
        return ",".join(map(str, prompt[:max(1, prefix_chars // 4)]))
    return prompt[:prefix_chars] if isinstance(prompt, str) else ""


class CacheAwarePolicy(RingPolicy):
    """Primaries clockwise on the ring from the request's prefix key, the first under its
    load bound first; then fallbacks in YAML order. ``X-Routing-Key`` overrides the key."""

    options = {
        **RingPolicy.options,
        "system_prompt_min_chars": Option(2000, int, 0),
        "prompt_prefix_chars": Option(1024, int, 1),
        "key_max_chars": Option(4096, int, 1),
    }

    def __init__(self, model):
        super().__init__(model)
        self.system_prompt_min_chars = self.settings["system_prompt_min_chars"]
        self.prompt_prefix_chars = min(self.settings["prompt_prefix_chars"],
                                       self.settings["key_max_chars"])
        self.key_max_chars = self.settings["key_max_chars"]

    def routing_key(self, request) -> str:
        key = self.header_key(request)
        if key is not None:
            return key
        body, endpoint = request.body, request.endpoint
        if endpoint == CHAT:
            return chat_key(body["messages"], self.system_prompt_min_chars, self.key_max_chars)
        if endpoint == RESPONSES:
            items = body["input"]
            if isinstance(items, str):
                items = [{"role": "user", "content": items}]
            instructions = body.get("instructions")
            if isinstance(instructions, str):
                items = [{"role": "system", "content": instructions}, *items]
            return chat_key(items, self.system_prompt_min_chars, self.key_max_chars)
        if endpoint == GENERATE:
            prompt = body.get("text") if body.get("text") is not None else body.get("input_ids")
            return prompt_key(prompt, self.prompt_prefix_chars)
        if "query" in body:  # rerank, score: the query is the shared prefix
            return prompt_key(body["query"], self.prompt_prefix_chars)
        # completions' prompt, embeddings' input
        return prompt_key(body.get("prompt", body.get("input")), self.prompt_prefix_chars)

    def order(self, request, candidates):
        return self.order_by_key(self.routing_key(request), candidates)


@hookimpl(trylast=True)
def inferegator_register_routing_policies():
    return {"cache_aware": CacheAwarePolicy}
