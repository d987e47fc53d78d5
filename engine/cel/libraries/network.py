"""Kubernetes' CEL `ip` and `cidr` libraries (k8s.io/apiserver/pkg/cel/library/ip.go, cidr.go).

cel-expr-python has no network types. These functions parse with Python's `ipaddress` module but apply the
rules of Go's `net/netip` that Kubernetes relies on: no IPv6 zones, no IPv4-mapped IPv6 addresses, no leading
zeros in a prefix length, and RFC 5952 text as the canonical form. IP and CIDR values travel as opaque maps
holding that canonical text, so equal addresses compare equal; a CIDR keeps its host bits (`cidr.ip()` returns
them, `masked()` drops them), as netip.Prefix does.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from engine.cel.libraries import Library, cel, opaque, opaque_type

IP_TYPE = "ip"
CIDR_TYPE = "cidr"

_MAX_TEXT_LENGTH = 128
"""Longer than any IP address or prefix text (IPv6 with an embedded IPv4 and a /128 is < 50 characters)."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_addr(text: str) -> Address:
    """Parse like netip.ParseAddr; raise ValueError with the reason (no context)."""
    if len(text) > _MAX_TEXT_LENGTH:
        raise ValueError(f"ParseAddr({_go_quote(text[:32] + '...')}): address is too long")
    try:
        return ipaddress.ip_address(text)
    except ValueError as error:
        raise ValueError(f"ParseAddr({_go_quote(text)}): {error}") from None


def parse_ip(text: str) -> Address:
    """Parse an IP address as Kubernetes' `ip()` does (no zones, no IPv4-mapped IPv6)."""
    try:
        address = _parse_addr(text)
    except ValueError as error:
        raise ValueError(f"IP Address {_go_quote(text)} parse error during conversion from string: {error}") from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise ValueError(f"IP address {_go_quote(text)} with zone value is not allowed")
        if address.ipv4_mapped is not None:
            raise ValueError(f"IPv4-mapped IPv6 address {_go_quote(text)} is not allowed")
    return address


def parse_cidr(text: str) -> tuple[Address, int]:
    """Parse a prefix as Kubernetes' `cidr()` does: (address with its host bits, prefix length)."""
    outer = "network address parse error during conversion from string: "
    slash = text.rfind("/")
    reason: str | None = None
    address: Address | None = None
    bits = 0
    if slash < 0:
        reason = "no '/'"
    else:
        try:
            address = _parse_addr(text[:slash])
        except ValueError as error:
            reason = str(error)
        if address is not None:
            bits_text = text[slash + 1 :]
            max_bits = address.max_prefixlen
            if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
                reason = "IPv6 zones cannot be present in a prefix"
            elif (
                not bits_text
                or not bits_text.isascii()
                or not bits_text.isdigit()
                or (len(bits_text) > 1 and bits_text[0] == "0")
                or len(bits_text) > 4
            ):
                reason = "bad bits after slash: " + _go_quote(bits_text)
            elif int(bits_text) > max_bits:
                reason = "prefix length out of range"
            else:
                bits = int(bits_text)
    if reason is not None or address is None:
        raise ValueError(f"{outer}{outer}netip.ParsePrefix({_go_quote(text)}): {reason}")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise ValueError(f"{outer}IPv4-mapped IPv6 address {_go_quote(text)} is not allowed")
    return address, bits


def make_ip(address: Address) -> dict[str, Any]:
    """The opaque CEL value of an IP address."""
    return opaque(IP_TYPE, value=str(address))


def make_cidr(address: Address, bits: int) -> dict[str, Any]:
    """The opaque CEL value of a prefix (the address keeps its host bits)."""
    return opaque(CIDR_TYPE, value=f"{address}/{bits}")


def ip_of(value: Any, function: str) -> Address:
    """The address held by an opaque ip value."""
    if opaque_type(value) != IP_TYPE:
        raise ValueError(f"{function}: expected an ip, got {opaque_type(value) or 'map'}")
    return ipaddress.ip_address(str(value["value"]))


def cidr_of(value: Any, function: str) -> tuple[Address, int]:
    """The (address, prefix length) held by an opaque cidr value."""
    if opaque_type(value) != CIDR_TYPE:
        raise ValueError(f"{function}: expected a cidr, got {opaque_type(value) or 'map'}")
    address, _, bits = str(value["value"]).rpartition("/")
    return ipaddress.ip_address(address), int(bits)


def _network(address: Address, bits: int) -> Network:
    return ipaddress.ip_network(f"{address}/{bits}", strict=False)


def _ip(text: str) -> dict[str, Any]:
    return make_ip(parse_ip(text))


def _is_ip(text: str) -> bool:
    try:
        parse_ip(text)
    except ValueError:
        return False
    return True


def _is_canonical(text: str) -> bool:
    return str(parse_ip(text)) == text


def _family(value: dict[str, Any]) -> int:
    return ip_of(value, "family").version


def _is_unspecified(value: dict[str, Any]) -> bool:
    return ip_of(value, "isUnspecified").is_unspecified


def _is_loopback(value: dict[str, Any]) -> bool:
    return ip_of(value, "isLoopback").is_loopback


def _is_link_local_multicast(value: dict[str, Any]) -> bool:
    address = ip_of(value, "isLinkLocalMulticast")
    if isinstance(address, ipaddress.IPv4Address):
        return address in ipaddress.IPv4Network("224.0.0.0/24")
    return (int(address) >> 112) & 0xFF0F == 0xFF02  # ff02::/16 with any flags, as netip does


