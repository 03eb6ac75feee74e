"""containerd's filter language (package ``filters`` of containerd 1.6), as used by ``List``.

A filter string is a comma separated list of selectors, all of which must match::

    selectors := selector ("," selector)*
    selector  := fieldpath [operator value]
    fieldpath := field ("." field)*
    field     := quoted | [A-Za-z0-9_]+
    operator  := "==" | "!=" | "~="
    value     := quoted | [^\\s,]+
    quoted    := Go string literal in "..." (for ~= also /.../ or |...|)

Several filter strings are OR'ed. Objects are matched through a ``Lookup`` that maps a
field path to the field's value, or to None when the object has no such field.

The scanner and parser follow the Go code closely, so that the filters containerd
accepts are accepted here, with the same error messages. Known differences:

* error positions count code points instead of UTF-8 bytes;
* regular expressions use Python's ``re`` instead of RE2 (they agree on common syntax).

As in Go, ``!=`` and ``~=`` see an absent field as "" (so ``f!=x`` and ``f~=^$``
match a snapshot without ``f``), while ``==`` and presence need the field.
"""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from obdsnap.errors import InvalidArgument

__all__ = ["Filter", "Lookup", "parse", "parse_all"]

Lookup: TypeAlias = Callable[[Sequence[str]], str | None]
FieldPath: TypeAlias = tuple[str, ...]


# --- filters -------------------------------------------------------------------------


class Filter(ABC):
    """A parsed filter; ``match`` tells whether the object behind ``lookup`` is selected."""

    __slots__ = ()

    @abstractmethod
    def match(self, lookup: Lookup) -> bool: ...


@dataclass(frozen=True, slots=True)
class Always(Filter):
    def match(self, lookup: Lookup) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class All(Filter):
    filters: tuple[Filter, ...]

    def match(self, lookup: Lookup) -> bool:
        return all(selected.match(lookup) for selected in self.filters)


@dataclass(frozen=True, slots=True)
class Any(Filter):
    filters: tuple[Filter, ...]

    def match(self, lookup: Lookup) -> bool:
        return any(selected.match(lookup) for selected in self.filters)


@dataclass(frozen=True, slots=True)
class Present(Filter):
    fieldpath: FieldPath

    def match(self, lookup: Lookup) -> bool:
        return lookup(self.fieldpath) is not None


@dataclass(frozen=True, slots=True)
class Equal(Filter):
    fieldpath: FieldPath
    value: str

    def match(self, lookup: Lookup) -> bool:
        return lookup(self.fieldpath) == self.value


@dataclass(frozen=True, slots=True)
class NotEqual(Filter):
    """Matches a field that differs from ``value``; an absent field counts as "" (as in Go)."""

    fieldpath: FieldPath
    value: str

    def match(self, lookup: Lookup) -> bool:
        return (lookup(self.fieldpath) or "") != self.value


@dataclass(frozen=True, slots=True)
class Matches(Filter):
    """Matches a field in which ``pattern`` is found (anywhere, like Go's MatchString).

    As in containerd, an absent field is matched as "".
    """

    fieldpath: FieldPath
    pattern: str
    regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _compile_regex(self.pattern))

    def match(self, lookup: Lookup) -> bool:
        if self.regex is None:
            return False
        return self.regex.search(lookup(self.fieldpath) or "") is not None


ALWAYS = Always()


@functools.lru_cache(maxsize=256)
def _compile_regex(pattern: str) -> re.Pattern[str] | None:
    """Compile ``pattern``, or None if it is invalid: containerd then matches nothing."""
    try:
        # Byte escapes can leave invalid UTF-8 (kept as surrogates), which RE2 refuses.
        pattern.encode()
        with warnings.catch_warnings():
            # RE2 syntax such as [[:alpha:]] draws FutureWarnings from re at every compile.
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(pattern)
    except (UnicodeEncodeError, re.error):
        return None


def _all_of(filters: Sequence[Filter]) -> Filter:
    return filters[0] if len(filters) == 1 else All(tuple(filters))


