"""Tests of obdsnap.filters against the behaviour of containerd 1.6's filters package.

The first sections port filter_test.go and scanner_test.go; the rest cover what the
snapshots API relies on and the corners of the Go implementation.
"""

import json
import re
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obdsnap import filters
from obdsnap.errors import InvalidArgument
from obdsnap.filters import Filter, Lookup, parse, parse_all
from obdsnap.filters.matching import ALWAYS, All, Any, Equal, Matches, NotEqual, Present
from obdsnap.filters.scanner import Lexeme, Scanner, Token

# --- filter_test.go: TestFilters ------------------------------------------------------

GO_CORPUS: list[dict[str, str | dict[str, str]]] = [
    {"name": "foo", "labels": {"foo": "true"}},
    {"name": "bar"},
    {"name": "foo", "labels": {"foo": "present", "more complex label": "present"}},
    {"name": "bar", "labels": {"bar": "true"}},
    {"name": "fooer", "labels": {'more complex label with \\ and "': "present"}},
    {"name": "fooer", "labels": {'more complex label with \\ and ".post': "present"}},
    {"name": "baz", "other": "too complex, yo"},
    {"name": "bazo", "other": "abc"},
    {"name": "compound", "labels": {"foo": "omg_asdf.asdf-qwer"}},
]


def go_test_lookup(entry: Mapping[str, str | dict[str, str]]) -> Lookup:
    """The adaptor of filter_test.go: empty strings are absent, labels join the rest."""

    def lookup(fieldpath: Sequence[str]) -> str | None:
        field = fieldpath[0]
        if field in ("name", "other"):
            value = entry.get(field, "")
            assert isinstance(value, str)
            return value or None
        if field == "labels":
            labels = entry.get("labels", {})
            assert isinstance(labels, dict)
            return labels.get(".".join(fieldpath[1:]))
        return None

    return lookup


def matching_go_corpus(selector: Filter) -> list[int]:
    return [i for i, entry in enumerate(GO_CORPUS) if selector.match(go_test_lookup(entry))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", list(range(9)), id="Empty"),
        pytest.param("name", list(range(9)), id="Present"),
        pytest.param("labels.foo", [0, 2, 8], id="LabelPresent"),
        pytest.param("labels.foo,name", [0, 2, 8], id="NameAndLabelPresent"),
        pytest.param("labels.foo==true", [0], id="LabelValue"),
        pytest.param("labels.foo==omg_asdf.asdf-qwer", [8], id="LabelValuePunctuated"),
        pytest.param("name==bar", [1, 3], id="Name"),
        pytest.param("name!=bar", [0, 2, 4, 5, 6, 7, 8], id="NameNotEqual"),
        pytest.param("name==bar,labels.bar", [3], id="NameAndLabelPresent2"),
        pytest.param('other=="too complex, yo"', [6], id="QuotedValue"),
        pytest.param("other~=[abc]+,name!=foo", [6, 7], id="RegexpValue"),
        pytest.param("other~=/[abc]+/,name!=foo", [6, 7], id="RegexpQuotedValue"),
        pytest.param("other~=/[abc]{1,2}/,name!=foo", [6, 7], id="RegexpQuotedValueBraces"),
        pytest.param('other~=/[abc]{0,1}"\\//,name!=foo', [], id="RegexpQuotedValueGarbage"),
        pytest.param("name==bar,labels.bar==true", [3], id="NameAndLabelValue"),
        pytest.param("name==bar,labels.bar==wrong", [], id="NameAndLabelValueNoMatch"),
        pytest.param('name==foo,labels."more complex label"', [2], id="LabelQuotedFieldPath"),
        pytest.param(
            r'labels."more complex label with \\ and \""==present',
            [4],
            id="LabelQuotedFieldPathPresentWithQuoted",
        ),
        pytest.param(
            r'labels."more complex label with \\ and \"".post==present',
            [5],
            id="LabelQuotedFieldPathPresentWithQuotedEmbed",
        ),
    ],
)
def test_go_corpus(text: str, expected: list[int]) -> None:
    assert matching_go_corpus(parse(text)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "labels.|foo|==omg_asdf.asdf-qwer",
            "filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: "
            "invalid quote encountered",
            id="LabelValueNoAltQuoting",
        ),
        pytest.param(
            r'labels.?"more complex label with \\ and \"".post==present',
            r'filters: parse error: [labels. >|?|< "more complex label with \\ and \"".post'
            "==present]: expected field or quoted",
            id="LabelQuotedFieldPathPresentWithQuotedEmbedInvalid",
        ),
        pytest.param(
            "name==foo,",
            "filters: parse error: [name==foo,]: expected field or quoted",
            id="TrailingComma",
        ),
        pytest.param(
            "labels.",
            "filters: parse error: [labels.]: expected field or quoted",
            id="TrailingFieldSeparator",
        ),
        pytest.param(
            "image~=,id?=?fbaq",
            "filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted",
            id="MissingValue",
        ),
        pytest.param(
            "labels.ns/key==value",
            "filters: parse error: [labels.ns >|/|< key==value]: quoted literal not terminated",
            id="FieldQuotedLiteralNotTerminated",
        ),
        pytest.param(
            "labels.key==/value",
            "filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated",
            id="ValueQuotedLiteralNotTerminated",
        ),
    ],
)
def test_go_corpus_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse(text)
    assert str(raised.value) == message


