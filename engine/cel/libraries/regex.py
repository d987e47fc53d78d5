"""Kubernetes' CEL regex library (`find`, `findAll`; k8s.io/apiserver/pkg/cel/library/regex.go).

The C++ runtime's `matches()` uses RE2, but `find`/`findAll` are implemented here with Python's `re`, whose
syntax and semantics differ from RE2's. `translate` rewrites an RE2 pattern into an equivalent Python one
where the two disagree (`\\z`, `$` at end of text, ASCII-only `\\d \\w \\s \\b`, POSIX classes, `\\Q...\\E`,
`\\x{...}`, `(?<name>...)`) and rejects what RE2 rejects (look-arounds, back-references), so that a policy
matches the same text as in Kubernetes. Compiled patterns are cached; pattern and subject sizes are bounded
because Python's backtracking engine, unlike RE2, is not linear-time.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from engine.cel.libraries import Library, cel

MAX_PATTERN_LENGTH = 2048
MAX_SUBJECT_LENGTH = 1 << 20
"""Longest string `find`/`findAll` search (1 MiB)."""

_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_PERL_IN_CLASS = {"d": "0-9", "w": "0-9A-Za-z_", "s": "\\t\\n\\f\\r "}
_PERL_OUTSIDE = {
    "d": "[0-9]",
    "D": "[^0-9]",
    "w": "[0-9A-Za-z_]",
    "W": "[^0-9A-Za-z_]",
    "s": "[\\t\\n\\f\\r ]",
    "S": "[^\\t\\n\\f\\r ]",
    "b": "(?a:\\b)",
    "B": "(?a:\\B)",
    "z": "\\Z",
    "A": "\\A",
}
_MULTILINE_FLAG = re.compile(r"\(\?[a-zA-Z]*m")


class RegexError(ValueError):
    """A pattern RE2 would reject, or one this module cannot translate faithfully."""


def _hex_escape(code: int) -> str:
    return re.escape(chr(code))


def _translate_escape(pattern: str, i: int, in_class: bool) -> tuple[str, int]:
    """Translate the escape starting at pattern[i] == '\\'; return (python text, next index)."""
    if i + 1 >= len(pattern):
        raise RegexError("trailing backslash at end of expression")
    c = pattern[i + 1]
    if c == "Q":
        end = pattern.find("\\E", i + 2)
        literal = pattern[i + 2 :] if end < 0 else pattern[i + 2 : end]
        return "".join(re.escape(ch) for ch in literal), len(pattern) if end < 0 else end + 2
    if c == "x" and i + 2 < len(pattern) and pattern[i + 2] == "{":
        end = pattern.find("}", i + 3)
        digits = pattern[i + 3 : end] if end > 0 else ""
        if not digits or any(ch not in "0123456789abcdefABCDEF" for ch in digits) or int(digits, 16) > 0x10FFFF:
            raise RegexError(f"invalid escape sequence: `{pattern[i : end + 1 if end > 0 else i + 3]}`")
        return _hex_escape(int(digits, 16)), end + 1
    if c.isdigit() and c != "0":
        raise RegexError(f"invalid escape sequence: `\\{c}` (RE2 has no back-references)")
    if c in "pP":
        raise RegexError(f"unsupported Unicode class escape `\\{c}` in find/findAll")
    if in_class and c in _PERL_IN_CLASS:
        return _PERL_IN_CLASS[c], i + 2
    if not in_class and c in _PERL_OUTSIDE:
        return _PERL_OUTSIDE[c], i + 2
    if c == "Z":
        raise RegexError("invalid escape sequence: `\\Z`")
    return pattern[i : i + 2], i + 2


def _translate_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate the character class opening at pattern[i] == '['."""
    out = ["["]
    i += 1
    if i < len(pattern) and pattern[i] == "^":
        out.append("^")
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        out.append("\\]")
        i += 1
    while i < len(pattern):
        c = pattern[i]
        if c == "]":
            out.append("]")
            return "".join(out), i + 1
        if c == "[" and pattern.startswith("[:", i):
            end = pattern.find(":]", i + 2)
            name = pattern[i + 2 : end] if end > 0 else ""
            if name not in _POSIX_CLASSES:
                raise RegexError(f"invalid character class range: `{pattern[i : end + 2 if end > 0 else i + 2]}`")
            out.append(_POSIX_CLASSES[name])
            i = end + 2
        elif c == "\\":
            text, i = _translate_escape(pattern, i, in_class=True)
            out.append(text)
        elif c in "[&~|" or (c == "-" and pattern.startswith("--", i)):
            out.append("\\" + c)  # literal in RE2; Python would warn about future set operations
            i += 1
        else:
            out.append(c)
            i += 1
    raise RegexError(f"missing closing ]: `{pattern}`")