def _any_of(filters: Sequence[Filter]) -> Filter:
    return filters[0] if len(filters) == 1 else Any(tuple(filters))


# --- public entry points -----------------------------------------------------------


def parse(s: str) -> Filter:
    """Parse one filter string; the empty string matches everything.

    Raises InvalidArgument if ``s`` is malformed.
    """
    if s == "":
        return ALWAYS
    return _Parser(s).parse()


def parse_all(filters: Sequence[str]) -> Filter:
    """Parse several filter strings into a filter matching if any of them matches.

    No filters at all match everything. Raises InvalidArgument if any string is malformed.
    """
    if isinstance(filters, str):
        raise TypeError("parse_all takes a sequence of filter strings, not a string")
    if not filters:
        return ALWAYS
    return _any_of([parse(s) for s in filters])


# --- scanner -------------------------------------------------------------------------


class _Token(enum.Enum):
    EOF = enum.auto()
    QUOTED = enum.auto()
    VALUE = enum.auto()
    FIELD = enum.auto()
    SEPARATOR = enum.auto()
    OPERATOR = enum.auto()
    ILLEGAL = enum.auto()
    CHAR = enum.auto()  # any other single character, left to the parser to reject


class _Lexeme(NamedTuple):
    pos: int
    token: _Token
    text: str


# What _Scanner.next returns instead of a character at the end, or for a character
# that is not allowed. Go returns utf8.RuneError there (and prints it in messages);
# a real U+FFFD in the input is illegal in Go too, so the sentinel cannot be confused.
_EOF = ""
_ILLEGAL = "\ufffd"

_QUOTES = frozenset('/|"')
_SEPARATORS = frozenset(",.")
_OPERATOR_CHARS = frozenset("=!~")
_FIELD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
# Go's unicode.IsSpace; str.isspace would also take the ASCII separators \x1c-\x1f.
_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SIMPLE_ESCAPES = frozenset("abfnrtv\\")
_OCTAL_DIGITS = frozenset("01234567")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_ESCAPE_DIGITS = {"x": 2, "u": 4, "U": 8}


def _is_value_char(ch: str) -> bool:
    # Go takes letters, digits, numbers, graphic and punctuation characters, minus
    # spaces: exactly the Unicode categories L*, M*, N*, P* and S*.
    return ch not in (_EOF, _ILLEGAL, ",") and unicodedata.category(ch)[0] in "LMNPS"


def _is_illegal(ch: str) -> bool:
    return ch == "\0" or ch == _ILLEGAL or "\ud800" <= ch <= "\udfff"


