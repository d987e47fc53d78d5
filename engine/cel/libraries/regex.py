"""Kubernetes' CEL regex library (`find`, `findAll`; k8s.io/apiserver/pkg/cel/library/regex.go).

Patterns are compiled with RE2 (the `google-re2` package), the engine behind Go's `regexp` and the C++
runtime's `matches()`, so `find`/`findAll` accept the same syntax as Kubernetes (`\\p{..}`, POSIX classes,
`\\Q...\\E`, mid-pattern flags such as `(?i)`) and run in time linear in the subject: a pathological pattern
such as `(a|a)*b` cannot stall the admission path. What RE2 rejects (look-arounds, back-references) is
reported with Go's wording and the offending pattern. Compiled patterns are cached in a bounded LRU cache.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

from engine.cel.libraries import Library, cel

MAX_PATTERN_LENGTH = 2048
MAX_SUBJECT_LENGTH = 1 << 20
"""Longest string `find`/`findAll` search (1 MiB)."""

PATTERN_CACHE_SIZE = 256
"""Most compiled patterns kept by `compile_pattern`."""

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # errors are raised as RegexError, not logged to stderr by the C++ library

# RE2's (C++) error texts and Go's regexp/syntax wording for the same error codes.
_GO_ERRORS = {
    "invalid escape sequence": "invalid escape sequence",
    "invalid character class": "invalid character class",
    "invalid character class range": "invalid character class range",
    "missing ]": "missing closing ]",
    "missing )": "missing closing )",
    "unexpected )": "unexpected )",
    "trailing \\": "trailing backslash at end of expression",
    "no argument for repetition operator": "missing argument to repetition operator",
    "invalid repetition size": "invalid repeat count",
    "bad repetition operator": "invalid nested repetition operator",
    "invalid perl operator": "invalid or unsupported Perl syntax",
    "invalid UTF-8": "invalid UTF-8",
    "invalid named capture group": "invalid named capture",
    "pattern too large - compile failed": "expression too large",
    "pattern too large - reverse compile failed": "expression too large",
}
_LOOK_AROUNDS = ("(?=", "(?!", "(?<=", "(?<!")


class RegexError(ValueError):
    """A pattern RE2 (and therefore Kubernetes) rejects."""


def _reject_byte_escape(pattern: str) -> None:
    """Reject `\\C` (any byte): C++ RE2 accepts it, Go's regexp does not."""
    i = 0
    while i < len(pattern) - 1:
        if pattern[i] != "\\":
            i += 1
        elif pattern[i + 1] == "Q":
            end = pattern.find("\\E", i + 2)
            i = len(pattern) if end < 0 else end + 2
        elif pattern[i + 1] == "C":
            raise RegexError(f"error parsing regexp: invalid escape sequence: `\\C` in `{pattern}`")
        else:
            i += 2


def _is_back_reference(code: str, argument: str, pattern: str) -> bool:
    if code == "invalid escape sequence":
        return argument[1:2].isdigit()  # `\1`; octal escapes (`\0`, `\12`) are accepted by RE2 and Go
    return code == "invalid perl operator" and argument == "(?P" and "(?P=" in pattern


def _error_message(error: Exception, pattern: str) -> str:
    """Go's wording for an RE2 compile error, naming the pattern and explaining RE2-only restrictions."""
    raw = error.args[0] if error.args else ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    code, _, argument = text.partition(": ")
    message = f"error parsing regexp: {_GO_ERRORS.get(code, code)}"
    if argument:
        message += f": `{argument}`"
    if code == "invalid perl operator" and argument.startswith(_LOOK_AROUNDS):
        message += " (look-ahead and look-behind assertions are not supported by RE2)"
    elif _is_back_reference(code, argument, pattern):
        message += " (back-references are not supported by RE2)"
    if argument != pattern:
        message += f" in `{pattern}`"
    return message


