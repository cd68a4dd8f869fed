"""Text from a server or an exception, made safe to print: no credential in any form, no control characters.

A careless server may repeat the key it got, escaped as JSON, URL-quoted or as a Python repr; a hostile
one may send terminal escapes. `scrubbed` cuts every such form of the given secrets and every control
character, and keeps the text to one short line.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from urllib.parse import quote, quote_plus

__all__ = ["CUT", "MAX_TEXT", "error_text", "escaped_forms", "scrubbed"]

CUT = "[credential]"
"""What stands where a credential was."""
MAX_TEXT = 160
"""Server text is shown to the user; a runaway error page must not flood the terminal."""


def escaped_forms(secret: str) -> set[str]:
    """The ways a secret can appear in text: as is, and escaped as Python, bytes, JSON and URLs show it."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
    }
    shown = [repr(secret), ascii(secret), repr(secret.encode("utf-8", "backslashreplace"))]
    with contextlib.suppress(UnicodeEncodeError):
        shown.append(repr(secret.encode("latin-1")))
    for text in shown:
        forms |= _repr_bodies(text)
    return {form for form in forms if form}


def _repr_bodies(shown: str) -> set[str]:
    """The inside of a Python repr (``'…'``, ``"…"``, ``b'…'``), and how the same value reads inside a longer
    repr: one that also holds a ``"`` quotes with ``'`` and escapes the ``'`` this one left as is."""
    quote_mark = shown[-1]
    body = shown[shown.index(quote_mark) + 1 : -1]
    return {body, body.replace("'", "\\'")} if quote_mark == '"' else {body}


def scrubbed(text: object, secrets: Iterable[str], *, limit: int = MAX_TEXT) -> str | None:
    """``text`` on one line of at most ``limit`` printable characters, every form of ``secrets`` replaced by
    `CUT`; None when it is not a string, nothing is left, or a form of a secret would still show (the text
    is withheld rather than risk it)."""
    if not isinstance(text, str) or not text:
        return None
    forms = sorted({form for secret in secrets if secret for form in escaped_forms(secret)}, key=len, reverse=True)
    # Cut before and after dropping control characters: they may sit inside a secret, or split one.
    printable = "".join(ch if ch.isprintable() else " " if ch.isspace() else "" for ch in _cut(text, forms))
    text = " ".join(_cut(printable, forms).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    # What was put in can spell a secret again with its neighbours (a secret like "]abc" next to CUT, or
    # inside it): such text is never shown.
    if not text or any(form in text for form in forms):
        return None
    return text


def _cut(text: str, forms: Sequence[str]) -> str:
    """``text`` with every stretch covered by occurrences of forms (overlapping ones too) replaced by `CUT`."""
    spans = sorted((start, start + len(form)) for form in forms for start in _found(text, form))
    kept: list[str] = []
    done = 0
    for start, end in spans:
        if start > done:
            kept += (text[done:start], CUT)
        elif not kept:  # a stretch at the very start
            kept.append(CUT)
        done = max(done, end)
    kept.append(text[done:])
    return "".join(kept)


def _found(text: str, form: str) -> Iterator[int]:
    start = text.find(form)
    while start != -1:
        yield start
        start = text.find(form, start + 1)


def error_text(error: BaseException, secrets: Sequence[str]) -> str:
    """An exception's type, and its text when any is left once scrubbed."""
    said = scrubbed(str(error), secrets)
    return f"{type(error).__name__}: {said}" if said else type(error).__name__
