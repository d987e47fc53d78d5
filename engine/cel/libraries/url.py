"""Kubernetes' CEL `url` library (k8s.io/apiserver/pkg/cel/library/urls.go) for cel-expr-python.

Kubernetes accepts exactly what Go's `url.ParseRequestURI` accepts (an absolute URI or an absolute path) and
reads the parts back from `url.Parse`. Python's `urllib.parse` is far more lenient and splits differently
(fragments, ports, escapes), so this module ports the few rules of Go's net/url that matter here: scheme
syntax, authority and port checks, percent-escape validation, `EscapedPath` and `Query`. A URL value is an
opaque map holding the original text; its parts are re-derived on demand.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from engine.cel.libraries import Library, cel, opaque, opaque_type

TYPE_NAME = "url"
_MAX_URL_LENGTH = 8192
"""Longest URL accepted (the common limit of HTTP servers)."""

_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_HOST_EXTRA = frozenset(b"!$&'()*+,;=:[]<>\"")
_UNRESERVED_EXTRA = frozenset(b"-_.~")
_PATH_SAFE = frozenset(b"$&+,/:;=@")
_SUB_DELIMS_OK = frozenset(b"!$&'()*+,;=:@[]%")


def _should_escape(c: int, host: bool) -> bool:
    """Go's net/url shouldEscape for the path (host=False) and host (host=True) encodings."""
    if c in _ALNUM:
        return False
    if host and c in _HOST_EXTRA:
        return False
    if c in _UNRESERVED_EXTRA:
        return False
    if c in _PATH_SAFE or c == ord("?"):
        # The path keeps every reserved character but '?'; the host keeps none of those left here.
        return host or c == ord("?")
    return True


class UrlError(ValueError):
    """A string Go's net/url rejects."""


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unescape(text: str, mode: str) -> str:
    """Go's net/url unescape for mode "path", "host" or "query" (query turns '+' into a space)."""
    raw = text.encode()
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == ord("%"):
            if i + 2 >= len(raw) or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                bad = raw[i : i + 3].decode(errors="replace")
                raise UrlError(f"invalid URL escape {_go_quote(bad)}")
            if mode == "host" and int(chr(raw[i + 1]), 16) < 8 and raw[i : i + 3] != b"%25":
                raise UrlError(f"invalid URL escape {_go_quote(raw[i : i + 3].decode())}")
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
            continue
        if mode == "host" and c < 0x80 and _should_escape(c, host=True):
            raise UrlError(f"invalid character {_go_quote(chr(c))} in host name")
        out.append(ord(" ") if mode == "query" and c == ord("+") else c)
        i += 1
    return out.decode(errors="replace")


def _escape_path(path: str) -> str:
    return "".join(f"%{c:02X}" if _should_escape(c, host=False) else chr(c) for c in path.encode())


def _valid_encoded_path(raw_path: str) -> bool:
    return all(c in _SUB_DELIMS_OK or not _should_escape(c, host=False) for c in raw_path.encode())


def _valid_optional_port(port: str) -> bool:
    if not port:
        return True
    return port[0] == ":" and all("0" <= c <= "9" for c in port[1:])


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """The parts of a URL that the CEL functions expose."""

    scheme: str
    host: str
    raw_path: str
    path: str
    raw_query: str


def _split_scheme(text: str) -> tuple[str, str]:
    for i, c in enumerate(text):
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and (c.isdigit() or c in "+-."):
            if i == 0:
                return "", text
            continue
        if c == ":":
            if i == 0:
                raise UrlError("missing protocol scheme")
            return text[:i], text[i + 1 :]
        return "", text
    return "", text


def _parse_host(host: str) -> str:
    if host.startswith("["):
        end = host.rfind("]")
        if end < 0:
            raise UrlError("missing ']' in host")
        if not _valid_optional_port(host[end + 1 :]):
            raise UrlError(f"invalid port {_go_quote(host[end + 1 :])} after host")
    elif (colon := host.rfind(":")) != -1 and not _valid_optional_port(host[colon:]):
        raise UrlError(f"invalid port {_go_quote(host[colon:])} after host")
    return _unescape(host, "host")