def translate(pattern: str) -> str:
    """Rewrite an RE2 pattern into a Python `re` pattern with the same meaning."""
    multiline = _MULTILINE_FLAG.search(pattern) is not None
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            text, i = _translate_escape(pattern, i, in_class=False)
            out.append(text)
        elif c == "[":
            text, i = _translate_class(pattern, i)
            out.append(text)
        elif c == "(" and pattern.startswith("(?", i):
            if pattern.startswith(("(?=", "(?!", "(?<=", "(?<!", "(?P="), i):
                raise RegexError(f"invalid or unsupported Perl syntax: `{pattern[i : i + 3]}`")
            if pattern.startswith("(?<", i):
                out.append("(?P<")
                i += 3
            else:
                out.append("(?")
                i += 2
        elif c == "$" and not multiline:
            out.append("\\Z")  # RE2's $ without (?m) matches only at the very end of the text
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile an RE2 pattern (cached); raise ValueError with Go's wording on a bad pattern."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise RegexError(f"error parsing regexp: pattern longer than {MAX_PATTERN_LENGTH} characters")
    try:
        return re.compile(translate(pattern))
    except RegexError as error:
        raise RegexError(f"error parsing regexp: {error}") from None
    except re.error as error:
        raise RegexError(f"error parsing regexp: {error.msg}: `{pattern}`") from None


def _subject(text: str) -> str:
    if len(text) > MAX_SUBJECT_LENGTH:
        raise ValueError(f"find/findAll: string longer than {MAX_SUBJECT_LENGTH} characters")
    return text


def _find(text: str, pattern: str) -> str:
    match = compile_pattern(pattern).search(_subject(text))
    return match.group(0) if match else ""


def _find_all_limited(text: str, pattern: str, limit: int) -> list[str]:
    compiled = compile_pattern(pattern)
    if limit == 0:
        return []
    found: list[str] = []
    previous_end = -1
    for match in compiled.finditer(_subject(text)):
        # Go skips an empty match right after the previous match (Python reports it).
        if match.start() == match.end() == previous_end:
            continue
        found.append(match.group(0))
        previous_end = match.end()
        if 0 < limit <= len(found):
            break
    return found


def _find_all(text: str, pattern: str) -> list[str]:
    return _find_all_limited(text, pattern, -1)


_S = cel.Type.STRING


def _member(overload_id: str, result: Any, params: list[Any], impl: Any) -> Any:
    return cel.Overload(overload_id, result, params, is_member=True, impl=impl)


LIBRARY = Library(
    "kubernetes.regex",
    (
        cel.FunctionDecl("find", [_member("string_find_string", _S, [_S, _S], _find)]),
        cel.FunctionDecl(
            "findAll",
            [
                _member("string_find_all_string", cel.Type.List(_S), [_S, _S], _find_all),
                _member(
                    "string_find_all_string_int",
                    cel.Type.List(_S),
                    [_S, _S, cel.Type.INT],
                    _find_all_limited,
                ),
            ],
        ),
    ),
)
