"""Kubernetes' CEL quantity library (k8s.io/apiserver/pkg/cel/library/quantity.go) for cel-expr-python.

The C++ runtime has no `resource.Quantity`, so this module parses quantity strings exactly as
k8s.io/apimachinery's `ParseQuantity` does (suffixes, exponents, rounding up to 1n, the BinarySI cap)
and keeps the value as an exact count of nano-units. A quantity travels through CEL as an opaque map whose
only other field is the canonical decimal text of its value, so `quantity("1k") == quantity("1000")` holds,
as in Kubernetes, where quantities compare by value.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any

from engine.cel.libraries import Library, cel, cel_type_name, opaque, opaque_type

TYPE_NAME = "quantity"

_NANOS_PER_UNIT = 10**9
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_MAX_QUANTITY_LENGTH = 256
"""Longest quantity string accepted; real quantities are a few characters long."""
_MAX_DECIMAL_EXPONENT = 1000
"""Largest |power of ten| a quantity may carry, so that no quantity turns into a gigantic integer."""

_SPLIT_RE_TEXT = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_ERR_FORMAT_WRONG = f"quantities must match the regular expression '{_SPLIT_RE_TEXT}'"
_ERR_NUMERIC = "unable to parse numeric part of quantity"
_ERR_SUFFIX = "unable to parse quantity's suffix"

_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_SUFFIX_CHARS = frozenset("eEinumkKMGTP")
_DIGITS = frozenset("0123456789")


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


def _split(text: str) -> tuple[str, str, str]:
    """Split a quantity string like apimachinery's parseQuantityString: (signed number, suffix, digits)."""
    end = len(text)
    pos = 0
    if pos < end and text[0] in "+-":
        pos += 1
    while pos < end and text[pos] == "0":
        pos += 1
    if pos >= end:
        return "0", "", "0"
    start_num = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    num = text[start_num:pos]
    if pos < end and text[pos] == ".":
        pos += 1
        while pos < end and text[pos] in _DIGITS:
            pos += 1
    value = text[:pos]
    suffix_start = pos
    while pos < end and text[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos < end and text[pos] in "+-":
        pos += 1
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    if pos < end:
        raise QuantityError(_ERR_FORMAT_WRONG)
    return value, text[suffix_start:], num or "0"


def _interpret_suffix(suffix: str) -> tuple[int, int]:
    """(base, exponent) of a suffix: base 10 for decimal SI and exponents, base 2 for binary SI."""
    if suffix in _DECIMAL_SUFFIXES:
        return 10, _DECIMAL_SUFFIXES[suffix]
    if suffix in _BINARY_SUFFIXES:
        return 2, _BINARY_SUFFIXES[suffix]
    if len(suffix) > 1 and suffix[0] in "eE":
        exponent_text = suffix[1:]
        digits = exponent_text[1:] if exponent_text[0] in "+-" else exponent_text
        if digits and all(c in _DIGITS for c in digits) and len(digits) <= 19:
            exponent = int(exponent_text)
            if abs(exponent) > _MAX_DECIMAL_EXPONENT:
                raise QuantityError(f"quantity exponent {exponent} is out of the supported range")
            return 10, exponent
    raise QuantityError(_ERR_SUFFIX)


def _parse_number(value: str) -> Fraction:
    """Exact value of a signed decimal like '-1.5', '+.5' or '1.' (what inf.Dec accepts)."""
    body = value[1:] if value[:1] in ("+", "-") else value
    integer, _, fraction = body.partition(".")
    if not integer and not fraction:
        raise QuantityError(_ERR_NUMERIC)
    amount = Fraction(int((integer + fraction) or "0"), 10 ** len(fraction))
    return -amount if value.startswith("-") else amount


@functools.lru_cache(maxsize=4096)
def parse_nanos(text: str) -> int:
    """Parse a Kubernetes quantity string into an exact number of nano-units (10^-9)."""
    if len(text) > _MAX_QUANTITY_LENGTH:
        raise QuantityError(f"quantity is longer than {_MAX_QUANTITY_LENGTH} characters")
    if not text:
        raise QuantityError(_ERR_FORMAT_WRONG)
    if text == "0":
        return 0
    value, suffix, _ = _split(text)
    base, exponent = _interpret_suffix(suffix)
    amount = abs(_parse_number(value))
    negative = value.startswith("-")
    amount *= Fraction(base) ** exponent
    scaled = amount * _NANOS_PER_UNIT
    nanos = math.ceil(scaled)  # apimachinery rounds non-zero values up to the next 1n (away from zero)
    if base == 2 and nanos > _INT64_MAX * _NANOS_PER_UNIT:
        nanos = _INT64_MAX * _NANOS_PER_UNIT  # BinarySI quantities are capped at the largest int64
    return -nanos if negative else nanos


def _canonical_text(nanos: int) -> str:
    sign = "-" if nanos < 0 else ""
    units, fraction = divmod(abs(nanos), _NANOS_PER_UNIT)
    if not fraction:
        return f"{sign}{units}"
    return f"{sign}{units}.{str(fraction).rjust(9, '0').rstrip('0')}"


def _from_canonical(text: str) -> int:
    negative = text.startswith("-")
    units, _, fraction = text.lstrip("-").partition(".")
    nanos = int(units) * _NANOS_PER_UNIT + (int(fraction.ljust(9, "0")) if fraction else 0)
    return -nanos if negative else nanos


def make(nanos: int) -> dict[str, Any]:
    """The opaque CEL value of a quantity of `nanos` nano-units."""
    return opaque(TYPE_NAME, value=_canonical_text(nanos))


def nanos_of(value: Any, function: str) -> int:
    """Exact nano-units of a quantity value; a clear error for anything else."""
    if opaque_type(value) != TYPE_NAME:
        raise ValueError(f"{function}: expected a quantity, got {describe(value)}")
    return _from_canonical(str(value["value"]))


def describe(value: Any) -> str:
    """CEL-ish name of a value's type, for error messages."""
    return cel_type_name(value)


def compare(left: Any, right: Any, function: str) -> int:
    """-1, 0 or 1 as in `resource.Quantity.Cmp`."""
    a, b = nanos_of(left, function), nanos_of(right, function)
    return (a > b) - (a < b)


def _quantity(text: str) -> dict[str, Any]:
    return make(parse_nanos(text))


def _is_quantity(text: str) -> bool:
    try:
        parse_nanos(text)
    except QuantityError:
        return False
    return True


def _sign(q: dict[str, Any]) -> int:
    nanos = nanos_of(q, "sign")
    return (nanos > 0) - (nanos < 0)


def _integer_value(q: dict[str, Any], function: str) -> int | None:
    units, fraction = divmod(nanos_of(q, function), _NANOS_PER_UNIT)
    if fraction or not _INT64_MIN <= units <= _INT64_MAX:
        return None
    return units


def _is_integer(q: dict[str, Any]) -> bool:
    return _integer_value(q, "isInteger") is not None


def _as_integer(q: dict[str, Any]) -> int:
    value = _integer_value(q, "asInteger")
    if value is None:
        raise ValueError("cannot convert value to integer")
    return value


def _as_approximate_float(q: dict[str, Any]) -> float:
    nanos = nanos_of(q, "asApproximateFloat")
    try:
        return float(Fraction(nanos, _NANOS_PER_UNIT))
    except OverflowError:
        return math.inf if nanos > 0 else -math.inf


def _int_nanos(value: int) -> int:
    return value * _NANOS_PER_UNIT


def _add(q: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return make(nanos_of(q, "add") + nanos_of(other, "add"))


def _add_int(q: dict[str, Any], other: int) -> dict[str, Any]:
    return make(nanos_of(q, "add") + _int_nanos(other))


def _sub(q: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return make(nanos_of(q, "sub") - nanos_of(other, "sub"))


def _sub_int(q: dict[str, Any], other: int) -> dict[str, Any]:
    return make(nanos_of(q, "sub") - _int_nanos(other))


def _mul_int(q: dict[str, Any], factor: int) -> dict[str, Any]:
    return make(nanos_of(q, "mul") * factor)


_Q = cel.Type.Map(cel.Type.DYN, cel.Type.DYN)

LIBRARY = Library(
    "kubernetes.quantity",
    (
        cel.FunctionDecl("quantity", [cel.Overload("string_to_quantity", _Q, [cel.Type.STRING], impl=_quantity)]),
        cel.FunctionDecl(
            "isQuantity",
            [cel.Overload("is_quantity_string", cel.Type.BOOL, [cel.Type.STRING], impl=_is_quantity)],
        ),
        cel.FunctionDecl("sign", [cel.Overload("quantity_sign", cel.Type.INT, [_Q], is_member=True, impl=_sign)]),
        cel.FunctionDecl(
            "isInteger",
            [cel.Overload("quantity_is_integer", cel.Type.BOOL, [_Q], is_member=True, impl=_is_integer)],
        ),
        cel.FunctionDecl(
            "asInteger",
            [cel.Overload("quantity_get_int", cel.Type.INT, [_Q], is_member=True, impl=_as_integer)],
        ),
        cel.FunctionDecl(
            "asApproximateFloat",
            [cel.Overload("quantity_get_float", cel.Type.DOUBLE, [_Q], is_member=True, impl=_as_approximate_float)],
        ),
        cel.FunctionDecl(
            "add",
            [
                cel.Overload("quantity_add", _Q, [_Q, _Q], is_member=True, impl=_add),
                cel.Overload("quantity_add_int", _Q, [_Q, cel.Type.INT], is_member=True, impl=_add_int),
            ],
        ),
        cel.FunctionDecl(
            "sub",
            [
                cel.Overload("quantity_sub", _Q, [_Q, _Q], is_member=True, impl=_sub),
                cel.Overload("quantity_sub_int", _Q, [_Q, cel.Type.INT], is_member=True, impl=_sub_int),
            ],
        ),
        cel.FunctionDecl(
            "mul",
            [cel.Overload("quantity_multiply_int", _Q, [_Q, cel.Type.INT], is_member=True, impl=_mul_int)],
        ),
    ),
)
"""Quantity functions; `isLessThan`/`isGreaterThan`/`compareTo` live in `kubernetes` (shared with semver)."""