# --- scanner_test.go: TestScanner -----------------------------------------------------

EOF, QUOTED, VALUE, FIELD = Token.EOF, Token.QUOTED, Token.VALUE, Token.FIELD
SEPARATOR, OPERATOR, ILLEGAL, CHAR = Token.SEPARATOR, Token.OPERATOR, Token.ILLEGAL, Token.CHAR

# (pos, token, text, scanner error if the token is illegal); positions count code points,
# not UTF-8 bytes as in Go.
Scanned = tuple[int, Token, str, str]

SCANNER_CASES: dict[str, tuple[str, list[Scanned]]] = {
    "Field": ("name", [(0, FIELD, "name", ""), (4, EOF, "", "")]),
    "SelectorsWithOperators": (
        "name==value,foo!=bar",
        [
            (0, FIELD, "name", ""),
            (4, OPERATOR, "==", ""),
            (6, VALUE, "value", ""),
            (11, SEPARATOR, ",", ""),
            (12, FIELD, "foo", ""),
            (15, OPERATOR, "!=", ""),
            (17, VALUE, "bar", ""),
            (20, EOF, "", ""),
        ],
    ),
    "SelectorsWithFieldPaths": (
        "name==value,labels.foo=value,other.bar~=match",
        [
            (0, FIELD, "name", ""),
            (4, OPERATOR, "==", ""),
            (6, VALUE, "value", ""),
            (11, SEPARATOR, ",", ""),
            (12, FIELD, "labels", ""),
            (18, SEPARATOR, ".", ""),
            (19, FIELD, "foo", ""),
            (22, OPERATOR, "=", ""),
            (23, VALUE, "value", ""),
            (28, SEPARATOR, ",", ""),
            (29, FIELD, "other", ""),
            (34, SEPARATOR, ".", ""),
            (35, FIELD, "bar", ""),
            (38, OPERATOR, "~=", ""),
            (40, VALUE, "match", ""),
            (45, EOF, "", ""),
        ],
    ),
    "RegexpValue": (
        "name~=[abc]+,foo=test",
        [
            (0, FIELD, "name", ""),
            (4, OPERATOR, "~=", ""),
            (6, VALUE, "[abc]+", ""),
            (12, SEPARATOR, ",", ""),
            (13, FIELD, "foo", ""),
            (16, OPERATOR, "=", ""),
            (17, VALUE, "test", ""),
            (21, EOF, "", ""),
        ],
    ),
    "RegexpEscapedValue": (
        r"name~=[abc]\+,foo=test",
        [
            (0, FIELD, "name", ""),
            (4, OPERATOR, "~=", ""),
            (6, VALUE, r"[abc]\+", ""),
            (13, SEPARATOR, ",", ""),
            (14, FIELD, "foo", ""),
            (17, OPERATOR, "=", ""),
            (18, VALUE, "test", ""),
            (22, EOF, "", ""),
        ],
    ),
    "RegexpQuotedValue": (
        "name~=/[abc]{0,2}/,foo=test",
        [
            (0, FIELD, "name", ""),
            (4, OPERATOR, "~=", ""),
            (6, QUOTED, "/[abc]{0,2}/", ""),
            (18, SEPARATOR, ",", ""),
            (19, FIELD, "foo", ""),
            (22, OPERATOR, "=", ""),
            (23, VALUE, "test", ""),
            (27, EOF, "", ""),
        ],
    ),
    "Cowsay": (
        "name~=牛,labels.moo=true",
        [
            (0, FIELD, "name", ""),
            (4, OPERATOR, "~=", ""),
            (6, VALUE, "牛", ""),
            (7, SEPARATOR, ",", ""),
            (8, FIELD, "labels", ""),
            (14, SEPARATOR, ".", ""),
            (15, FIELD, "moo", ""),
            (18, OPERATOR, "=", ""),
            (19, VALUE, "true", ""),
            (23, EOF, "", ""),
        ],
    ),
    "CowsayRegexpQuoted": (
        "name~=|牛|,labels.moo=true",
        [
            (0, FIELD, "name", ""),
            (4, OPERATOR, "~=", ""),
            (6, QUOTED, "|牛|", ""),
            (9, SEPARATOR, ",", ""),
            (10, FIELD, "labels", ""),
            (16, SEPARATOR, ".", ""),
            (17, FIELD, "moo", ""),
            (20, OPERATOR, "=", ""),
            (21, VALUE, "true", ""),
            (25, EOF, "", ""),
        ],
    ),
    "Escapes": (
        r'name~="asdf\n\tfooo"',
        [
            (0, FIELD, "name", ""),
            (4, OPERATOR, "~=", ""),
            (6, QUOTED, r'"asdf\n\tfooo"', ""),
            (20, EOF, "", ""),
        ],
    ),
    "NullInput": (
        "foo\x00bar",
        [
            (0, FIELD, "foo", ""),
            (3, ILLEGAL, "", "unexpected null"),
            (4, FIELD, "bar", ""),
            (7, EOF, "", ""),
        ],
    ),
    "SpacesChomped": (
        "foo = bar    ",
        [
            (0, FIELD, "foo", ""),
            (4, OPERATOR, "=", ""),
            (6, VALUE, "bar", ""),
            (13, EOF, "", ""),
        ],
    ),
    "ValuesPunctuated": (
        "compound.labels==punctuated_value.foo-bar",
        [
            (0, FIELD, "compound", ""),
            (8, SEPARATOR, ".", ""),
            (9, FIELD, "labels", ""),
            (15, OPERATOR, "==", ""),
            (17, VALUE, "punctuated_value.foo-bar", ""),
            (41, EOF, "", ""),
        ],
    ),
    "PartialInput": (
        "interrupted=",
        [(0, FIELD, "interrupted", ""), (11, OPERATOR, "=", ""), (12, EOF, "", "")],
    ),
    "DoubleValue": (
        "doublevalue=value value",
        [
            (0, FIELD, "doublevalue", ""),
            (11, OPERATOR, "=", ""),
            (12, VALUE, "value", ""),
            (18, FIELD, "value", ""),
            (23, EOF, "", ""),
        ],
    ),
    "LeadingWithQuoted": (
        '"leading quote".postquote==value',
        [
            (0, QUOTED, '"leading quote"', ""),
            (15, SEPARATOR, ".", ""),
            (16, FIELD, "postquote", ""),
            (25, OPERATOR, "==", ""),
            (27, VALUE, "value", ""),
            (32, EOF, "", ""),
        ],
    ),
    "MissingValue": (
        "input==,id!=ff",
        [
            (0, FIELD, "input", ""),
            (5, OPERATOR, "==", ""),
            (7, SEPARATOR, ",", ""),
            (8, FIELD, "id", ""),
            (10, OPERATOR, "!=", ""),
            (12, VALUE, "ff", ""),
            (14, EOF, "", ""),
        ],
    ),
    "QuotedRegexp": (
        r"input~=/foo\/bar/,id!=ff",
        [
            (0, FIELD, "input", ""),
            (5, OPERATOR, "~=", ""),
            (7, QUOTED, r"/foo\/bar/", ""),
            (17, SEPARATOR, ",", ""),
            (18, FIELD, "id", ""),
            (20, OPERATOR, "!=", ""),
            (22, VALUE, "ff", ""),
            (24, EOF, "", ""),
        ],
    ),
    "QuotedRegexpAlt": (
        "input~=|foo/bar|,id!=ff",
        [
            (0, FIELD, "input", ""),
            (5, OPERATOR, "~=", ""),
            (7, QUOTED, "|foo/bar|", ""),
            (16, SEPARATOR, ",", ""),
            (17, FIELD, "id", ""),
            (19, OPERATOR, "!=", ""),
            (21, VALUE, "ff", ""),
            (23, EOF, "", ""),
        ],
    ),
    "IllegalQuoted": (
        "labels.containerd.io/key==value",
        [
            (0, FIELD, "labels", ""),
            (6, SEPARATOR, ".", ""),
            (7, FIELD, "containerd", ""),
            (17, SEPARATOR, ".", ""),
            (18, FIELD, "io", ""),
            (20, ILLEGAL, "/key==value", "quoted literal not terminated"),
            (31, EOF, "", ""),
        ],
    ),
    "IllegalQuotedWithNewLine": (
        'labels."containerd.io\nkey"==value',
        [
            (0, FIELD, "labels", ""),
            (6, SEPARATOR, ".", ""),
            (7, ILLEGAL, '"containerd.io\n', "quoted literal not terminated"),
            (22, FIELD, "key", ""),
            (25, ILLEGAL, '"==value', "quoted literal not terminated"),
            (33, EOF, "", ""),
        ],
    ),
    "IllegalEscapeSequence": (
        r'labels."\g"',
        [
            (0, FIELD, "labels", ""),
            (6, SEPARATOR, ".", ""),
            (7, ILLEGAL, r'"\g"', "illegal escape sequence"),
            (11, EOF, "", ""),
        ],
    ),
    "IllegalNumericEscapeSequence": (
        r'labels."\xaz"',
        [
            (0, FIELD, "labels", ""),
            (6, SEPARATOR, ".", ""),
            (7, ILLEGAL, r'"\xaz"', "illegal numeric escape sequence"),
            (13, EOF, "", ""),
        ],
    ),
    # Not in Go's tests: anything else comes out as a single character.
    "OtherCharacter": ("a?b", [(0, FIELD, "a", ""), (1, CHAR, "?", ""), (2, FIELD, "b", "")]),
    # Go's unicode.IsSpace: \x1c is no space (str.isspace says otherwise), NBSP is.
    "GoSpaces": (
        "\xa0a\x1c",
        [(1, FIELD, "a", ""), (2, CHAR, "\x1c", ""), (3, EOF, "", "")],
    ),
}


