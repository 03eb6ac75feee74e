"""Go string literals in filters (containerd's filters/quote.go): quoted with ", / or |."""

from __future__ import annotations

from obdsnap.filters.scanner import ESCAPE_DIGITS, HEX_DIGITS, OCTAL_DIGITS, QUOTES


class QuoteSyntaxError(Exception):
    pass


def unquote(quoted: str) -> str:
    """Interpret a Go string literal quoted with ``"``, ``/`` or ``|``.

    ``\\x`` and octal escapes produce single bytes that need not form UTF-8 (Go strings
    are bytes); such bytes are kept as surrogate escapes, so they never equal a real value.
    """
    if len(quoted) < 2 or quoted[0] != quoted[-1] or quoted[0] not in QUOTES:
        raise QuoteSyntaxError
    quote, body = quoted[0], quoted[1:-1]
    if "\n" in body:
        raise QuoteSyntaxError
    if "\\" not in body and quote not in body:
        return body
    decoded = bytearray()
    i = 0
    while i < len(body):
        chunk, i = _unquote_char(body, i, quote)
        decoded += chunk
    return decoded.decode("utf-8", "surrogateescape")


def _unquote_char(body: str, i: int, quote: str) -> tuple[bytes, int]:
    """Decode the (possibly escaped) character at ``body[i]``; return it and the next index."""
    ch = body[i]
    if ch == quote:
        raise QuoteSyntaxError
    if ch != "\\":
        return ch.encode(), i + 1
    if i + 1 >= len(body):
        raise QuoteSyntaxError
    kind, digits_at = body[i + 1], i + 2
    if kind in _GO_ESCAPES:
        return _GO_ESCAPES[kind], digits_at
    if kind in "'\"|/":
        if kind != quote:
            raise QuoteSyntaxError
        return kind.encode(), digits_at
    if kind in ESCAPE_DIGITS:
        end = digits_at + ESCAPE_DIGITS[kind]
        return _hex_escape(kind, body[digits_at:end]), end
    if kind in OCTAL_DIGITS:
        end = digits_at + 2
        return _octal_escape(body[i + 1 : end]), end
    raise QuoteSyntaxError


_GO_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
}


def _hex_escape(kind: str, digits: str) -> bytes:
    if len(digits) < ESCAPE_DIGITS[kind] or not set(digits) <= HEX_DIGITS:
        raise QuoteSyntaxError
    value = int(digits, 16)
    if kind == "x":
        return bytes([value])
    if value > 0x10FFFF:
        raise QuoteSyntaxError
    if 0xD800 <= value <= 0xDFFF:
        value = 0xFFFD  # Go's utf8.EncodeRune writes RuneError for surrogates
    return chr(value).encode()


def _octal_escape(digits: str) -> bytes:
    if len(digits) < 3 or not set(digits) <= OCTAL_DIGITS:
        raise QuoteSyntaxError
    value = int(digits, 8)
    if value > 0xFF:
        raise QuoteSyntaxError
    return bytes([value])