def _is_link_local_unicast(value: dict[str, Any]) -> bool:
    address = ip_of(value, "isLinkLocalUnicast")
    if isinstance(address, ipaddress.IPv4Address):
        return address in ipaddress.IPv4Network("169.254.0.0/16")
    return address in ipaddress.IPv6Network("fe80::/10")


def _is_global_unicast(value: dict[str, Any]) -> bool:
    address = ip_of(value, "isGlobalUnicast")
    if isinstance(address, ipaddress.IPv4Address) and int(address) in (0, 0xFFFFFFFF):
        return False
    return not (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or _is_link_local_unicast(make_ip(address))
    )


def _cidr(text: str) -> dict[str, Any]:
    return make_cidr(*parse_cidr(text))


def _is_cidr(text: str) -> bool:
    try:
        parse_cidr(text)
    except ValueError:
        return False
    return True


def _contains(address: Address, bits: int, other: Address) -> bool:
    return address.version == other.version and other in _network(address, bits)


def _contains_ip(value: dict[str, Any], other: dict[str, Any]) -> bool:
    address, bits = cidr_of(value, "containsIP")
    return _contains(address, bits, ip_of(other, "containsIP"))


def _contains_ip_string(value: dict[str, Any], other: str) -> bool:
    address, bits = cidr_of(value, "containsIP")
    return _contains(address, bits, parse_ip(other))


def _contains_prefix(value: dict[str, Any], other_address: Address, other_bits: int) -> bool:
    # Kubernetes >= 1.33 semantics (kubernetes/kubernetes#130450): `other` lies within the prefix.
    address, bits = cidr_of(value, "containsCIDR")
    return (
        address.version == other_address.version
        and bits <= other_bits
        and _network(address, bits) == _network(other_address, bits)
    )


def _contains_cidr(value: dict[str, Any], other: dict[str, Any]) -> bool:
    return _contains_prefix(value, *cidr_of(other, "containsCIDR"))


def _contains_cidr_string(value: dict[str, Any], other: str) -> bool:
    return _contains_prefix(value, *parse_cidr(other))


def _cidr_ip(value: dict[str, Any]) -> dict[str, Any]:
    return make_ip(cidr_of(value, "ip")[0])


def _masked(value: dict[str, Any]) -> dict[str, Any]:
    address, bits = cidr_of(value, "masked")
    return make_cidr(_network(address, bits).network_address, bits)


def _prefix_length(value: dict[str, Any]) -> int:
    return cidr_of(value, "prefixLength")[1]


def to_string(value: dict[str, Any]) -> str | None:
    """Canonical text of an ip or cidr value (`string(ip)`, `string(cidr)`), None for other values."""
    if opaque_type(value) in (IP_TYPE, CIDR_TYPE):
        return str(value["value"])
    return None


_M = cel.Type.Map(cel.Type.DYN, cel.Type.DYN)
_S = cel.Type.STRING
_B = cel.Type.BOOL


def _member(overload_id: str, result: Any, params: list[Any], impl: Any) -> Any:
    return cel.Overload(overload_id, result, params, is_member=True, impl=impl)


LIBRARY = Library(
    "kubernetes.net",
    (
        cel.FunctionDecl(
            "ip",
            [
                cel.Overload("string_to_ip", _M, [_S], impl=_ip),
                _member("cidr_ip", _M, [_M], _cidr_ip),
            ],
        ),
        cel.FunctionDecl("isIP", [cel.Overload("is_ip", _B, [_S], impl=_is_ip)]),
        cel.FunctionDecl("ip.isCanonical", [cel.Overload("ip_is_canonical", _B, [_S], impl=_is_canonical)]),
        cel.FunctionDecl("family", [_member("ip_family", cel.Type.INT, [_M], _family)]),
        cel.FunctionDecl("isUnspecified", [_member("ip_is_unspecified", _B, [_M], _is_unspecified)]),
        cel.FunctionDecl("isLoopback", [_member("ip_is_loopback", _B, [_M], _is_loopback)]),
        cel.FunctionDecl(
            "isLinkLocalMulticast",
            [_member("ip_is_link_local_multicast", _B, [_M], _is_link_local_multicast)],
        ),
        cel.FunctionDecl("isLinkLocalUnicast", [_member("ip_is_link_local_unicast", _B, [_M], _is_link_local_unicast)]),
        cel.FunctionDecl("isGlobalUnicast", [_member("ip_is_global_unicast", _B, [_M], _is_global_unicast)]),
        cel.FunctionDecl("cidr", [cel.Overload("string_to_cidr", _M, [_S], impl=_cidr)]),
        cel.FunctionDecl("isCIDR", [cel.Overload("is_cidr", _B, [_S], impl=_is_cidr)]),
        cel.FunctionDecl(
            "containsIP",
            [
                _member("cidr_contains_ip_ip", _B, [_M, _M], _contains_ip),
                _member("cidr_contains_ip_string", _B, [_M, _S], _contains_ip_string),
            ],
        ),
        cel.FunctionDecl(
            "containsCIDR",
            [
                _member("cidr_contains_cidr", _B, [_M, _M], _contains_cidr),
                _member("cidr_contains_cidr_string", _B, [_M, _S], _contains_cidr_string),
            ],
        ),
        cel.FunctionDecl("masked", [_member("cidr_masked", _M, [_M], _masked)]),
        cel.FunctionDecl("prefixLength", [_member("cidr_prefix_length", cel.Type.INT, [_M], _prefix_length)]),
    ),
)
"""IP and CIDR functions; `string(ip)`/`string(cidr)` go through `kubernetes.__celvern_string`."""