def scan_all(text: str) -> list[Scanned]:
    scanner = Scanner(text)
    scanned: list[Scanned] = []
    while True:
        lexeme = scanner.scan()
        error = scanner.err if lexeme.token is ILLEGAL else ""
        scanned.append((lexeme.pos, lexeme.token, lexeme.text, error))
        if lexeme.token is EOF:
            return scanned


@pytest.mark.parametrize(("text", "expected"), SCANNER_CASES.values(), ids=SCANNER_CASES.keys())
def test_scanner(text: str, expected: list[Scanned]) -> None:
    scanned = scan_all(text)
    if expected[-1][1] is not EOF:
        expected = [*expected, (len(text), EOF, "", "")]
    assert scanned == expected


def test_scanner_stays_at_eof() -> None:
    scanner = Scanner("a")
    scanner.scan()
    assert scanner.scan() == Lexeme(1, EOF, "")
    assert scanner.scan() == Lexeme(1, EOF, "")


# --- what a parse produces ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ALWAYS),
        ("name", Present(("name",))),
        ("name==foo", Equal(("name",), "foo")),
        ("name!=foo", NotEqual(("name",), "foo")),
        ("name~=^foo", Matches(("name",), "^foo")),
        ("labels.a.b==c", Equal(("labels", "a", "b"), "c")),
        ('labels."a.b"==c', Equal(("labels", "a.b"), "c")),
        ('"quoted".first', Present(("quoted", "first"))),
        ("0_a.A_0", Present(("0_a", "A_0"))),
        ('a==""', Equal(("a",), "")),
        ("a==x.y-z/w:1@2", Equal(("a",), "x.y-z/w:1@2")),
        ("a==x|y", Equal(("a",), "x|y")),
        ("a==b==c", Equal(("a",), "b==c")),
        ("a==é牛", Equal(("a",), "é牛")),
        ("a,b", All((Present(("a",)), Present(("b",))))),
        (
            "a==1,b!=2,c~=3,d",
            All(
                (
                    Equal(("a",), "1"),
                    NotEqual(("b",), "2"),
                    Matches(("c",), "3"),
                    Present(("d",)),
                )
            ),
        ),
    ],
)
def test_parse_structure(text: str, expected: Filter) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("  name==x", Equal(("name",), "x"), id="leading"),
        pytest.param("name ==x", Equal(("name",), "x"), id="before operator"),
        pytest.param("name== x", Equal(("name",), "x"), id="after operator"),
        pytest.param("name \t== \t x", Equal(("name",), "x"), id="tabs"),
        pytest.param("labels. foo", Present(("labels", "foo")), id="after dot"),
        pytest.param(
            "a==1, \tb==2",
            All((Equal(("a",), "1"), Equal(("b",), "2"))),
            id="after comma",
        ),
        pytest.param('a == "x y"', Equal(("a",), "x y"), id="around quoted"),
    ],
)
def test_whitespace_before_a_token_is_skipped(text: str, expected: Filter) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r'a=="\a\b\f\n\r\t\v\\\""', '\a\b\f\n\r\t\v\\"'),
        (r'a=="\x41\u00e9\U0001F600"', "Aé\U0001f600"),
        (r'a=="\101\142"', "Ab"),
        (r'a=="\xc3\xa9"', "é"),  # bytes that happen to form UTF-8
        (r'a=="\303\251"', "é"),
        (r'a=="\uD800"', "\ufffd"),  # Go encodes a surrogate code point as RuneError
        (r'a=="\u0000"', "\0"),  # escaped, a NUL is fine
        ('a=="é牛"', "é牛"),
        ('a=="a,b c"', "a,b c"),
        ('a=="/|"', "/|"),
        ('"a b".c==d', "d"),
        (r"a~=/x\/y/", "x/y"),
        (r"a~=/x|y/", "x|y"),
        (r"a~=|x\|y|", "x|y"),
        (r"a~=|x/y|", "x/y"),
        (r'a~=/"\n/', '"\n'),
        (r"a~=/\\d+/", r"\d+"),
    ],
)
def test_quoted_values_use_go_string_escapes(text: str, expected: str) -> None:
    selector = parse(text)
    assert isinstance(selector, Equal | Matches)
    assert (selector.value if isinstance(selector, Equal) else selector.pattern) == expected