@functools.lru_cache(maxsize=PATTERN_CACHE_SIZE)
def compile_pattern(pattern: str) -> Any:
    """Compile an RE2 pattern (cached); raise RegexError with Go's wording on a bad pattern."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise RegexError(f"error parsing regexp: pattern longer than {MAX_PATTERN_LENGTH} characters")
    _reject_byte_escape(pattern)
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as error:
        raise RegexError(_error_message(error, pattern)) from None


def _subject(text: str) -> str:
    if len(text) > MAX_SUBJECT_LENGTH:
        raise ValueError(f"find/findAll: string longer than {MAX_SUBJECT_LENGTH} characters")
    return text


def _find(text: str, pattern: str) -> str:
    match = compile_pattern(pattern).search(_subject(text))
    return str(match.group(0)) if match else ""


def _find_all_limited(text: str, pattern: str, limit: int) -> list[str]:
    compiled = compile_pattern(pattern)
    if limit == 0:
        return []
    found: list[str] = []
    previous_end = -1
    for match in compiled.finditer(_subject(text)):
        # Go skips an empty match right after the previous match (the re2 module, like `re`, reports it).
        if match.start() == match.end() == previous_end:
            continue
        found.append(str(match.group(0)))
        previous_end = match.end()
        if 0 < limit <= len(found):
            break
    return found


def _find_all(text: str, pattern: str) -> list[str]:
    return _find_all_limited(text, pattern, -1)


# cel-go's regex extension (`ext.Regex`, part of Kyverno's environment): regex.replace/extract/extractAll.
EXTRACT_FUNCTION = "__celvern_regex_extract"
"""`regex.extract` returns an optional, which Python cannot build: the rewriter turns the list this returns
(empty, or the one match) into `optional.none()` / `optional.of(match)`."""


def _single_group(compiled: Any, pattern: str, function: str) -> int:
    if compiled.groups > 1:
        raise ValueError(f"{function}: regular expression has more than one capturing group: {pattern!r}")
    return int(compiled.groups)


def _replacement(template: str) -> str:
    """cel-go's replacement syntax (`\\1`..`\\9` capture groups, `\\\\` a backslash) in the re2 module's terms."""
    out: list[str] = []
    index = 0
    while index < len(template):
        char = template[index]
        if char == "\\" and index + 1 < len(template):
            following = template[index + 1]
            if following.isdigit():
                out.append(f"\\g<{following}>")
            elif following == "\\":
                out.append("\\\\")
            else:
                raise ValueError(f"regex.replace: invalid replacement string {template!r}: \\{following}")
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def _replace_count(text: str, pattern: str, replacement: str, count: int) -> str:
    if count == 0:
        return text
    compiled = compile_pattern(pattern)
    return str(compiled.sub(_replacement(replacement), _subject(text), count=max(count, 0)))


def _replace(text: str, pattern: str, replacement: str) -> str:
    return _replace_count(text, pattern, replacement, -1)


def _extract(text: str, pattern: str) -> list[str]:
    compiled = compile_pattern(pattern)
    groups = _single_group(compiled, pattern, "regex.extract")
    match = compiled.search(_subject(text))
    if match is None:
        return []
    value = match.group(groups)
    return [] if value is None else [str(value)]


def _extract_all(text: str, pattern: str) -> list[str]:
    compiled = compile_pattern(pattern)
    groups = _single_group(compiled, pattern, "regex.extractAll")
    found = []
    for match in compiled.finditer(_subject(text)):
        value = match.group(groups)
        if value is not None and (groups or value):
            found.append(str(value))
    return found


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
        cel.FunctionDecl(
            "regex.replace",
            [
                cel.Overload("regex_replace_string_string_string", _S, [_S, _S, _S], impl=_replace),
                cel.Overload(
                    "regex_replace_string_string_string_int", _S, [_S, _S, _S, cel.Type.INT], impl=_replace_count
                ),
            ],
        ),
        cel.FunctionDecl(
            EXTRACT_FUNCTION,
            [cel.Overload("celvern_regex_extract_string_string", cel.Type.List(_S), [_S, _S], impl=_extract)],
        ),
        cel.FunctionDecl(
            "regex.extractAll",
            [cel.Overload("regex_extract_all_string_string", cel.Type.List(_S), [_S, _S], impl=_extract_all)],
        ),
    ),
)
