"""Kubernetes' CEL format library (k8s.io/apiserver/pkg/cel/library/format.go) for cel-expr-python.

`format.dns1123Label().validate(s)` and friends let a policy run the same name and value checks the API
server runs, with the same messages (k8s.io/apimachinery/pkg/util/validation). A format is an opaque map
naming the format. `format.named(name)` and `f.validate(s)` return optionals, which a Python function cannot
build, so the rewriter wraps the internal `__celvern_format_named` / `__celvern_format_validate` in
`optional.ofNonZeroValue`: they return `{}` for an unknown name and `[]` for a valid value.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Callable
from typing import Any

from engine.cel.libraries import Library, cel, opaque, opaque_type
from engine.cel.libraries.url import UrlError, parse_request_uri

TYPE_NAME = "format"
_MAX_VALUE_LENGTH = 1 << 20
"""Longest string `validate` looks at (1 MiB); longer values are reported invalid without scanning."""

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035_LABEL_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
    "start with an alphabetic character, and end with an alphanumeric character"
)
_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
)
_LABEL_VALUE_FMT = "(" + _QUALIFIED_NAME_FMT + ")?"
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_UUID_RE = re.compile(r"(?i)^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})\Z")
_DATE_RE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})\Z")
_TIME_RE = re.compile(
    r"^([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?\Z", re.IGNORECASE
)


def _full(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + pattern + r"\Z")


_DNS1123_LABEL_RE = _full(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN_RE = _full(_DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL_RE = _full(_DNS1035_LABEL_FMT)
_QUALIFIED_NAME_RE = _full(_QUALIFIED_NAME_FMT)
_LABEL_VALUE_RE = _full(_LABEL_VALUE_FMT)


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    """apimachinery's RegexError, byte for byte (including its double space before 'or')."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    text = message + " (e.g. "
    for i, example in enumerate(examples):
        if i > 0:
            text += " or "
        text += f"'{example}', "
    return text + f"regex used for validation is '{fmt}')"


def _max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def is_dns1123_label(value: str) -> list[str]:
    """validation.IsDNS1123Label."""
    errors = []
    if len(value) > 63:
        errors.append(_max_len_error(63))
    if not _DNS1123_LABEL_RE.match(value):
        if _DNS1123_SUBDOMAIN_RE.match(value):
            errors.append("must not contain dots")
        else:
            errors.append(_regex_error(_DNS1123_LABEL_MSG, _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errors


def is_dns1123_subdomain(value: str) -> list[str]:
    """validation.IsDNS1123Subdomain."""
    errors = []
    if len(value) > 253:
        errors.append(_max_len_error(253))
    if not _DNS1123_SUBDOMAIN_RE.match(value):
        errors.append(_regex_error(_DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errors


def is_dns1035_label(value: str) -> list[str]:
    """validation.IsDNS1035Label."""
    errors = []
    if len(value) > 63:
        errors.append(_max_len_error(63))
    if not _DNS1035_LABEL_RE.match(value):
        errors.append(_regex_error(_DNS1035_LABEL_MSG, _DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errors


def is_qualified_name(value: str) -> list[str]:
    """validation.IsQualifiedName: an optional DNS subdomain prefix and '/', then a name."""
    errors: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors.extend("prefix part " + message for message in is_dns1123_subdomain(prefix))
    else:
        return [
            "a qualified name "
            + _regex_error(_QUALIFIED_NAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part " + _max_len_error(63))
    if not _QUALIFIED_NAME_RE.match(name):
        errors.append(
            "name part " + _regex_error(_QUALIFIED_NAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
        )
    return errors


def is_label_value(value: str) -> list[str]:
    """validation.IsValidLabelValue."""
    errors = []
    if len(value) > 63:
        errors.append(_max_len_error(63))
    if not _LABEL_VALUE_RE.match(value):
        errors.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errors


def _mask_trailing_dash(name: str) -> str:
    # apimachinery's maskTrailingDash, including its quirk of dropping the character before the dash.
    if len(name) > 1 and name.endswith("-"):
        return name[:-2] + "a"
    return name


def _uri(value: str) -> list[str]:
    try:
        parse_request_uri(value)
    except UrlError as error:
        return [str(error)]
    return []


def _uuid(value: str) -> list[str]:
    return [] if _UUID_RE.match(value) else ["does not match the UUID format"]


def _byte(value: str) -> list[str]:
    try:
        base64.b64decode(value.encode(), validate=True)
    except (binascii.Error, ValueError):
        return ["invalid base64"]
    return []


def _is_date(value: str) -> bool:
    match = _DATE_RE.match(value)
    if not match:
        return False
    try:
        datetime.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return False
    return True


def _date(value: str) -> list[str]:
    return [] if _is_date(value) else ["invalid date"]


def _datetime(value: str) -> list[str]:
    date_part, separator, time_part = value.partition("T" if "T" in value else "t")
    match = _TIME_RE.match(time_part) if separator else None
    valid = (
        match is not None
        and _is_date(date_part)
        and int(match[1]) < 24
        and int(match[2]) < 60
        and int(match[3] or 0) < 60
    )
    return [] if valid else ["invalid datetime"]


_VALIDATORS: dict[str, Callable[[str], list[str]]] = {
    "dns1123Label": is_dns1123_label,
    "dns1123Subdomain": is_dns1123_subdomain,
    "dns1035Label": is_dns1035_label,
    "qualifiedName": is_qualified_name,
    "dns1123LabelPrefix": lambda s: is_dns1123_label(_mask_trailing_dash(s)),
    "dns1123SubdomainPrefix": lambda s: is_dns1123_subdomain(_mask_trailing_dash(s)),
    "dns1035LabelPrefix": lambda s: is_dns1035_label(_mask_trailing_dash(s)),
    "labelValue": is_label_value,
    "uri": _uri,
    "uuid": _uuid,
    "byte": _byte,
    "date": _date,
    "datetime": _datetime,
}


def _make(name: str) -> dict[str, Any]:
    return opaque(TYPE_NAME, name=name)


def _named(name: str) -> dict[str, Any]:
    return _make(name) if name in _VALIDATORS else {}


def _validate(value: dict[str, Any], text: str) -> list[str]:
    name = value.get("name") if opaque_type(value) == TYPE_NAME else None
    if not isinstance(name, str) or name not in _VALIDATORS:
        raise ValueError(f"validate: expected a format, got {opaque_type(value) or 'map'}")
    if len(text) > _MAX_VALUE_LENGTH:
        return [_max_len_error(_MAX_VALUE_LENGTH)]
    return _VALIDATORS[name](text)


_M = cel.Type.Map(cel.Type.DYN, cel.Type.DYN)


def _constant(name: str) -> Any:
    return cel.FunctionDecl(f"format.{name}", [cel.Overload(f"format_{name}", _M, [], impl=lambda: _make(name))])


LIBRARY = Library(
    "kubernetes.format",
    (
        *(_constant(name) for name in _VALIDATORS),
        cel.FunctionDecl(
            "__celvern_format_named",
            [cel.Overload("celvern_format_named", _M, [cel.Type.STRING], impl=_named)],
        ),
        cel.FunctionDecl(
            "__celvern_format_validate",
            [
                cel.Overload(
                    "celvern_format_validate",
                    cel.Type.List(cel.Type.STRING),
                    [_M, cel.Type.STRING],
                    impl=_validate,
                )
            ],
        ),
    ),
)
