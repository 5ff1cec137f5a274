"""Secret redaction checked against a brute-force reference: forms, alignments, overlaps, any chunking, speed."""

from __future__ import annotations

import base64
import itertools
import random
import time
import urllib.parse
from collections.abc import Mapping

import pytest

from spinup.runtime.redact import Redactor, secret_forms

SPECIAL = "p/a+s=s w&o?r#d-ü€"  # '/', '+', '=', space, '&' and non-ASCII: every encoding differs from the raw value
SECRETS = {
    "ALPHA": "alpha-token-0123456789",
    "ALPHA_LONG": "alpha-token-0123456789-extended",  # contains ALPHA: the longer one must win
    "SPECIAL": SPECIAL,
    "UNI": "schlüssel-日本語-ключ",
    "SHORT": "k3y9",
}


def _reference(data: bytes, secrets: Mapping[str, str]) -> bytes:
    """Scan left to right; at each position the longest form of any secret wins, else the byte is kept."""
    forms = sorted(
        ((form, f"[REDACTED:{name}]".encode()) for name, value in secrets.items() for form in secret_forms(value)),
        key=lambda pair: -len(pair[0]),
    )
    out = bytearray()
    position = 0
    while position < len(data):
        for form, marker in forms:
            if data.startswith(form, position):
                out += marker
                position += len(form)
                break
        else:
            out.append(data[position])
            position += 1
    return bytes(out)