def _parse(text: str, via_request: bool) -> ParsedUrl:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UrlError("net/url: invalid control character in URL")
    if not text and via_request:
        raise UrlError("empty url")
    if text == "*":
        return ParsedUrl("", "", "*", "*", "")
    scheme, rest = _split_scheme(text)
    scheme = scheme.lower()
    raw_query = ""
    if rest.endswith("?") and rest.count("?") == 1:
        rest = rest[:-1]
    else:
        rest, _, raw_query = rest.partition("?")
    if not rest.startswith("/"):
        if scheme:
            return ParsedUrl(scheme, "", "", "", raw_query)  # opaque URL such as mailto:x@example.com
        if via_request:
            raise UrlError("invalid URI for request")
        if ":" in rest.partition("/")[0]:
            raise UrlError("first path segment in URL cannot contain colon")
    host = ""
    if (scheme or (not via_request and not rest.startswith("///"))) and rest.startswith("//"):
        authority, slash, path_rest = rest[2:].partition("/")
        rest = slash + path_rest
        at = authority.rfind("@")
        host = _parse_host(authority[at + 1 :])
        if at >= 0:
            userinfo = authority[:at]
            allowed = set("-._:~!$&'()*+,;=%@")
            if not all((c.isascii() and c.isalnum()) or c in allowed or not c.isascii() for c in userinfo):
                raise UrlError("net/url: invalid userinfo")
            _unescape(userinfo, "path")
    path = _unescape(rest, "path")
    return ParsedUrl(scheme, host, rest, path, raw_query)


@functools.lru_cache(maxsize=1024)
def parse_request_uri(text: str) -> ParsedUrl:
    """Validate like Go's url.ParseRequestURI, then read the parts like url.Parse (fragment dropped)."""
    if len(text) > _MAX_URL_LENGTH:
        raise UrlError(f"URL is longer than {_MAX_URL_LENGTH} characters")
    try:
        _parse(text, via_request=True)
        return _parse(text.partition("#")[0], via_request=False)
    except UrlError as error:
        raise UrlError(f"parse {_go_quote(text)}: {error}") from None


def _url(text: str) -> dict[str, Any]:
    try:
        parse_request_uri(text)
    except UrlError as error:
        raise ValueError(f"URL parse error during conversion from string: {error}") from None
    return opaque(TYPE_NAME, value=text)


def _is_url(text: str) -> bool:
    try:
        parse_request_uri(text)
    except UrlError:
        return False
    return True


def _parts(value: Any, function: str) -> ParsedUrl:
    if opaque_type(value) != TYPE_NAME:
        raise ValueError(f"{function}: expected a url, got {opaque_type(value) or 'map'}")
    return parse_request_uri(str(value["value"]))


def _split_host_port(host_port: str) -> tuple[str, str]:
    host, port = host_port, ""
    colon = host.rfind(":")
    if colon != -1 and _valid_optional_port(host[colon:]):
        host, port = host[:colon], host[colon + 1 :]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _get_scheme(value: dict[str, Any]) -> str:
    return _parts(value, "getScheme").scheme


def _get_host(value: dict[str, Any]) -> str:
    return _parts(value, "getHost").host


def _get_hostname(value: dict[str, Any]) -> str:
    return _split_host_port(_parts(value, "getHostname").host)[0]


def _get_port(value: dict[str, Any]) -> str:
    return _split_host_port(_parts(value, "getPort").host)[1]


def _get_escaped_path(value: dict[str, Any]) -> str:
    parts = _parts(value, "getEscapedPath")
    if parts.path == "*":
        return "*"
    if _valid_encoded_path(parts.raw_path):
        return parts.raw_path
    return _escape_path(parts.path)


def _get_query(value: dict[str, Any]) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for pair in _parts(value, "getQuery").raw_query.split("&"):
        if not pair or ";" in pair:
            continue  # Go drops empty pairs and pairs with the (rejected) ';' separator
        key, _, item = pair.partition("=")
        try:
            key, item = _unescape(key, "query"), _unescape(item, "query")
        except UrlError:
            continue
        query.setdefault(key, []).append(item)
    return query


_M = cel.Type.Map(cel.Type.DYN, cel.Type.DYN)
_S = cel.Type.STRING


def _getter(name: str, overload_id: str, result: Any, impl: Any) -> Any:
    return cel.FunctionDecl(name, [cel.Overload(overload_id, result, [_M], is_member=True, impl=impl)])


LIBRARY = Library(
    "kubernetes.urls",
    (
        cel.FunctionDecl("url", [cel.Overload("string_to_url", _M, [_S], impl=_url)]),
        cel.FunctionDecl("isURL", [cel.Overload("is_url_string", cel.Type.BOOL, [_S], impl=_is_url)]),
        _getter("getScheme", "url_get_scheme", _S, _get_scheme),
        _getter("getHost", "url_get_host", _S, _get_host),
        _getter("getHostname", "url_get_hostname", _S, _get_hostname),
        _getter("getPort", "url_get_port", _S, _get_port),
        _getter("getEscapedPath", "url_get_escaped_path", _S, _get_escaped_path),
        _getter("getQuery", "url_get_query", cel.Type.Map(_S, cel.Type.List(_S)), _get_query),
    ),
)
