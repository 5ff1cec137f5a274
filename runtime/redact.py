"""Redaction: every secret value, and its encoded forms, becomes ``[REDACTED:NAME]``.

A value is recognised as itself (UTF-8), as its base64 (standard and URL-safe alphabets, with or
without padding, and the part of it that stays the same when the value sits inside a longer
base64 text at any alignment), and URL-encoded. :class:`StreamRedactor` does the same for a
stream arriving in chunks, so a value split across chunks is caught too.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Mapping

MIN_VALUE_LENGTH = 4
_MIN_EMBEDDED_BASE64 = 8


def _embedded_base64(data: bytes, altchars: bytes | None) -> list[bytes]:
    """The base64 characters that depend only on ``data`` when it follows 0, 1 or 2 unknown bytes."""
    parts = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data, altchars).rstrip(b"=")
        first = -(-shift * 8 // 6)  # the first character holding none of the preceding bytes' bits
        last = (shift + len(data)) * 8 // 6  # characters past this one mix in the following bytes
        middle = encoded[first:last]
        if len(middle) >= _MIN_EMBEDDED_BASE64:
            parts.append(middle)
    return parts


def secret_forms(value: str) -> list[bytes]:
    """The byte strings that reveal ``value``, longest first."""
    raw = value.encode("utf-8", "surrogatepass")
    forms = {raw, urllib.parse.quote(value, safe="").encode(), urllib.parse.quote_plus(value).encode()}
    for altchars in (None, b"-_"):
        padded = base64.b64encode(raw, altchars)
        forms |= {padded, padded.rstrip(b"="), *_embedded_base64(raw, altchars)}
    return sorted(forms, key=lambda form: (-len(form), form))


class Redactor:
    """Replaces the values of named secrets (and their encodings) in bytes or text."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        replacements: dict[bytes, bytes] = {}
        # Shorter values first: where two secrets share a form, the longer value's name wins.
        for name, value in sorted(secrets.items(), key=lambda item: (len(item[1]), item[0])):
            if len(value) < MIN_VALUE_LENGTH:
                raise ValueError(
                    f"The value of {name} is shorter than {MIN_VALUE_LENGTH} characters: cannot redact it."
                )
            marker = f"[REDACTED:{name}]".encode()
            for form in secret_forms(value):
                replacements[form] = marker
        self._names = sorted(secrets)
        self._replacements = replacements
        forms = sorted(replacements, key=lambda form: (-len(form), form))
        self._pattern = re.compile(b"|".join(re.escape(form) for form in forms)) if forms else None
        self.longest = len(forms[0]) if forms else 0

    def __bool__(self) -> bool:
        return self._pattern is not None

    @property
    def names(self) -> list[str]:
        """The secrets this redactor hides."""
        return list(self._names)

    def redact_bytes(self, data: bytes) -> bytes:
        """``data`` with every form of every secret replaced."""
        if self._pattern is None:
            return data
        return self._pattern.sub(lambda match: self._replacements[match.group()], data)

    def redact_text(self, text: str) -> str:
        """``text`` with every form of every secret replaced."""
        if self._pattern is None:
            return text
        # surrogatepass: text from JSON may hold lone surrogates; they pass through unchanged
        return self.redact_bytes(text.encode("utf-8", "surrogatepass")).decode("utf-8", "surrogatepass")

    def stream(self) -> StreamRedactor:
        """A redactor for one stream arriving in chunks."""
        return StreamRedactor(self)

    def redact_window(self, data: bytes, start: int, end: int, final: bool) -> tuple[bytes, int]:
        """Redact ``data[start:end]`` of a stream read by offset, ``data`` holding the bytes around it.

        A value that straddles ``start`` is replaced whole (its marker is emitted, its bytes
        skipped); one that straddles ``end`` moves the end past it. Unless ``final`` (nothing
        follows ``data``), the last bytes where a value may still begin are held back. Returns the
        redacted bytes and the end actually reached (the next read starts there).
        """
        if self._pattern is None:
            return data[start:end], end
        if not final:
            end = min(end, max(start, len(data) - (self.longest - 1)))
        out: list[bytes] = []
        position = start
        for match in self._pattern.finditer(data, max(0, start - self.longest + 1)):
            if match.end() <= start:
                continue
            if match.start() >= end:
                break
            out += [data[position : max(position, match.start())], self._replacement(match)]
            position = match.end()
        end = max(end, position)
        out.append(data[position:end])
        return b"".join(out), end

    def _matches(self, data: bytes) -> list[re.Match[bytes]]:
        assert self._pattern is not None
        return list(self._pattern.finditer(data))

    def _replacement(self, match: re.Match[bytes]) -> bytes:
        return self._replacements[match.group()]


class StreamRedactor:
    """Redacts a byte stream that arrives in chunks: a value split across chunks is still replaced.

    Whatever is emitted equals redacting the whole stream at once. Only bytes where a match may
    still begin are held back: at most the longest form's length minus one.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._pending = b""

    @property
    def holding(self) -> bool:
        """Whether bytes are held back (where a value may still begin), to be let out by :meth:`flush`."""
        return bool(self._pending)

    def feed(self, chunk: bytes) -> bytes:
        """The redacted bytes that are safe to emit now."""
        if not self._redactor:
            return chunk
        data = self._pending + chunk
        # A match starting before `settled` lies wholly in `data`: the scan's verdict there is final.
        settled = len(data) - (self._redactor.longest - 1)
        out: list[bytes] = []
        position = 0
        for match in self._redactor._matches(data):
            if match.start() >= settled:
                break
            out += [data[position : match.start()], self._redactor._replacement(match)]
            position = match.end()
        cut = max(position, settled, 0)
        out.append(data[position:cut])
        self._pending = data[cut:]
        return b"".join(out)

    def flush(self) -> bytes:
        """The rest of the stream, redacted."""
        data, self._pending = self._pending, b""
        return self._redactor.redact_bytes(data)