def _stream(redactor: Redactor, chunks: list[bytes]) -> bytes:
    stream = redactor.stream()
    out: bytes = b"".join(stream.feed(chunk) for chunk in chunks) + stream.flush()
    return out


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` cut at random points: sometimes into single bytes, sometimes into a few pieces, sometimes whole."""
    mode = rng.random()
    if mode < 0.2:
        return [data[i : i + 1] for i in range(len(data))]
    if mode < 0.3:
        return [data]
    cuts = sorted(rng.sample(range(len(data) + 1), rng.randint(0, min(len(data) + 1, 12))))
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def test_secret_forms_are_the_value_its_base64_and_url_encodings_unique_and_longest_first() -> None:
    raw = SPECIAL.encode()
    forms = secret_forms(SPECIAL)
    expected = {
        raw,
        base64.b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        urllib.parse.quote(SPECIAL, safe="").encode(),
        urllib.parse.quote_plus(SPECIAL).encode(),
    }
    assert expected <= set(forms)
    assert len(forms) == len(set(forms))
    assert [len(form) for form in forms] == sorted((len(form) for form in forms), reverse=True)
    assert all(isinstance(form, bytes) and form for form in forms)


def test_embedded_base64_parts_are_only_those_of_at_least_eight_characters() -> None:
    raw = b"abcd"  # 4 bytes: at most 5 characters depend on the value alone, too few to tell from noise
    assert set(secret_forms("abcd")) == {raw, base64.b64encode(raw), base64.b64encode(raw).rstrip(b"=")}
    value = SECRETS["ALPHA"].encode()
    forms = set(secret_forms(SECRETS["ALPHA"]))
    for shift in (1, 2):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * shift + value)
            assert encoded[-(-8 * shift // 6) : 8 * (shift + len(value)) // 6] in forms


@pytest.mark.parametrize(
    "form",
    [
        SPECIAL.encode(),
        base64.b64encode(SPECIAL.encode()),
        base64.b64encode(SPECIAL.encode()).rstrip(b"="),
        base64.urlsafe_b64encode(SPECIAL.encode()),
        base64.urlsafe_b64encode(SPECIAL.encode()).rstrip(b"="),
        urllib.parse.quote(SPECIAL, safe="").encode(),
        urllib.parse.quote_plus(SPECIAL).encode(),
    ],
    ids=["raw", "b64", "b64-unpadded", "urlsafe", "urlsafe-unpadded", "quote", "quote_plus"],
)
def test_every_form_of_a_value_is_replaced_by_its_name(form: bytes) -> None:
    redactor = Redactor(SECRETS)
    assert redactor.redact_bytes(b"before " + form + b" after") == b"before [REDACTED:SPECIAL] after"
    assert redactor.redact_text("before " + form.decode() + " after") == "before [REDACTED:SPECIAL] after"


def test_url_encoded_values_inside_a_query_string_are_replaced() -> None:
    redactor = Redactor(SECRETS)
    url = (
        "https://example.com/cb?code="
        + urllib.parse.quote(SPECIAL, safe="")
        + "&state="
        + urllib.parse.quote_plus(SPECIAL)
        + "&x=1"
    )
    assert redactor.redact_text(url) == "https://example.com/cb?code=[REDACTED:SPECIAL]&state=[REDACTED:SPECIAL]&x=1"


@pytest.mark.parametrize("urlsafe", [False, True], ids=["standard", "urlsafe"])
@pytest.mark.parametrize("prefix", [b"token=", b"token=x", b"token=xy", b"", b"a", b"ab", b"Authorization: "])
@pytest.mark.parametrize("suffix", [b"", b"\n", b"; more text after it"])
def test_a_value_inside_a_longer_base64_text_is_caught_at_every_alignment(
    prefix: bytes, suffix: bytes, urlsafe: bool
) -> None:
    value = SECRETS["ALPHA"].encode()
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    encoded = encode(prefix + value + suffix)
    redacted = Redactor(SECRETS).redact_bytes(encoded)
    assert redacted.count(b"[REDACTED:ALPHA]") == 1
    before, after = redacted.split(b"[REDACTED:ALPHA]")
    # Every character whose six bits come only from the value is gone: what is left before the marker
    # holds bits of the prefix, what is left after it holds bits of the suffix (and padding).
    assert len(before) <= -(-8 * len(prefix) // 6)
    assert len(after) <= len(encoded) - 8 * (len(prefix) + len(value)) // 6
    assert encoded.startswith(before) and encoded.endswith(after)


def test_a_base64_value_is_caught_in_random_surroundings() -> None:
    rng = random.Random(11)
    value = SECRETS["UNI"].encode()
    redactor = Redactor(SECRETS)
    for _ in range(200):
        prefix = rng.randbytes(rng.randint(0, 9))
        suffix = rng.randbytes(rng.randint(0, 9))
        encode = rng.choice([base64.b64encode, base64.urlsafe_b64encode])
        encoded = encode(prefix + value + suffix)
        redacted = redactor.redact_bytes(encoded)
        assert b"[REDACTED:UNI]" in redacted
        before, _, after = redacted.partition(b"[REDACTED:UNI]")
        assert len(before) <= -(-8 * len(prefix) // 6)
        assert len(after) <= len(encoded) - 8 * (len(prefix) + len(value)) // 6


def test_the_longest_of_overlapping_values_wins() -> None:
    redactor = Redactor(SECRETS)
    assert redactor.redact_text("x alpha-token-0123456789-extended y") == "x [REDACTED:ALPHA_LONG] y"
    assert redactor.redact_text("x alpha-token-0123456789-extende y") == "x [REDACTED:ALPHA]-extende y"
    long_b64 = base64.b64encode(SECRETS["ALPHA_LONG"].encode()).decode()
    assert redactor.redact_text(f"<{long_b64}>") == "<[REDACTED:ALPHA_LONG]>"
    # A value found in another secret's form at the same position: still the longest match wins.
    nested = Redactor({"INNER": "inner-secret", "OUTER": "xx-inner-secret-xx"})
    assert nested.redact_text("inner-secret xx-inner-secret-xx") == "[REDACTED:INNER] [REDACTED:OUTER]"


def test_redaction_matches_the_reference_scan() -> None:
    rng = random.Random(3)
    redactor = Redactor(SECRETS)
    pieces = [form for value in SECRETS.values() for form in secret_forms(value)]
    for _ in range(200):
        data = _random_text(rng, pieces)
        assert redactor.redact_bytes(data) == _reference(data, SECRETS)


def _random_text(rng: random.Random, pieces: list[bytes]) -> bytes:
    """Noise, whole forms, and cut-off forms (near misses that a stream must hold back and then let go)."""
    noise = b"abc-lpht0123456789 =&%/+\n" + "ü日".encode()
    parts: list[bytes] = []
    for _ in range(rng.randint(0, 8)):
        parts.append(bytes(rng.choice(noise) for _ in range(rng.randint(0, 30))))
        piece = rng.choice(pieces)
        kind = rng.random()
        if kind < 0.5:
            parts.append(piece)
        elif kind < 0.8:
            parts.append(piece[: rng.randint(1, len(piece))])
        else:
            parts.append(piece[rng.randint(0, len(piece) - 1) :])
    return b"".join(parts)


def test_streaming_equals_redacting_the_whole_for_any_split() -> None:
    rng = random.Random(20240607)
    redactor = Redactor(SECRETS)
    pieces = [form for value in SECRETS.values() for form in secret_forms(value)]
    for case in range(400):
        data = _random_text(rng, pieces)
        whole = redactor.redact_bytes(data)
        assert whole == _reference(data, SECRETS), case
        chunks = _split(data, rng)
        assert b"".join(chunks) == data
        assert _stream(redactor, chunks) == whole, (case, chunks)
        for value in SECRETS.values():
            assert value.encode() not in whole


def test_a_value_split_across_chunks_is_replaced() -> None:
    redactor = Redactor(SECRETS)
    value = SECRETS["ALPHA_LONG"].encode()
    for cut in range(1, len(value)):
        assert _stream(redactor, [b"<" + value[:cut], value[cut:] + b">"]) == b"<[REDACTED:ALPHA_LONG]>"
    for cut in range(1, len(value)):
        chunks = [b"<" + value[:cut], value[cut:-1], value[-1:] + b">"]
        assert _stream(redactor, chunks) == b"<[REDACTED:ALPHA_LONG]>"


def test_a_stream_holds_back_less_than_the_longest_form() -> None:
    redactor = Redactor(SECRETS)
    longest = max(len(form) for value in SECRETS.values() for form in secret_forms(value))
    stream = redactor.stream()
    fed = emitted = 0
    rng = random.Random(5)
    for _ in range(500):
        chunk = bytes(rng.choice(b"xyz-0123 ") for _ in range(rng.randint(0, 40)))
        fed += len(chunk)
        emitted += len(stream.feed(chunk))
        assert fed - emitted <= longest - 1
    assert emitted + len(stream.flush()) == fed


@pytest.mark.parametrize("value", ["", "Q", "Zq", "Zq7", "ü日本"])
def test_values_shorter_than_four_characters_are_refused_without_echoing_them(value: str) -> None:
    with pytest.raises(ValueError) as refused:
        Redactor({"OK": "long-enough", "PIN": value})
    if value:
        assert value not in str(refused.value)


def test_four_characters_are_enough() -> None:
    redactor = Redactor({"PIN": "1234"})
    assert redactor.redact_text("pin 1234.") == "pin [REDACTED:PIN]."
    assert redactor.names == ["PIN"]


def test_an_empty_redactor_passes_everything_through_unchanged() -> None:
    redactor = Redactor({})
    assert not redactor
    assert redactor.names == []
    data = b"anything \xff\x00 at all" * 1000
    assert redactor.redact_bytes(data) is data
    text = "ünïcode and \ud83d\ude00 text"
    assert redactor.redact_text(text) is text
    stream = redactor.stream()
    assert stream.feed(data) is data
    assert stream.feed(b"") == b""
    assert stream.flush() == b""


def test_a_redactor_with_secrets_is_true_and_names_them() -> None:
    redactor = Redactor(SECRETS)
    assert redactor
    assert sorted(redactor.names) == sorted(SECRETS)


def test_redact_text_on_non_ascii_text() -> None:
    redactor = Redactor(SECRETS)
    uni_b64 = base64.b64encode(SECRETS["UNI"].encode()).decode()
    quoted = urllib.parse.quote(SPECIAL, safe="")
    text = f"héllo wörld 日本 {SECRETS['UNI']} — {uni_b64} — ключ {SECRETS['SHORT']}é {quoted}"
    assert redactor.redact_text(text) == (
        "héllo wörld 日本 [REDACTED:UNI] — [REDACTED:UNI] — ключ [REDACTED:SHORT]é [REDACTED:SPECIAL]"
    )
    assert redactor.redact_text(text).encode() == redactor.redact_bytes(text.encode())
    assert redactor.redact_text("no secrets here: ü日本語") == "no secrets here: ü日本語"


def test_feeding_a_mebibyte_with_five_secrets_is_fast() -> None:
    rng = random.Random(9)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/= \n"
    data = bytes(rng.choice(alphabet) for _ in range(1 << 20))
    redactor = Redactor(SECRETS)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        stream = redactor.stream()
        stream.feed(data)
        stream.flush()
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.05, timings
    empty = Redactor({})
    started = time.perf_counter()
    for _ in range(1000):
        empty.stream().feed(data)
    assert time.perf_counter() - started < 0.05
