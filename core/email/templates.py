"""Email templates: one text file per kind under templates/, first line `Subject: ...`, placeholders in string.Template syntax.

Every template greets the person by name (P4). Rendering fails loudly when a
placeholder is missing, so a broken template is caught by tests, not users.
"""

from __future__ import annotations

import importlib.resources
import string
from dataclasses import dataclass
from functools import cache

KINDS = ("sign_in_code", "invitation", "waitlist_approved", "deletion_scheduled", "reactivated")


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    body: str


@cache
def _template(kind: str) -> tuple[string.Template, string.Template]:
    if kind not in KINDS:
        raise KeyError(f"unknown email kind {kind!r}")
    text = (importlib.resources.files(__package__) / "templates" / f"{kind}.txt").read_text("utf-8")
    first, _, body = text.partition("\n")
    if not first.startswith("Subject: "):
        raise ValueError(f"template {kind} lacks a Subject line")
    return string.Template(first[len("Subject: ") :]), string.Template(body)


def render(kind: str, *, name: str, **params: str) -> RenderedEmail:
    subject, body = _template(kind)
    values = {"name": name, **params}
    return RenderedEmail(subject=subject.substitute(values).replace("\n", " "), body=body.substitute(values))