def test_quoted_field_escapes() -> None:
    assert parse(r'labels."a\"b\\c\x2fd"') == Present(("labels", 'a"b\\c/d'))


@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\ufffd")))
def test_any_json_quoted_label_key_parses_back(key: str) -> None:
    # JSON strings are valid Go string literals once non-ASCII characters are left raw.
    assert parse(f"labels.{json.dumps(key, ensure_ascii=False)}") == Present(("labels", key))


@given(st.text())
def test_parse_raises_only_invalid_argument(text: str) -> None:
    try:
        selector = parse(text)
    except InvalidArgument as error:
        str(error).encode()  # the message must be sendable as a gRPC status
    else:
        selector.match(lambda fieldpath: "value")


# --- malformed filters ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name==", "[name==]: expected value or quoted"),
        ("name!=", "[name!=]: expected value or quoted"),
        ("name~=", "[name~=]: expected value or quoted"),
        ("a==,b", "[a== >|,|< b]: expected value or quoted"),
        ("==x", "[ >|=|< =x]: expected field or quoted"),
        ("~=x", "[ >|~|< =x]: expected field or quoted"),
        ("name=x", '[name >|=|< x]: unsupported operator "="'),
        ("name===x", '[name >|=|< ==x]: unsupported operator "==="'),
        ("name=!x", '[name >|=|< !x]: unsupported operator "=!"'),
        ("name==!x", '[name >|=|< =!x]: unsupported operator "==!"'),
        ("name!", '[name >|!|< ]: unsupported operator "!"'),
        ("name?", '[name >|?|< ]: expected an operator ("=="|"!="|"~=")'),
        ("name==a b", "[name==a >| |< b]: unexpected input:  "),
        ('name=="a"b', '[name=="a" >|b|< ]: unexpected input: b'),
        ("labels.", "[labels.]: expected field or quoted"),
        ("a.b.", "[a.b.]: expected field or quoted"),
        ("a..b", "[a. >|.|< b]: expected field or quoted"),
        ("labels.?x", "[labels. >|?|< x]: expected field or quoted"),
        (",name", "[ >|,|< name]: expected field or quoted"),
        ("a,,b", "[a, >|,|< b]: expected field or quoted"),
        (" ", "[ ]: expected field or quoted"),
        ("name==.x", "[name== >|.|< x]: expected value or quoted"),
        ('"unterminated', '[ >|"|< unterminated]: quoted literal not terminated'),
        ('name=="x', '[name== >|"|< x]: quoted literal not terminated'),
        ("name~=/x", "[name~= >|/|< x]: quoted literal not terminated"),
        ("name~=|x", "[name~= >|||< x]: quoted literal not terminated"),
        ('labels."a\nb"', '[labels. >|"|< a\nb"]: quoted literal not terminated'),
        ("name==/x/", "[name== >|/|< x/]: invalid quote encountered"),
        ("name!=|x|", "[name!= >|||< x|]: invalid quote encountered"),
        ("labels./foo/", "[labels. >|/|< foo/]: invalid quote encountered"),
        (r'labels."\g"', r'[labels. >|"|< \g"]: illegal escape sequence'),
        # The first error found is the one reported.
        ('labels."\\g\n"', '[labels. >|"|< \\g\n"]: illegal escape sequence'),
        (r'name=="\'"', r'[name== >|"|< \'"]: illegal escape sequence'),
        (r"name~=/a\.b/", r"[name~= >|/|< a\.b/]: illegal escape sequence"),
        (r"name~=|a\/b|", r"[name~= >|||< a\/b|]: illegal escape sequence"),
        (r"name~=/a\|b/", r"[name~= >|/|< a\|b/]: illegal escape sequence"),
        (r'labels."\1"', r'[labels. >|"|< \1"]: illegal numeric escape sequence'),
        (r'a=="\u12"', r'[a== >|"|< \u12"]: illegal numeric escape sequence'),
        (r'labels."\777"', r'[labels. >|"|< \777"]: unquoting failed: quote syntax error'),
        (
            r'a=="\U00110000"',
            r'[a== >|"|< \U00110000"]: unquoting failed: quote syntax error',
        ),
        ("name\x00", "[name >|\x00|< ]: unexpected null"),
        ("na\x00me==x", "[na >|\x00|< me==x]: unexpected null"),
        ('a=="x\x00"', '[a== >|"|< x\x00"]: unexpected null'),
        # Go reports the illegal character it peeked as utf8.RuneError.
        ("name==a\x00", "[name==a >|\x00|< ]: unexpected input: \ufffd"),
        ("name==\ufffd", "[name== >|\ufffd|< ]: rune error"),
        ("name==\ud800", r"[name== >|\ud800|< ]: rune error"),
        ("labels.\udcff", r"[labels. >|\udcff|< ]: rune error"),
    ],
)
def test_malformed_filter(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse(text)
    assert str(raised.value) == f"filters: parse error: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name==x ", "[name==x >| |< ]: unexpected input:  "),
        ("name==x\t", "[name==x >|\t|< ]: unexpected input: \t"),
        ("name==x ,b", "[name==x >| |< ,b]: unexpected input:  "),
        ("name ,b", '[name  >|,|< b]: expected an operator ("=="|"!="|"~=")'),
        ("labels .foo", '[labels  >|.|< foo]: expected an operator ("=="|"!="|"~=")'),
    ],
)
def test_whitespace_after_a_selector_is_an_error_as_in_go(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse(text)
    assert str(raised.value) == f"filters: parse error: {message}"


def test_first_character_of_a_value_is_taken_whatever_it_is() -> None:
    # Go only checks the characters after the first one of an unquoted value.
    assert parse("a==\x01") == Equal(("a",), "\x01")
    with pytest.raises(InvalidArgument, match="unexpected input"):
        parse("a==b\x01")


# --- matching snapshots ---------------------------------------------------------------

SNAPSHOTS: list[dict[str, str | dict[str, str]]] = [
    {"kind": "committed", "name": "sha256:base", "parent": "", "labels": {}},
    {
        "kind": "committed",
        "name": "sha256:top",
        "parent": "sha256:base",
        "labels": {"containerd.io/gc.root": "2024-01-01", "foo": "bar"},
    },
    {
        "kind": "active",
        "name": "k8s.io/12/abc",
        "parent": "sha256:top",
        "labels": {"foo": "baz", "containerd.io/snapshot.ref": "sha256:top"},
    },
    {"kind": "view", "name": "view-1", "parent": "sha256:top", "labels": {"a|b": "c/d"}},
]


def snapshot_lookup(info: Mapping[str, str | dict[str, str]]) -> Lookup:
    """Like containerd's adaptSnapshot: kind, name and parent always exist."""

    def lookup(fieldpath: Sequence[str]) -> str | None:
        match fieldpath:
            case ["kind" | "name" | "parent" as field]:
                value = info[field]
                assert isinstance(value, str)
                return value
            case ["labels", *key] if key:
                labels = info["labels"]
                assert isinstance(labels, dict)
                return labels.get(".".join(key))
        return None

    return lookup


def matching_snapshots(selector: Filter) -> list[int]:
    return [i for i, info in enumerate(SNAPSHOTS) if selector.match(snapshot_lookup(info))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind==active", [2]),
        ("kind!=committed", [2, 3]),
        ("parent==sha256:top", [2, 3]),
        ('parent==""', [0]),
        ("parent", [0, 1, 2, 3]),
        ('labels."containerd.io/gc.root"', [1]),
        ("labels.containerd.io/gc.root", None),  # unquoted '/' starts a quote
        ("labels.foo", [1, 2]),
        ("labels.foo==bar", [1]),
        ("labels.foo!=bar", [0, 2, 3]),
        ("labels.missing", []),
        ("labels", []),
        ("unknown!=x", [0, 1, 2, 3]),
        ("kind==committed,labels.foo", [1]),
        ("kind==committed,labels.foo,name~=top$", [1]),
        ("name~=^sha256:", [0, 1]),
        ("name~=/^sha256:/", [0, 1]),
        ("name~=|^k8s.io/|", [2]),
        ("name~=/^k8s.io\\//", [2]),
        (r'labels."containerd.io/snapshot.ref"~=|^sha256:\x74op$|', [2]),
        ('labels."a|b"==c/d', [3]),
        ("name~=o", [1, 2]),  # a search, not a full match
        ("name~=(", []),  # a bad regex is no parse error, it matches nothing
        ("name~=[", []),
        ("name!=x,name~=(", []),
        ("  kind == active", [2]),
        ('kind==view, labels.\t"a|b"', [3]),
    ],
)
def test_snapshot_filters(text: str, expected: list[int] | None) -> None:
    if expected is None:
        with pytest.raises(InvalidArgument):
            parse(text)
    else:
        assert matching_snapshots(parse(text)) == expected


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ([], [0, 1, 2, 3]),
        ([""], [0, 1, 2, 3]),
        (["kind==view"], [3]),
        (["kind==active", "kind==view"], [2, 3]),
        (["kind==committed,labels.foo", "kind==view"], [1, 3]),
        (["name~=(", "kind==active"], [2]),
        (["kind==nothing", ""], [0, 1, 2, 3]),
        (["kind==nothing", "labels.nothing"], []),
    ],
)
def test_parse_all_ors_filters(texts: list[str], expected: list[int]) -> None:
    assert matching_snapshots(parse_all(texts)) == expected


