"""Kyverno's pure data libraries: json, yaml, hash, gzip, math, time, random, transform, user, jsonpatch.

These functions need no per-request service except the clock; they must produce what Kyverno's Go
implementation produces, because policies compare their output with literals. Hence the Go habits kept
here: `json.unmarshal` and `yaml.parse` give doubles for every number (Go decodes into `float64`),
`json.marshal` writes Go's compact, key-sorted, HTML-escaped JSON, and `math.round` rounds half away from
zero like Go's `math.Round`.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import gzip
import hashlib
import json
import math
import random as _random
import string
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from engine.cel import services
from engine.cel.libraries import Library, cel

_DYN_MAP = cel.Type.Map(cel.Type.DYN, cel.Type.DYN)
_DYN_LIST = cel.Type.List(cel.Type.DYN)

ANY_VALUE_TYPES: tuple[tuple[str, Any], ...] = (
    ("string", cel.Type.STRING),
    ("int", cel.Type.INT),
    ("uint", cel.Type.UINT),
    ("double", cel.Type.DOUBLE),
    ("bool", cel.Type.BOOL),
    ("null", cel.Type.NULL),
    ("bytes", cel.Type.BYTES),
    ("timestamp", cel.Type.TIMESTAMP),
    ("duration", cel.Type.DURATION),
    ("list", _DYN_LIST),
    ("map", _DYN_MAP),
)
"""One (overload-id suffix, parameter type) per concrete CEL type, for parameters that take any value."""


def function(name: str, overload_id: str, result: Any, params: list[Any], impl: Callable[..., Any]) -> Any:
    """A global function with a single overload."""
    return cel.FunctionDecl(name, [cel.Overload(overload_id, result, params, impl=impl)])


def aliases(names: tuple[str, ...], overloads: Callable[[str], list[Any]]) -> tuple[Any, ...]:
    """The same overloads under several names (Kyverno 1.18's prefixed and camelCase aliases)."""
    return tuple(cel.FunctionDecl(name, overloads(name.replace(".", "_"))) for name in names)


# --- json -------------------------------------------------------------------------------------------------


def _go_float(value: float) -> str:
    """A float64 as Go's encoding/json writes it (shortest digits, `e` notation outside [1e-6, 1e21))."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {value}")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        text = repr(value)  # Python uses exponent notation for these magnitudes too: 1e+21, 1.5e-07
        mantissa, _, exponent = text.partition("e")
        sign, digits = exponent[0], exponent[1:]
        if sign == "-" and len(digits) == 2 and digits[0] == "0":
            digits = digits[1:]
        return f"{mantissa}e{sign}{digits}"
    return format(decimal.Decimal(repr(value)).normalize(), "f")


_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _go_string(text: str) -> str:
    out = ['"']
    for ch in text:
        escaped = _GO_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch < " " or ch in "<>&\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _go_time(value: datetime.datetime) -> str:
    """RFC 3339 with nanoseconds trimmed of trailing zeros, as Go marshals a time.Time."""
    value = value.astimezone(datetime.UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def go_json(value: Any) -> str:
    """Serialize a plain value as Go's `json.Marshal` does for the corresponding native value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, bytes | bytearray):
        return _go_string(base64.b64encode(bytes(value)).decode("ascii"))
    if isinstance(value, datetime.datetime):
        return _go_string(_go_time(value))
    if isinstance(value, datetime.timedelta):
        return str((value // datetime.timedelta(microseconds=1)) * 1000)  # time.Duration: nanoseconds
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"json: unsupported map key type {type(key).__name__}")
        return "{" + ",".join(f"{_go_string(k)}:{go_json(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(item) for item in value) + "]"
    raise ValueError(f"json: unsupported type: {type(value).__name__}")


def _json_unmarshal(text: str) -> Any:
    try:
        return json.loads(text, parse_int=float, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"json: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"json: invalid character {name!r} looking for beginning of value")


def _json_marshal(value: Any) -> str:
    return go_json(value)


# --- yaml -------------------------------------------------------------------------------------------------

_YamlBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _YamlLoader(_YamlBase):  # type: ignore[misc]
    """Safe loader that leaves timestamps as strings, as sigs.k8s.io/yaml (YAML → JSON) does."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _YamlBase.yaml_implicit_resolvers.items()
}


def _json_like(value: Any) -> Any:
    """What a YAML value becomes after Go's YAML → JSON → `any` round trip."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {_yaml_key(k): _json_like(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_like(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _yaml_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, float):
        return _go_float(key)
    return str(key)


def _yaml_parse(text: str) -> Any:
    try:
        return _json_like(yaml.load(text, Loader=_YamlLoader))
    except yaml.YAMLError as exc:
        raise ValueError(f"yaml: {exc}") from None


# --- hash -------------------------------------------------------------------------------------------------


def _hasher(algorithm: str) -> Callable[[str], str]:
    def digest(text: str) -> str:
        return hashlib.new(algorithm, text.encode("utf-8")).hexdigest()

    return digest


# --- gzip -------------------------------------------------------------------------------------------------


def _gzip_compress(text: str) -> bytearray:
    # A bytearray: cel-expr-python cuts a returned `bytes` at its first NUL byte, and gzip output has many.
    return bytearray(gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0))


def _gzip_decompress(data: bytes | bytearray) -> str:
    try:
        return gzip.decompress(bytes(data)).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"gzip: {exc}") from None


# --- math -------------------------------------------------------------------------------------------------


def go_round(value: float) -> float:
    """Go's `math.Round`: nearest integer, halves away from zero, exact for every double."""
    if math.isnan(value) or math.isinf(value):
        return value
    whole = float(math.trunc(value))
    if abs(value - whole) >= 0.5:
        whole += math.copysign(1.0, value)
    return whole if whole != 0 else math.copysign(0.0, value)


def _math_round(value: float, precision: int) -> float:
    shift = math.pow(10, precision)
    return go_round(float(value) * shift) / shift


# --- time -------------------------------------------------------------------------------------------------

_GO_ZERO_TIME = datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)


