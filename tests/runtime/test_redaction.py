"""Redaction of secret values and their encodings, whole and streamed in arbitrary chunks (pure logic)."""

from __future__ import annotations

import base64
import random
import urllib.parse

import pytest

from spinup.runtime.redact import Redactor, secret_forms

VALUES = {"A": "topsecret-value-1", "B": "s3cret", "C": "x/y+z=w&q ü", "D": "topsecret-value-1-longer"}


def test_each_form_of_a_value_is_replaced_by_its_name() -> None:
    redactor = Redactor(VALUES)
    value = VALUES["C"]
    raw = value.encode()
    for form in (
        raw,
        base64.b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw),
        urllib.parse.quote(value, safe="").encode(),
        urllib.parse.quote_plus(value).encode(),
    ):
        assert redactor.redact_bytes(b"<" + form + b">") == b"<[REDACTED:C]>", form
    assert redactor.redact_text(f"héllo {value}!") == "héllo [REDACTED:C]!"


@pytest.mark.parametrize("prefix", [b"token=", b"token=x", b"token=xy"])
def test_a_value_inside_a_longer_base64_text_is_caught_at_every_alignment(prefix: bytes) -> None:
    redactor = Redactor(VALUES)
    encoded = base64.b64encode(prefix + VALUES["A"].encode() + b"; more text")
    redacted = redactor.redact_bytes(encoded)
    assert b"[REDACTED:A]" in redacted
    assert base64.b64encode(VALUES["A"].encode())[4:-4] not in redacted


def test_the_longest_overlapping_value_wins() -> None:
    redactor = Redactor(VALUES)
    assert redactor.redact_text("x topsecret-value-1-longer y") == "x [REDACTED:D] y"
    assert redactor.redact_text("x topsecret-value-1 y") == "x [REDACTED:A] y"


def test_streamed_output_equals_whole_output_for_any_split() -> None:
    redactor = Redactor(VALUES)
    pieces = [v.encode() for v in VALUES.values()] + [base64.b64encode(v.encode()) for v in VALUES.values()]
    rng = random.Random(7)
    for _ in range(400):
        parts = []
        for _ in range(rng.randint(0, 6)):
            parts.append(bytes(rng.choice(b"abcdeops3cret-1 x/y=") for _ in range(rng.randint(0, 25))))
            parts.append(rng.choice(pieces))
        data = b"".join(parts)
        whole = redactor.redact_bytes(data)
        stream = redactor.stream()
        out = b""
        position = 0
        while position < len(data):
            size = rng.choice([1, 1, 2, 3, 7, 64])
            out += stream.feed(data[position : position + size])
            position += size
        out += stream.flush()
        assert out == whole
        for value in VALUES.values():
            assert value.encode() not in out


def test_an_empty_redactor_passes_everything_through() -> None:
    redactor = Redactor({})
    assert not redactor
    assert redactor.redact_bytes(b"anything") == b"anything"
    stream = redactor.stream()
    assert stream.feed(b"abc") == b"abc" and stream.flush() == b""


def test_values_too_short_to_redact_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError) as refused:
        Redactor({"PIN": "123"})
    assert "123" not in str(refused.value) and "PIN" in str(refused.value)


def test_forms_are_unique_and_longest_first() -> None:
    forms = secret_forms("a/b c")
    assert len(forms) == len(set(forms))
    assert [len(f) for f in forms] == sorted((len(f) for f in forms), reverse=True)


def test_text_with_lone_surrogates_is_redacted_and_kept() -> None:
    redactor = Redactor(VALUES)
    assert redactor.redact_text("\ud800 topsecret-value-1 \udcff") == "\ud800 [REDACTED:A] \udcff"