def test_parse_all_structure() -> None:
    assert parse_all([]) is ALWAYS
    assert parse_all(["a"]) == Present(("a",))
    assert parse_all(["a", "b==c"]) == Any((Present(("a",)), Equal(("b",), "c")))


def test_parse_all_rejects_any_malformed_filter() -> None:
    with pytest.raises(InvalidArgument, match=r"^filters: parse error: \[name==\]"):
        parse_all(["kind==active", "name=="])


def test_parse_all_refuses_a_bare_string() -> None:
    with pytest.raises(TypeError):
        parse_all("kind==active")


# --- semantics of absent fields and of regular expressions ----------------------------


def lookup_of(fields: Mapping[tuple[str, ...], str]) -> Lookup:
    return lambda fieldpath: fields.get(tuple(fieldpath))


NOTHING = lookup_of({})
EMPTY_NAME = lookup_of({("name",): ""})


def test_present_counts_an_empty_value_as_present() -> None:
    assert parse("name").match(EMPTY_NAME)
    assert not parse("name").match(NOTHING)


def test_not_equal_compares_an_absent_field_as_the_empty_string() -> None:
    # As containerd's selector.Match: an absent field is "" to != (but absent to ==).
    assert not parse('name!=""').match(NOTHING)
    assert parse("name!=x").match(NOTHING)
    assert not parse('name!=""').match(EMPTY_NAME)
    assert parse('name==""').match(EMPTY_NAME)
    assert not parse('name==""').match(NOTHING)