def _time_now() -> datetime.datetime:
    now = services.current().now()
    return now if now.tzinfo is not None else now.replace(tzinfo=datetime.UTC)


def _time_truncate(value: datetime.datetime, step: datetime.timedelta) -> datetime.datetime:
    """Go's `Time.Truncate`: round down to a multiple of `step` since year 1; `step <= 0` is a no-op."""
    value = value.astimezone(datetime.UTC)
    if step <= datetime.timedelta(0):
        return value
    return value - (value - _GO_ZERO_TIME) % step


def _time_to_cron(value: datetime.datetime) -> str:
    value = value.astimezone(datetime.UTC)
    return f"{value.minute} {value.hour} {value.day} {value.month} {value.isoweekday() % 7}"


# --- random -----------------------------------------------------------------------------------------------

_RNG = _random.SystemRandom()
_MAX_REPEAT = 10  # goregen's default for `*` and `+`
_WORD = string.ascii_letters + string.digits + "_"
_PRINTABLE = "".join(chr(c) for c in range(32, 127))
_CLASS_ESCAPES = {"d": string.digits, "w": _WORD, "s": " \t\n\r\f\v"}
_LITERAL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}


class _RegexGenerator:
    """Generate a random string matching a regular expression (the subset goregen supports in practice).

    Supported: literals and escapes, `.`, `\\d \\w \\s`, classes `[a-z0-9_]` (with `^` negation over printable
    ASCII), groups `( )` / `(?: )` with `|`, and the quantifiers `? * + {n} {n,} {n,m}`. Anchors are ignored.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.pos = 0

    def generate(self) -> str:
        out = self._alternation()
        if self.pos != len(self.pattern):
            raise self._error("unexpected ')'")
        return out

    def _error(self, message: str) -> ValueError:
        return ValueError(f"random: cannot generate from pattern {self.pattern!r}: {message} at {self.pos}")

    def _peek(self) -> str:
        return self.pattern[self.pos] if self.pos < len(self.pattern) else ""

    def _alternation(self) -> str:
        branches = [self._sequence()]
        while self._peek() == "|":
            self.pos += 1
            branches.append(self._sequence())
        return _RNG.choice(branches)

    def _sequence(self) -> str:
        out: list[str] = []
        while self._peek() not in ("", "|", ")"):
            start = self.pos
            self._atom()  # parse once to find the atom's extent, then generate it once per repetition
            low, high = self._quantifier()
            after = self.pos
            for _ in range(_RNG.randint(low, high)):
                self.pos = start
                out.append(self._atom())
            self.pos = after
        return "".join(out)

    def _quantifier(self) -> tuple[int, int]:
        ch = self._peek()
        if ch == "?":
            self.pos += 1
            return 0, 1
        if ch == "*":
            self.pos += 1
            return 0, _MAX_REPEAT
        if ch == "+":
            self.pos += 1
            return 1, _MAX_REPEAT
        if ch == "{":
            close = self.pattern.find("}", self.pos)
            if close == -1:
                raise self._error("missing '}'")
            body = self.pattern[self.pos + 1 : close]
            low_text, comma, high_text = body.partition(",")
            try:
                low = int(low_text)
                high = (int(high_text) if high_text else low + _MAX_REPEAT) if comma else low
            except ValueError:
                raise self._error(f"invalid repeat {{{body}}}") from None
            if high < low:
                raise self._error(f"invalid repeat {{{body}}}")
            self.pos = close + 1
            return low, high
        return 1, 1

    def _atom(self) -> str:
        ch = self._peek()
        self.pos += 1
        if ch == "(":
            if self.pattern.startswith("?:", self.pos):
                self.pos += 2
            elif self._peek() == "?":
                raise self._error("unsupported group syntax")
            out = self._alternation()
            if self._peek() != ")":
                raise self._error("missing ')'")
            self.pos += 1
            return out
        if ch in "^$":
            return ""
        if ch == ".":
            return _RNG.choice(_PRINTABLE)
        if ch == "[":
            return _RNG.choice(self._class())
        if ch == "\\":
            return _RNG.choice(self._escape())
        if ch in "*+?{":
            raise self._error(f"missing argument to repetition operator {ch!r}")
        return ch

    def _escape(self) -> str:
        ch = self._peek()
        if not ch:
            raise self._error("trailing backslash")
        self.pos += 1
        if ch in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[ch]
        if ch in _LITERAL_ESCAPES:
            return _LITERAL_ESCAPES[ch]
        if ch.isalnum():
            raise self._error(f"unsupported escape \\{ch}")
        return ch

    def _class(self) -> str:
        negate = self._peek() == "^"
        if negate:
            self.pos += 1
        chars: set[str] = set()
        first = True
        while True:
            ch = self._peek()
            if not ch:
                raise self._error("missing ']'")
            if ch == "]" and not first:
                self.pos += 1
                break
            first = False
            self.pos += 1
            if ch == "\\":
                low = self._escape()
                if len(low) > 1:
                    chars.update(low)
                    continue
            else:
                low = ch
            if self._peek() == "-" and self.pattern[self.pos + 1 : self.pos + 2] not in ("", "]"):
                self.pos += 1
                high = self._peek()
                self.pos += 1
                if high == "\\":
                    high = self._escape()
                if len(high) != 1 or ord(high) < ord(low):
                    raise self._error("invalid character class range")
                chars.update(chr(c) for c in range(ord(low), ord(high) + 1))
            else:
                chars.add(low)
        if negate:
            chars = set(_PRINTABLE) - chars
        if not chars:
            raise self._error("empty character class")
        return "".join(sorted(chars))


def _random_pattern(pattern: str) -> str:
    return _RegexGenerator(pattern).generate()


def _random_default() -> str:
    return _random_pattern("[0-9a-z]{8}")


# --- transform --------------------------------------------------------------------------------------------


def _list_obj_to_map(keys: list[Any], values: list[Any], key_field: str, value_field: str) -> dict[str, Any]:
    if len(keys) != len(values):
        raise ValueError(f"listObjToMap must take lists of equal length. list1: {len(keys)}, list2: {len(values)}")
    result: dict[str, Any] = {}
    for key_entry, value_entry in zip(keys, values, strict=True):
        if not isinstance(key_entry, dict):
            raise ValueError(f"object cannot be handled as a map, {type(key_entry).__name__}")
        key = key_entry.get(key_field)
        if not isinstance(key, str):
            raise ValueError("the passed key name cannot be handled as a string in the key object list")
        if not isinstance(value_entry, dict):
            raise ValueError("object cannot be handled as a map string to any in the value object list")
        result[key] = value_entry.get(value_field)
    return result


# --- user -------------------------------------------------------------------------------------------------

_SA_PREFIX = "system:serviceaccount:"


def _parse_service_account(user: str) -> dict[str, str]:
    """`{namespace, name}` of a service-account username; empty strings for any other user."""
    namespace = name = ""
    if user.startswith(_SA_PREFIX):
        rest = user[len(_SA_PREFIX) :]
        if ":" in rest:
            namespace, name = rest.split(":", 1)
    return {"name": name, "namespace": namespace}


# --- jsonpatch --------------------------------------------------------------------------------------------


def _escape_key(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


# --- declarations -----------------------------------------------------------------------------------------

_S = cel.Type.STRING

JSON_LIBRARY = Library(
    name="kyverno.json",
    functions=(
        function("json.unmarshal", "kyverno_json_unmarshal_string", cel.Type.DYN, [_S], _json_unmarshal),
        cel.FunctionDecl(
            "json.marshal",
            [
                cel.Overload(f"kyverno_json_marshal_{suffix}", _S, [param], impl=_json_marshal)
                for suffix, param in ANY_VALUE_TYPES
            ],
        ),
    ),
)

YAML_LIBRARY = Library(
    name="kyverno.yaml",
    functions=(function("yaml.parse", "kyverno_yaml_parse_string", cel.Type.DYN, [_S], _yaml_parse),),
)

HASH_LIBRARY = Library(
    name="kyverno.hash",
    functions=tuple(
        function(name, f"kyverno_{name.replace('.', '_')}_string", _S, [_S], _hasher(name.rpartition(".")[2]))
        for name in ("sha1", "sha256", "md5", "hash.sha1", "hash.sha256", "hash.md5")
    ),
)

GZIP_LIBRARY = Library(
    name="kyverno.gzip",
    functions=(
        function("gzip.compress", "kyverno_gzip_compress_string", cel.Type.BYTES, [_S], _gzip_compress),
        function("gzip.decompress", "kyverno_gzip_decompress_bytes", _S, [cel.Type.BYTES], _gzip_decompress),
    ),
)

MATH_ROUND_FUNCTION = "__celvern_math_round"
"""Kyverno's `math.round(double, int)`; the rewriter routes calls here because ext_math owns `math.round`."""

