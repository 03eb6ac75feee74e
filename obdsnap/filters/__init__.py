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

As in Go, the package is in layers: ``scanner`` splits a string into tokens, ``quote``
interprets quoted literals, ``parser`` builds filters from the tokens and ``matching``
holds the filters themselves. The scanner and parser follow the Go code closely, so that
the filters containerd accepts are accepted here, with the same error messages. Known
differences:

* error positions count code points instead of UTF-8 bytes;
* regular expressions use Python's ``re`` instead of RE2 (they agree on common syntax).

As in Go, ``!=`` and ``~=`` see an absent field as "" (so ``f!=x`` and ``f~=^$``
match a snapshot without ``f``), while ``==`` and presence need the field.
"""

from obdsnap.filters.matching import Filter, Lookup
from obdsnap.filters.parser import parse, parse_all

__all__ = ["Filter", "Lookup", "parse", "parse_all"]
