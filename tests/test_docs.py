"""The docs describe what the code does: the hook reference matches hookspecs.py."""

import inspect
import pathlib
import re

from inferegator import hookspecs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_hook_reference_lists_every_hook_with_its_signature():
    text = (ROOT / "docs" / "hooks.md").read_text()
    block = text.split("<!-- hooks -->", 1)[1].split("<!-- /hooks -->", 1)[0]
    documented = dict(re.findall(r"^- `(inferegator_\w+)\(([^)]*)\)`", block, re.M))
    declared = {name: ", ".join(inspect.signature(func).parameters)
                for name, func in vars(hookspecs).items()
                if name.startswith("inferegator_") and callable(func)}
    assert documented == declared
