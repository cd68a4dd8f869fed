"""Tests of openai_lb._scrub: server and error text never shows a credential, in any form, nor a control character."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from openai_lb._scrub import CUT, MAX_TEXT, error_text, escaped_forms, scrubbed

# How a server or an exception may repeat a secret it got. Written out here, not taken from the module.
SHOWN_AS: dict[str, Callable[[str], str]] = {
    "raw": lambda secret: secret,
    "JSON string": json.dumps,
    "JSON, non-ASCII kept": lambda secret: json.dumps(secret, ensure_ascii=False),
    "URL-quoted": lambda secret: quote(secret, safe=""),
    "URL-quoted, / kept": quote,
    "form-quoted": quote_plus,
    "repr": repr,
    "ascii": ascii,
    "repr in a list": lambda secret: repr([secret]),
    "repr of a longer string with both quotes": lambda secret: repr(f"\"{secret}'"),
    "bytes repr": lambda secret: repr(secret.encode("utf-8", "backslashreplace")),
    "f-string": lambda secret: f"bad key '{secret}'",
}


def forms_of(secret: str) -> set[str]:
    """Every way of showing the secret above, without the quotes and brackets around it."""
    inner = {
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        repr(f"\"{secret}'")[2:-3],
        repr(secret.encode("utf-8", "backslashreplace"))[2:-1],
    }
    return {secret, *inner}


# Often the characters every escaping treats differently: quotes, backslash, slash, percent, plus, space.
secrets = st.text(
    st.one_of(st.sampled_from("'\"\\/%+ é"), st.characters(categories=["L", "M", "N", "P", "S", "Zs"])),
    min_size=4,
    max_size=40,
).filter(str.isprintable)
# Anything around the secret: control characters, escapes, newlines, the secret's own characters.
surroundings = st.text(max_size=60)
shown_as = st.sampled_from(sorted(SHOWN_AS))


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=400, deadline=None)
@given(secret=secrets, before=surroundings, after=surroundings, how=shown_as)
@example(secret="]abc", before="", after="abc", how="raw")  # CUT and what follows spell the secret again
@example(secret="cred", before="", after="", how="raw")  # the secret is inside CUT
@example(secret="k'ey", before="", after="", how="repr of a longer string with both quotes")  # \' inside
@example(secret="ab  cd", before="", after="\x00", how="raw")
def test_scrubbed_text_never_holds_the_secret_in_any_form(secret: str, before: str, after: str, how: str) -> None:
    text = before + SHOWN_AS[how](secret) + after

    out = scrubbed(text, [secret])

    if out is not None:
        for form in forms_of(secret):
            assert form not in out, f"{how}: the form {form!r} of {secret!r} survived in {out!r}"
        assert out.isprintable(), f"a control character survived: {out!r}"
        assert len(out) <= MAX_TEXT


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300), secret=secrets)
def test_scrubbed_text_is_one_short_line_of_printable_characters(text: str, secret: str) -> None:
    out = scrubbed(text, [secret])

    if out is not None:
        assert out.isprintable(), f"a control character survived: {out!r}"
        assert out == " ".join(out.split()), f"not one line with single spaces: {out!r}"
        assert 0 < len(out) <= MAX_TEXT


key_like = st.text(st.sampled_from("0123456789abcdefABCDEF-_."), min_size=16, max_size=64)
plain_text = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789 ,.:"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(secret=key_like, before=plain_text, after=plain_text, how=shown_as)
def test_a_key_in_plain_text_is_cut_and_the_rest_kept(secret: str, before: str, after: str, how: str) -> None:
    assume(secret not in before + after)
    # A key and the text around it share no character with CUT's brackets: nothing is withheld.
    out = scrubbed(f"{before}|{SHOWN_AS[how](secret)}|{after}", [secret])

    assert out is not None, "plain text around a key is shown, with the key cut"
    assert CUT in out, out
    assert secret not in out
    assert out.startswith(" ".join(f"{before}|".split())[: MAX_TEXT - 1]), out


def test_overlapping_occurrences_are_cut_as_one_stretch() -> None:
    assert scrubbed("key abababab end", ["abab"]) == f"key {CUT} end"
    assert scrubbed("key ababab end", ["abab"]) == f"key {CUT} end", "no tail of a second, overlapping occurrence left"


def test_a_secret_split_by_control_characters_is_cut() -> None:
    assert scrubbed("key sec\x1b[0mret-0123 end", ["sec[0mret-0123"]) == f"key {CUT} end"
    assert scrubbed("key secret\x00-0123 end", ["secret-0123"]) == f"key {CUT} end"


def test_text_that_would_spell_the_secret_once_cut_is_withheld() -> None:
    assert scrubbed("x ]abcabcabc", ["]abc"]) is None, "CUT ends in ], and ] followed by abc spells the secret"
    assert scrubbed("x cred", ["cred"]) is None, "CUT itself holds the secret"


def test_every_secret_is_cut_and_empty_ones_ignored() -> None:
    assert scrubbed("one-key-0123 and two-key-4567", ["one-key-0123", "", "two-key-4567"]) == f"{CUT} and {CUT}"


@pytest.mark.parametrize("text", [None, "", " \x00\x1b ", 500, {"message": "key"}])
def test_no_text_to_show_is_none(text: object) -> None:
    assert scrubbed(text, ["secret-key"]) is None


def test_long_text_is_cut_short_after_the_secret_is_cut() -> None:
    out = scrubbed("x" * 150 + " secret-key-0123456789", ["secret-key-0123456789"])

    assert out == "x" * 150 + " [credent…", "the secret is cut before the text is shortened, never half of it"
    assert scrubbed("a" * 500, [], limit=10) == "a" * 9 + "…"


def test_escaped_forms_hold_the_python_json_and_url_forms() -> None:
    forms = escaped_forms("k\\ey/+é'")

    assert {"k\\ey/+é'", "k\\\\ey/+é'", "k\\\\ey/+\\u00e9'", "k%5Cey%2F%2B%C3%A9%27", "k%5Cey/%2B%C3%A9%27"} <= forms
    assert "k\\\\ey/+\\xe9\\'" in forms, "the ascii() form, inside a repr that escapes '"
    assert "" not in escaped_forms("k")


def test_error_text_names_the_type_and_keeps_only_scrubbed_text() -> None:
    assert error_text(ConnectionError("refused by key-0123456789"), ["key-0123456789"]) == (
        f"ConnectionError: refused by {CUT}"
    )
    assert error_text(TimeoutError(), ["key-0123456789"]) == "TimeoutError"
    assert error_text(ValueError("\x1b[2J"), []) == "ValueError: [2J"