def test_matches_searches_an_absent_field_as_the_empty_string() -> None:
    assert parse("name~=^$").match(NOTHING)
    assert parse("name~=^$").match(EMPTY_NAME)
    assert not parse("name~=x").match(NOTHING)


def test_value_with_invalid_utf8_equals_nothing() -> None:
    not_utf8 = parse(r'name=="\xff"')
    assert not not_utf8.match(lookup_of({("name",): "\xff"}))
    assert not not_utf8.match(lookup_of({("name",): "ÿ"}))
    assert parse(r'name!="\xff"').match(lookup_of({("name",): "ÿ"}))
    assert not parse(r"name~=/\xff/").match(lookup_of({("name",): "ÿ"}))


def test_regex_is_compiled_once_at_parse_time(monkeypatch: pytest.MonkeyPatch) -> None:
    selector = parse("name~=^a+$,labels.x~=b")
    assert isinstance(selector, All)
    assert all(isinstance(s, Matches) and s.regex is not None for s in selector.filters)

    def no_compiling(*args: object, **kwargs: object) -> re.Pattern[str]:
        raise AssertionError("compiled a regex while matching")

    monkeypatch.setattr(re, "compile", no_compiling)
    fields = lookup_of({("name",): "aaa", ("labels", "x"): "abc"})
    assert all(selector.match(fields) for _ in range(3))


def test_same_pattern_shares_the_compiled_regex() -> None:
    first, second = parse("a~=x+y"), parse("b~=x+y")
    assert isinstance(first, Matches)
    assert isinstance(second, Matches)
    assert first.regex is second.regex


def test_bad_regex_compiles_to_nothing() -> None:
    selector = parse("name~=(")
    assert isinstance(selector, Matches)
    assert selector.regex is None
    assert not selector.match(lookup_of({("name",): "("}))


def test_filters_module_exports_the_small_api() -> None:
    assert filters.__all__ == ["Filter", "Lookup", "parse", "parse_all"]