MATH_LIBRARY = Library(
    name="kyverno.math",
    functions=(
        cel.FunctionDecl(
            MATH_ROUND_FUNCTION,
            [
                cel.Overload(
                    "celvern_math_round_double_int",
                    cel.Type.DOUBLE,
                    [cel.Type.DOUBLE, cel.Type.INT],
                    impl=_math_round,
                ),
                cel.Overload(
                    "celvern_math_round_int_int",
                    cel.Type.DOUBLE,
                    [cel.Type.INT, cel.Type.INT],
                    impl=_math_round,
                ),
            ],
        ),
    ),
)

TIME_LIBRARY = Library(
    name="kyverno.time",
    functions=(
        function("time.now", "kyverno_time_now", cel.Type.TIMESTAMP, [], _time_now),
        function(
            "time.truncate",
            "kyverno_time_truncate",
            cel.Type.TIMESTAMP,
            [cel.Type.TIMESTAMP, cel.Type.DURATION],
            _time_truncate,
        ),
        function("time.toCron", "kyverno_time_to_cron", _S, [cel.Type.TIMESTAMP], _time_to_cron),
    ),
)

RANDOM_LIBRARY = Library(
    name="kyverno.random",
    functions=aliases(
        ("random", "random.random"),
        lambda prefix: [
            cel.Overload(f"kyverno_{prefix}_string", _S, [_S], impl=_random_pattern),
            cel.Overload(f"kyverno_{prefix}_default", _S, [], impl=_random_default),
        ],
    ),
)