class _Scanner:
    """Splits a filter string into tokens, as containerd's scanner does.

    ``pos`` is the start of the character read last, ``ppos`` the position after it.
    """

    def __init__(self, text: str) -> None:
        self.input = text
        self.pos = 0
        self.ppos = 0
        self.in_value = False  # an operator was just read, so what follows is a value
        self.err = ""

    def next(self) -> str:
        if self.pos >= len(self.input):
            return _EOF
        self.pos = self.ppos
        if self.ppos >= len(self.input):
            return _EOF
        ch = self.input[self.ppos]
        self.ppos += 1
        if _is_illegal(ch):
            self._error("unexpected null" if ch == "\0" else "rune error")
            return _ILLEGAL
        return ch

    def peek(self) -> str:
        pos, ppos = self.pos, self.ppos
        ch = self.next()
        self.pos, self.ppos = pos, ppos
        return ch

    def scan(self) -> _Lexeme:
        ch = self.next()
        while ch in _SPACES:
            ch = self.next()
        start = self.pos
        if ch == _EOF:
            return _Lexeme(start, _Token.EOF, "")
        if ch == _ILLEGAL:
            return _Lexeme(start, _Token.ILLEGAL, "")
        if ch in _QUOTES:
            token = _Token.QUOTED if self._scan_quoted(ch) else _Token.ILLEGAL
            return self._lexeme(start, token)
        if ch in _SEPARATORS:
            self.in_value = False
            return self._lexeme(start, _Token.SEPARATOR)
        if ch in _OPERATOR_CHARS:
            self._skip_while(lambda c: c in _OPERATOR_CHARS)
            self.in_value = True
            return self._lexeme(start, _Token.OPERATOR)
        if self.in_value:
            # Like Go, the first character of a value is taken whatever it is.
            self._skip_while(_is_value_char)
            self.in_value = False
            return self._lexeme(start, _Token.VALUE)
        if ch in _FIELD_CHARS:
            self._skip_while(lambda c: c in _FIELD_CHARS)
            return self._lexeme(start, _Token.FIELD)
        return _Lexeme(start, _Token.CHAR, ch)

    def _lexeme(self, start: int, token: _Token) -> _Lexeme:
        return _Lexeme(start, token, self.input[start : self.ppos])

    def _skip_while(self, accept: Callable[[str], bool]) -> None:
        while accept(self.peek()):
            self.next()

    def _scan_quoted(self, quote: str) -> bool:
        legal = True
        ch = self.next()
        while ch != quote:
            if ch in ("\n", _EOF, _ILLEGAL):
                self._error("quoted literal not terminated")
                return False
            if ch == "\\":
                ch, escape_legal = self._scan_escape(quote)
                legal = legal and escape_legal
            else:
                ch = self.next()
        return legal

    def _scan_escape(self, quote: str) -> tuple[str, bool]:
        """Read an escape after its backslash; return the character after it and legality."""
        ch = self.next()
        if ch in _SIMPLE_ESCAPES or ch == quote:
            return self.next(), True
        if ch in _OCTAL_DIGITS:
            return self._scan_digits(ch, _OCTAL_DIGITS, 3)
        if ch in _ESCAPE_DIGITS:
            return self._scan_digits(self.next(), _HEX_DIGITS, _ESCAPE_DIGITS[ch])
        self._error("illegal escape sequence")
        return ch, False

    def _scan_digits(self, ch: str, digits: frozenset[str], count: int) -> tuple[str, bool]:
        while count > 0 and ch in digits:
            ch = self.next()
            count -= 1
        if count > 0:
            self._error("illegal numeric escape sequence")
            return ch, False
        return ch, True

    def _error(self, message: str) -> None:
        # The first error is the one reported, as in Go.
        if not self.err:
            self.err = message


# --- unquoting -----------------------------------------------------------------------


class _QuoteSyntaxError(Exception):
    pass


def _unquote(quoted: str) -> str:
    """Interpret a Go string literal quoted with ``"``, ``/`` or ``|``.

    ``\\x`` and octal escapes produce single bytes that need not form UTF-8 (Go strings
    are bytes); such bytes are kept as surrogate escapes, so they never equal a real value.
    """
    if len(quoted) < 2 or quoted[0] != quoted[-1] or quoted[0] not in _QUOTES:
        raise _QuoteSyntaxError
    quote, body = quoted[0], quoted[1:-1]
    if "\n" in body:
        raise _QuoteSyntaxError
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
        raise _QuoteSyntaxError
    if ch != "\\":
        return ch.encode(), i + 1
    if i + 1 >= len(body):
        raise _QuoteSyntaxError
    kind, digits_at = body[i + 1], i + 2
    if kind in _GO_ESCAPES:
        return _GO_ESCAPES[kind], digits_at
    if kind in "'\"|/":
        if kind != quote:
            raise _QuoteSyntaxError
        return kind.encode(), digits_at
    if kind in _ESCAPE_DIGITS:
        end = digits_at + _ESCAPE_DIGITS[kind]
        return _hex_escape(kind, body[digits_at:end]), end
    if kind in _OCTAL_DIGITS:
        end = digits_at + 2
        return _octal_escape(body[i + 1 : end]), end
    raise _QuoteSyntaxError


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
    if len(digits) < _ESCAPE_DIGITS[kind] or not set(digits) <= _HEX_DIGITS:
        raise _QuoteSyntaxError
    value = int(digits, 16)
    if kind == "x":
        return bytes([value])
    if value > 0x10FFFF:
        raise _QuoteSyntaxError
    if 0xD800 <= value <= 0xDFFF:
        value = 0xFFFD  # Go's utf8.EncodeRune writes RuneError for surrogates
    return chr(value).encode()


