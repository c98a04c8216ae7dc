"""The public model catalog and the API docs, with this deployment's base URL."""

import json
import shlex

from ..web import Page

PLACEHOLDER_KEY = "sk-inf-YOUR_KEY"
PLACEHOLDER_MODEL = "MODEL_ID"
SORTS = {
    "id": lambda m, card: m.id.casefold(),
    "owner": lambda m, card: (m.owned_by or "").casefold(),
    "context": lambda m, card: m.context_length,
    "prompt": lambda m, card: card["pricing"]["prompt"],
    "completion": lambda m, card: card["pricing"]["completion"],
    "cached": lambda m, card: card["pricing"]["cached_prompt"],
    "available": lambda m, card: 0 if m.candidates() else 1,
}
COLUMNS = (("id", "Model id"), ("owner", "Owner"), ("context", "Context length"),
           ("prompt", "Input per 1M"), ("completion", "Output per 1M"),
           ("cached", "Cached input per 1M"), (None, "Capabilities"), ("available", "Status"))
LABELS = {key: label for key, label in COLUMNS if key}


def price(value) -> str:
    """USD per 1M tokens: cents at least, more digits only where the price has them."""
    text = f"{float(value):,.6f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def _json_in_quotes(value: str) -> str:
    """A JSON string that can sit inside a shell's single quotes."""
    return json.dumps(value).replace("'", "\\u0027")


def snippets(base_url: str, key: str, model: str) -> dict:
    """The Python, cURL and streaming examples, filled in and quoted for their language."""
    python = f"""import openai

client = openai.OpenAI(
    base_url={json.dumps(base_url)},
    api_key={json.dumps(key)},
)

response = client.chat.completions.create(
    model={json.dumps(model)},
    messages=[
        {{"role": "system", "content": "You are a helpful assistant."}},
        {{"role": "user", "content": "Explain GPU inference in one sentence."}},
    ],
    temperature=0.7,
    max_tokens=256,
)
print(response.choices[0].message.content)"""
    curl = f"""curl {shlex.quote(base_url + "/chat/completions")} \\
  -H "Authorization: Bearer {key}" \\
  -H "Content-Type: application/json" \\
  -d '{{
    "model": {_json_in_quotes(model)},
    "messages": [
      {{"role": "user", "content": "Hello!"}}
    ]
  }}'"""
    stream = f"""stream = client.chat.completions.create(
    model={json.dumps(model)},
    messages=[{{"role": "user", "content": "Hello!"}}],
    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="")"""
    return {"python": python, "curl": curl, "stream": stream}


def contact_href(contact: str) -> str | None:
    """A link for the support contact when it is a web address or an email address."""
    if contact.startswith(("https://", "http://")):
        return contact
    if "@" in contact and not any(c.isspace() for c in contact):
        return "mailto:" + contact
    return None


def model_limit_text(limits) -> str:
    parts = [f"{value:,} {unit}" for value, unit in (
        (limits.requests_per_minute, "requests"), (limits.tokens_per_minute, "tokens")) if value]
    return " and ".join(parts) + " per minute" if parts else ""


def first_model(catalog) -> str:
    return next(iter(catalog.models), PLACEHOLDER_MODEL)


class Models(Page):
    """Every model with its prices (the same card /v1/models serves), sortable by link."""

    signed_in = False

    def get(self, ctx):
        catalog = self.console.catalog
        rows = [(m, catalog.card(m)) for m in catalog.models.values()]
        sort = ctx.query("sort")
        descending = ctx.query("dir") == "desc"
        if sort in SORTS:
            value = SORTS[sort]
            known = [r for r in rows if value(*r) is not None]
            known.sort(key=lambda r: value(*r), reverse=descending)
            rows = known + [r for r in rows if value(*r) is None]
        else:
            sort, descending = "", False
        ctx.render("models.html", rows=rows, columns=COLUMNS, labels=LABELS, sort=sort,
                   descending=descending, price=price)


class Docs(Page):
    """The API documentation with this deployment's base URL, a real model and its limits."""

    signed_in = False

    def get(self, ctx):
        catalog = self.console.catalog
        base_url = self.console.base_url(ctx.req)
        model = first_model(catalog)
        cards = [catalog.card(m) for m in list(catalog.models.values())[:1]]
        limits = self.console.gateway.config.ratelimit
        ctx.render("docs.html", base_url=base_url, model=model, limits=limits,
                   model_limits=[(model_id, model_limit_text(extra)) for model_id, extra
                                 in sorted(limits.models.items()) if model_limit_text(extra)],
                   code=snippets(base_url, PLACEHOLDER_KEY, model),
                   support=self.console.config.support_contact,
                   support_href=contact_href(self.console.config.support_contact),
                   models_example=json.dumps({"object": "list", "data": cards}, indent=2))
