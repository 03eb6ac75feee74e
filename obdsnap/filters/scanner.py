"""The scanner of containerd's filters/scanner.go: a filter string split into tokens."""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Callable
from typing import NamedTuple


class Token(enum.Enum):
    EOF = enum.auto()
    QUOTED = enum.auto()
    VALUE = enum.auto()
    FIELD = enum.auto()
    SEPARATOR = enum.auto()
    OPERATOR = enum.auto()
    ILLEGAL = enum.auto()
    CHAR = enum.auto()  # any other single character, left to the parser to reject


class Lexeme(NamedTuple):
    pos: int
    token: Token
    text: str


# What Scanner.next returns instead of a character at the end, or for a character
# that is not allowed. Go returns utf8.RuneError there (and prints it in messages);
# a real U+FFFD in the input is illegal in Go too, so the sentinel cannot be confused.
EOF_CHAR = ""
ILLEGAL_CHAR = "\ufffd"

QUOTES = frozenset('/|"')
_SEPARATORS = frozenset(",.")
_OPERATOR_CHARS = frozenset("=!~")
_FIELD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
# Go's unicode.IsSpace; str.isspace would also take the ASCII separators \x1c-\x1f.
_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SIMPLE_ESCAPES = frozenset("abfnrtv\\")
OCTAL_DIGITS = frozenset("01234567")
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
ESCAPE_DIGITS = {"x": 2, "u": 4, "U": 8}


def _is_value_char(ch: str) -> bool:
    # Go takes letters, digits, numbers, graphic and punctuation characters, minus
    # spaces: exactly the Unicode categories L*, M*, N*, P* and S*.
    return ch not in (EOF_CHAR, ILLEGAL_CHAR, ",") and unicodedata.category(ch)[0] in "LMNPS"


def _is_illegal(ch: str) -> bool:
    return ch == "\0" or ch == ILLEGAL_CHAR or "\ud800" <= ch <= "\udfff"


class Scanner:
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
            return EOF_CHAR
        self.pos = self.ppos
        if self.ppos >= len(self.input):
            return EOF_CHAR
        ch = self.input[self.ppos]
        self.ppos += 1
        if _is_illegal(ch):
            self._error("unexpected null" if ch == "\0" else "rune error")
            return ILLEGAL_CHAR
        return ch

    def peek(self) -> str:
        pos, ppos = self.pos, self.ppos
        ch = self.next()
        self.pos, self.ppos = pos, ppos
        return ch

    def scan(self) -> Lexeme:
        ch = self.next()
        while ch in _SPACES:
            ch = self.next()
        start = self.pos
        if ch == EOF_CHAR:
            return Lexeme(start, Token.EOF, "")
        if ch == ILLEGAL_CHAR:
            return Lexeme(start, Token.ILLEGAL, "")
        if ch in QUOTES:
            token = Token.QUOTED if self._scan_quoted(ch) else Token.ILLEGAL
            return self._lexeme(start, token)
        if ch in _SEPARATORS:
            self.in_value = False
            return self._lexeme(start, Token.SEPARATOR)
        if ch in _OPERATOR_CHARS:
            self._skip_while(lambda c: c in _OPERATOR_CHARS)
            self.in_value = True
            return self._lexeme(start, Token.OPERATOR)
        if self.in_value:
            # Like Go, the first character of a value is taken whatever it is.
            self._skip_while(_is_value_char)
            self.in_value = False
            return self._lexeme(start, Token.VALUE)
        if ch in _FIELD_CHARS:
            self._skip_while(lambda c: c in _FIELD_CHARS)
            return self._lexeme(start, Token.FIELD)
        return Lexeme(start, Token.CHAR, ch)

    def _lexeme(self, start: int, token: Token) -> Lexeme:
        return Lexeme(start, token, self.input[start : self.ppos])

    def _skip_while(self, accept: Callable[[str], bool]) -> None:
        while accept(self.peek()):
            self.next()

    def _scan_quoted(self, quote: str) -> bool:
        legal = True
        ch = self.next()
        while ch != quote:
            if ch in ("\n", EOF_CHAR, ILLEGAL_CHAR):
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
        if ch in OCTAL_DIGITS:
            return self._scan_digits(ch, OCTAL_DIGITS, 3)
        if ch in ESCAPE_DIGITS:
            return self._scan_digits(self.next(), HEX_DIGITS, ESCAPE_DIGITS[ch])
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
