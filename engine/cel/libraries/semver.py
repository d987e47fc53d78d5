"""Kubernetes' CEL semver library (k8s.io/apiserver/pkg/cel/library/semverlib.go) for cel-expr-python.

Kubernetes parses versions with github.com/blang/semver/v4 (optionally after its own normalisation: strip a
leading "v", drop leading zeros, fill in a missing minor/patch). This module ports those rules and their
error messages. A version is an opaque map holding its text without build metadata, because Kubernetes
compares versions with semver precedence, where build metadata does not count: `semver("1.0.0+a") ==
semver("1.0.0+b")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.cel.libraries import Library, cel, opaque, opaque_type

TYPE_NAME = "semver"
_MAX_VERSION_LENGTH = 256
_NUMBERS = frozenset("0123456789")
_ALPHANUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_UINT64_MAX = 2**64 - 1
_INT64_MAX = 2**63 - 1


class SemverError(ValueError):
    """A string blang/semver rejects."""


@dataclass(frozen=True, slots=True)
class Version:
    """A parsed semantic version (build metadata dropped)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...]

    def text(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return core + ("-" + ".".join(str(p) for p in self.prerelease) if self.prerelease else "")


def _contains_only(text: str, allowed: frozenset[str]) -> bool:
    return all(c in allowed for c in text)


def _has_leading_zeroes(text: str) -> bool:
    return len(text) > 1 and text[0] == "0"


def _parse_uint(text: str) -> int:
    if not text:
        raise SemverError('strconv.ParseUint: parsing "": invalid syntax')
    value = int(text)
    if value > _UINT64_MAX:
        raise SemverError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


def _number(text: str, what: str) -> int:
    if not _contains_only(text, _NUMBERS):
        raise SemverError(f'Invalid character(s) found in {what} number "{text}"')
    if _has_leading_zeroes(text):
        raise SemverError(f'{what.capitalize()} number must not contain leading zeroes "{text}"')
    return _parse_uint(text)


def parse(text: str) -> Version:
    """Parse a strict semantic version as blang/semver's Parse does."""
    if len(text) > _MAX_VERSION_LENGTH:
        raise SemverError(f"version is longer than {_MAX_VERSION_LENGTH} characters")
    if not text:
        raise SemverError("Version string empty")
    parts = text.split(".", 2)
    if len(parts) != 3:
        raise SemverError("No Major.Minor.Patch elements found")
    major = _number(parts[0], "major")
    minor = _number(parts[1], "minor")
    patch_text, plus, build_text = parts[2].partition("+")
    patch_text, dash, prerelease_text = patch_text.partition("-")
    patch = _number(patch_text, "patch")
    prerelease: list[int | str] = []
    for part in prerelease_text.split(".") if dash else []:
        if not part:
            raise SemverError("Prerelease is empty")
        if _contains_only(part, _NUMBERS):
            if _has_leading_zeroes(part):
                raise SemverError(f'Numeric PreRelease version must not contain leading zeroes "{part}"')
            prerelease.append(_parse_uint(part))
        elif _contains_only(part, _ALPHANUM):
            prerelease.append(part)
        else:
            raise SemverError(f'Invalid character(s) found in prerelease "{part}"')
    for part in build_text.split(".") if plus else []:
        if not part:
            raise SemverError("Build meta data is empty")
        if not _contains_only(part, _ALPHANUM):
            raise SemverError(f'Invalid character(s) found in build meta data "{part}"')
    return Version(major, minor, patch, tuple(prerelease))


def normalize_and_parse(text: str) -> Version:
    """Kubernetes' normalizeAndParse: strip "v", drop leading zeros, fill in minor/patch, then parse."""
    text = text.removeprefix("v")
    parts = text.split(".", 2)
    for i, part in enumerate(parts):
        if len(part) > 1:
            part = part.lstrip("0")
            if not part or part[0] not in _NUMBERS:
                part = "0" + part
            parts[i] = part
    if len(parts) < 3:
        if any(c in "+-" for c in parts[-1]):
            raise SemverError("short version cannot contain PreRelease/Build meta data")
        parts.extend("0" * (3 - len(parts)))
    return parse(".".join(parts))


def compare_versions(left: Version, right: Version) -> int:
    """Semver precedence: -1, 0 or 1."""
    a, b = (left.major, left.minor, left.patch), (right.major, right.minor, right.patch)
    if a != b:
        return (a > b) - (a < b)
    if not left.prerelease or not right.prerelease:
        return (not left.prerelease) - (not right.prerelease)
    for x, y in zip(left.prerelease, right.prerelease, strict=False):
        if x == y:
            continue
        if isinstance(x, int) != isinstance(y, int):
            return -1 if isinstance(x, int) else 1  # numeric identifiers sort before alphanumeric ones
        return -1 if x < y else 1  # type: ignore[operator]
    return (len(left.prerelease) > len(right.prerelease)) - (len(left.prerelease) < len(right.prerelease))


def version_of(value: Any, function: str) -> Version:
    """The version held by an opaque semver value."""
    if opaque_type(value) != TYPE_NAME:
        raise ValueError(f"{function}: expected a semver, got {opaque_type(value) or 'map'}")
    return parse(str(value["value"]))


def compare(left: Any, right: Any, function: str) -> int:
    """Precedence of two opaque semver values."""
    return compare_versions(version_of(left, function), version_of(right, function))


def _make(version: Version) -> dict[str, Any]:
    return opaque(TYPE_NAME, value=version.text())


def _semver(text: str) -> dict[str, Any]:
    return _make(parse(text))


def _semver_normalize(text: str, normalize: bool) -> dict[str, Any]:
    return _make(normalize_and_parse(text) if normalize else parse(text))


def _is_semver(text: str) -> bool:
    return _is_semver_normalize(text, False)


def _is_semver_normalize(text: str, normalize: bool) -> bool:
    try:
        _semver_normalize(text, normalize)
    except SemverError:
        return False
    return True


def _int(value: int, what: str) -> int:
    if value > _INT64_MAX:
        raise ValueError(f"semver {what} version {value} does not fit in an int")
    return value


def _major(value: dict[str, Any]) -> int:
    return _int(version_of(value, "major").major, "major")


def _minor(value: dict[str, Any]) -> int:
    return _int(version_of(value, "minor").minor, "minor")


def _patch(value: dict[str, Any]) -> int:
    return _int(version_of(value, "patch").patch, "patch")


_M = cel.Type.Map(cel.Type.DYN, cel.Type.DYN)
_S = cel.Type.STRING
_B = cel.Type.BOOL
_I = cel.Type.INT

LIBRARY = Library(
    "kubernetes.semver",
    (
        cel.FunctionDecl(
            "semver",
            [
                cel.Overload("string_to_semver", _M, [_S], impl=_semver),
                cel.Overload("string_bool_to_semver", _M, [_S, _B], impl=_semver_normalize),
            ],
        ),
        cel.FunctionDecl(
            "isSemver",
            [
                cel.Overload("is_semver_string", _B, [_S], impl=_is_semver),
                cel.Overload("is_semver_string_bool", _B, [_S, _B], impl=_is_semver_normalize),
            ],
        ),
        cel.FunctionDecl("major", [cel.Overload("semver_major", _I, [_M], is_member=True, impl=_major)]),
        cel.FunctionDecl("minor", [cel.Overload("semver_minor", _I, [_M], is_member=True, impl=_minor)]),
        cel.FunctionDecl("patch", [cel.Overload("semver_patch", _I, [_M], is_member=True, impl=_patch)]),
    ),
)
"""Semver functions; `isLessThan`/`isGreaterThan`/`compareTo` live in `kubernetes` (shared with quantity)."""