TRANSFORM_LIBRARY = Library(
    name="kyverno.transform",
    functions=aliases(
        ("listObjToMap", "transform.listObjToMap"),
        lambda prefix: [
            cel.Overload(
                f"kyverno_{prefix}_list_list_string_string",
                _DYN_MAP,
                [_DYN_LIST, _DYN_LIST, _S, _S],
                impl=_list_obj_to_map,
            )
        ],
    ),
)

USER_LIBRARY = Library(
    name="kyverno.user",
    functions=aliases(
        ("parseServiceAccount", "user.parseServiceAccount"),
        lambda prefix: [
            cel.Overload(f"kyverno_{prefix}_string", cel.Type.Map(_S, _S), [_S], impl=_parse_service_account)
        ],
    ),
)

JSONPATCH_LIBRARY = Library(
    name="kyverno.jsonpatch",
    functions=(function("jsonpatch.escapeKey", "kyverno_jsonpatch_escape_key", _S, [_S], _escape_key),),
)

LIBRARIES: tuple[Library, ...] = (
    JSON_LIBRARY,
    YAML_LIBRARY,
    HASH_LIBRARY,
    GZIP_LIBRARY,
    MATH_LIBRARY,
    TIME_LIBRARY,
    RANDOM_LIBRARY,
    TRANSFORM_LIBRARY,
    USER_LIBRARY,
    JSONPATCH_LIBRARY,
)

LIBRARY = Library(
    name="kyverno.data",
    functions=tuple(decl for library in LIBRARIES for decl in library.functions),
)
"""All data libraries as one: json, yaml, hash, gzip, math, time, random, transform, user, jsonpatch."""
