"""The parser of containerd's filters/parser.go: filter strings into filters."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from obdsnap.errors import InvalidArgument
from obdsnap.filters.matching import (
    ALWAYS,
    Equal,
    FieldPath,
    Filter,
    Matches,
    NotEqual,
    Present,
    all_of,
    any_of,
)
from obdsnap.filters.quote import QuoteSyntaxError, unquote
from obdsnap.filters.scanner import EOF_CHAR, Lexeme, Scanner, Token


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
    return any_of([parse(s) for s in filters])


_SELECTORS: dict[str, Callable[[FieldPath, str], Filter]] = {
    "==": Equal,
    "!=": NotEqual,
    "~=": Matches,
}


class _Parser:
    """Recursive descent over the scanner's tokens, one method per grammar rule."""

    def __init__(self, text: str) -> None:
        self._input = text
        self._scanner = Scanner(text)

    def parse(self) -> Filter:
        selectors = [self._selector()]
        while (ch := self._scanner.peek()) != EOF_CHAR:
            if ch != ",":
                raise self._error(self._scanner.ppos, f"unexpected input: {ch}")
            self._scanner.scan()
            selectors.append(self._selector())
        return all_of(selectors)

    def _selector(self) -> Filter:
        fieldpath = self._fieldpath()
        if self._scanner.peek() in (",", EOF_CHAR):
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
        if lexeme.token is Token.FIELD:
            return lexeme.text
        if lexeme.token is Token.QUOTED:
            return self._unquote(lexeme, allow_alt_quotes=False)
        raise self._unexpected(lexeme, "expected field or quoted")

    def _operator(self) -> str:
        lexeme = self._scanner.scan()
        if lexeme.token is Token.OPERATOR:
            if lexeme.text not in _SELECTORS:
                raise self._error(lexeme.pos, f'unsupported operator "{lexeme.text}"')
            return lexeme.text
        raise self._unexpected(lexeme, 'expected an operator ("=="|"!="|"~=")')

    def _value(self, allow_alt_quotes: bool) -> str:
        lexeme = self._scanner.scan()
        if lexeme.token in (Token.VALUE, Token.FIELD):
            return lexeme.text
        if lexeme.token is Token.QUOTED:
            return self._unquote(lexeme, allow_alt_quotes)
        raise self._unexpected(lexeme, "expected value or quoted")

    def _unquote(self, lexeme: Lexeme, allow_alt_quotes: bool) -> str:
        if not allow_alt_quotes and lexeme.text[0] != '"':
            raise self._error(lexeme.pos, "invalid quote encountered")
        try:
            return unquote(lexeme.text)
        except QuoteSyntaxError:
            raise self._error(lexeme.pos, "unquoting failed: quote syntax error") from None

    def _unexpected(self, lexeme: Lexeme, expected: str) -> InvalidArgument:
        """The error for a token the grammar has no place for here."""
        if lexeme.token is Token.ILLEGAL:
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
