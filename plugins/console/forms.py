"""Form fields the console's pages share: numbers typed as text, where empty means unset."""

from inferegator.plugin import invalid_request

EXAMPLES = {int: "a whole number, such as 60", float: "an amount in US dollars, such as 25 or "
            "12.50"}


def number(name: str, text: str, kind) -> int | float | None:
    """``text`` as ``kind`` (int or float); None when left empty; a 400 naming the field
    otherwise."""
    text = text.strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise invalid_request(f"Invalid value for '{name}': enter {EXAMPLES[kind]}, or leave "
                              "it empty.", name, "invalid_value") from None