def _octal_escape(digits: str) -> bytes:
    if len(digits) < 3 or not set(digits) <= _OCTAL_DIGITS:
        raise _QuoteSyntaxError
    value = int(digits, 8)
    if value > 0xFF:
        raise _QuoteSyntaxError
    return bytes([value])


# --- parser --------------------------------------------------------------------------

_SELECTORS: dict[str, Callable[[FieldPath, str], Filter]] = {
    "==": Equal,
    "!=": NotEqual,
    "~=": Matches,
}


class _Parser:
    """Recursive descent over the scanner's tokens, one method per grammar rule."""

    def __init__(self, text: str) -> None:
        self._input = text
        self._scanner = _Scanner(text)

    def parse(self) -> Filter:
        selectors = [self._selector()]
        while (ch := self._scanner.peek()) != _EOF:
            if ch != ",":
                raise self._error(self._scanner.ppos, f"unexpected input: {ch}")
            self._scanner.scan()
            selectors.append(self._selector())
        return _all_of(selectors)

    def _selector(self) -> Filter:
        fieldpath = self._fieldpath()
        if self._scanner.peek() in (",", _EOF):
            return Present(fieldpath)
        operator = self._operator()
        value = self._value(allow_alt_quotes=operator == "~=")
        return _SELECTORS[operator](fieldpath, value)

    def _fieldpath(self) -> FieldPath:
        fields = [self._field()]
        while self._scanner.peek() == ".":
            self._scanner.scan()
            fields.append(self._field())
        return tuple(fields)

    def _field(self) -> str:
        lexeme = self._scanner.scan()
        if lexeme.token is _Token.FIELD:
            return lexeme.text
        if lexeme.token is _Token.QUOTED:
            return self._unquote(lexeme, allow_alt_quotes=False)
        raise self._unexpected(lexeme, "expected field or quoted")

    def _operator(self) -> str:
        lexeme = self._scanner.scan()
        if lexeme.token is _Token.OPERATOR:
            if lexeme.text not in _SELECTORS:
                raise self._error(lexeme.pos, f'unsupported operator "{lexeme.text}"')
            return lexeme.text
        raise self._unexpected(lexeme, 'expected an operator ("=="|"!="|"~=")')

    def _value(self, allow_alt_quotes: bool) -> str:
        lexeme = self._scanner.scan()
        if lexeme.token in (_Token.VALUE, _Token.FIELD):
            return lexeme.text
        if lexeme.token is _Token.QUOTED:
            return self._unquote(lexeme, allow_alt_quotes)
        raise self._unexpected(lexeme, "expected value or quoted")

    def _unquote(self, lexeme: _Lexeme, allow_alt_quotes: bool) -> str:
        if not allow_alt_quotes and lexeme.text[0] != '"':
            raise self._error(lexeme.pos, "invalid quote encountered")
        try:
            return _unquote(lexeme.text)
        except _QuoteSyntaxError:
            raise self._error(lexeme.pos, "unquoting failed: quote syntax error") from None

    def _unexpected(self, lexeme: _Lexeme, expected: str) -> InvalidArgument:
        """The error for a token the grammar has no place for here."""
        if lexeme.token is _Token.ILLEGAL:
            return self._error(lexeme.pos, self._scanner.err)
        return self._error(lexeme.pos, expected)

    def _error(self, pos: int, message: str) -> InvalidArgument:
        text = self._input
        if pos < len(text):
            where = f"[{text[:pos]} >|{text[pos]}|< {text[pos + 1 :]}]"
        else:
            where = f"[{text}]"
        # Lone surrogates would make the message unencodable (e.g. as a gRPC status).
        where = where.encode("utf-8", "backslashreplace").decode()
        return InvalidArgument(f"filters: parse error: {where}: {message}")
