"""Kubernetes CEL libraries evaluated through a real cel-expr-python environment.

Each case is an expression and either the exact value it must produce (types included: `1` is not `1.0` nor
`True`) or a substring of the error it must produce. Expected values follow Kubernetes' own behaviour
(k8s.io/apiserver/pkg/cel/library and its tests).
"""

from __future__ import annotations

from typing import Any

import pytest
from cel_expr_python import cel
from cel_expr_python.ext import ext_bindings, ext_encoders, ext_math, ext_optional, ext_strings

from engine.cel.libraries import OPAQUE_TYPE_KEY
from engine.cel.libraries.kubernetes import LIBRARIES, LIBRARY
from engine.cel.libraries.regex import PATTERN_CACHE_SIZE, compile_pattern


class Error:
    """Expected outcome: an error value whose message contains `fragment`."""

    def __init__(self, fragment: str) -> None:
        self.fragment = fragment

    def __repr__(self) -> str:
        return f"Error({self.fragment!r})"


@pytest.fixture(scope="module")
def env() -> Any:
    functions = [decl for library in LIBRARIES for decl in library.functions]
    return cel.NewEnv(
        variables={"object": cel.Type.DYN},
        extensions=[
            ext_optional.ExtOptional(),
            ext_strings.ExtStrings(),
            ext_math.ExtMath(),
            ext_bindings.ExtBindings(),
            ext_encoders.ExtEncoders(),
        ],
        functions=functions,
    )


def _same(actual: Any, expected: Any) -> bool:
    """Equality that also requires equal types, recursively (so True != 1 and 1 != 1.0)."""
    if isinstance(expected, (bytes, bytearray)):
        return isinstance(actual, (bytes, bytearray)) and bytes(actual) == bytes(expected)
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(_same(a, e) for a, e in zip(actual, expected, strict=True))
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(_same(actual[k], expected[k]) for k in expected)
    return bool(actual == expected)


def _evaluate(env: Any, expression: str, data: dict[str, Any] | None = None) -> Any:
    return env.compile(expression).eval(data=data or {"object": {}})


def _check(env: Any, expression: str, expected: Any) -> None:
    value = _evaluate(env, expression)
    if isinstance(expected, Error):
        assert value.type().name() == "ERROR", f"{expression} gave {value.plain_value()!r}"
        assert expected.fragment in str(value.value())
    else:
        assert value.type().name() != "ERROR", f"{expression} failed: {value.value()}"
        actual = value.plain_value()
        assert _same(actual, expected), f"{expression} gave {actual!r}, expected {expected!r}"


def _cases(table: dict[str, tuple[str, Any]]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(("expression", "expected"), list(table.values()), ids=list(table.keys()))


QUANTITY = {
    "parse-equal-by-value": ("quantity('1k') == quantity('1000')", True),
    "binary-equals-decimal": ("quantity('1Ki') == quantity('1024')", True),
    "milli-equals-decimal": ("quantity('100m') == quantity('0.1')", True),
    "exponent": ("quantity('1e3') == quantity('1k')", True),
    "capital-E-is-exa": ("quantity('1E') == quantity('1000P')", True),
    "different-values": ("quantity('1k') == quantity('1001')", False),
    "is-quantity": ("isQuantity('1.5Gi')", True),
    "is-quantity-bad-suffix": ("isQuantity('5Gx')", False),
    "is-quantity-empty": ("isQuantity('')", False),
    "is-quantity-uppercase-k": ("isQuantity('1K')", False),
    "bad-format": ("quantity('5Gx')", Error("quantities must match the regular expression")),
    "bad-suffix": ("quantity('1K')", Error("unable to parse quantity's suffix")),
    "bad-number": ("quantity('.')", Error("unable to parse numeric part of quantity")),
    "too-long": (f"quantity('1{'0' * 300}')", Error("longer than")),
    "sign-negative": ("quantity('-1.5').sign()", -1),
    "sign-zero": ("quantity('0').sign()", 0),
    "sign-positive": ("quantity('+2m').sign()", 1),
    "is-integer": ("quantity('50M').isInteger()", True),
    "is-integer-fraction": ("quantity('1.5').isInteger()", False),
    "is-integer-overflow": ("quantity('9999999999999999999999999999999999999G').isInteger()", False),
    "as-integer": ("quantity('1.5Gi').asInteger()", 1610612736),
    "as-integer-fraction": ("quantity('1500m').asInteger()", Error("cannot convert value to integer")),
    "as-float": ("quantity('1.5').asApproximateFloat()", 1.5),
    "as-float-milli": ("quantity('250m').asApproximateFloat()", 0.25),
    "rounds-up-to-nano": ("quantity('0.1n') == quantity('1n')", True),
    "rounds-negative-away-from-zero": ("quantity('-0.1n') == quantity('-1n')", True),
    "binary-capped-at-int64": ("quantity('16Ei').asInteger()", 9223372036854775807),
    "add-quantity": ("quantity('1Gi').add(quantity('512Mi')) == quantity('1.5Gi')", True),
    "add-int": ("quantity('50k').add(20).asInteger()", 50020),
    "sub-quantity": ("quantity('1').sub(quantity('250m')) == quantity('750m')", True),
    "sub-int": ("quantity('50k').sub(20) == quantity('49980')", True),
    "mul-int": ("quantity('1.5Gi').mul(2) == quantity('3Gi')", True),
    "less-than": ("quantity('200M').isLessThan(quantity('1G'))", True),
    "less-than-equal": ("quantity('1k').isLessThan(quantity('1000'))", False),
    "greater-than": ("quantity('2Gi').isGreaterThan(quantity('2G'))", True),
    "compare-to": (
        "[quantity('1').compareTo(quantity('2')), quantity('2').compareTo(quantity('2'))]",
        [-1, 0],
    ),
    "compare-to-greater": ("quantity('1Ki').compareTo(quantity('1k'))", 1),
    "compare-wrong-receiver": (
        "{'a': 1}.isLessThan(quantity('1'))",
        Error("expected a quantity or a semver"),
    ),
    "compare-mixed-types": (
        "quantity('1').isLessThan(semver('1.0.0'))",
        Error("cannot compare quantity with semver"),
    ),
    "sign-wrong-receiver": ("ip('1.2.3.4').sign()", Error("expected a quantity, got ip")),
    "string-not-supported": ("__celvern_string(quantity('1'))", Error("string() not supported for quantity")),
}

NETWORK = {
    "ip-equal": ("ip('2001:db8::1') == ip('2001:DB8:0::1')", True),
    "ip-not-equal": ("ip('10.0.0.1') == ip('10.0.0.2')", False),
    "is-ip-v4": ("isIP('192.168.0.1')", True),
    "is-ip-v6": ("isIP('::1')", True),
    "is-ip-leading-zero": ("isIP('010.0.0.1')", False),
    "is-ip-zone": ("isIP('fe80::1%eth0')", False),
    "is-ip-mapped": ("isIP('::ffff:1.2.3.4')", False),
    "ip-invalid": ("ip('1.2.3')", Error('IP Address "1.2.3" parse error during conversion from string')),
    "ip-zone": ("ip('fe80::1%eth0')", Error("with zone value is not allowed")),
    "ip-mapped": ("ip('::ffff:1.2.3.4')", Error("IPv4-mapped IPv6 address")),
    "is-canonical-v4": ("ip.isCanonical('127.0.0.1')", True),
    "is-canonical-v6": ("ip.isCanonical('2001:db8::1')", True),
    "is-canonical-uppercase": ("ip.isCanonical('2001:DB8::1')", False),
    "is-canonical-expanded": ("ip.isCanonical('2001:db8:0:0:0:0:0:1')", False),
    "is-canonical-invalid": ("ip.isCanonical('nope')", Error("parse error")),
    "family-4": ("ip('127.0.0.1').family()", 4),
    "family-6": ("ip('::1').family()", 6),
    "unspecified-v4": ("ip('0.0.0.0').isUnspecified()", True),
    "unspecified-v6": ("ip('::').isUnspecified()", True),
    "unspecified-no": ("ip('127.0.0.1').isUnspecified()", False),
    "loopback-v4": ("ip('127.0.0.1').isLoopback()", True),
    "loopback-v6": ("ip('::1').isLoopback()", True),
    "loopback-no": ("ip('1.1.1.1').isLoopback()", False),
    "link-local-multicast-v4": ("ip('224.0.0.1').isLinkLocalMulticast()", True),
    "link-local-multicast-v4-no": ("ip('224.0.1.1').isLinkLocalMulticast()", False),
    "link-local-multicast-v6": ("ip('ff02::1').isLinkLocalMulticast()", True),
    "link-local-multicast-v6-flags": ("ip('ff12::1').isLinkLocalMulticast()", True),
    "link-local-multicast-v6-no": ("ip('fd00::1').isLinkLocalMulticast()", False),
    "link-local-unicast-v4": ("ip('169.254.169.254').isLinkLocalUnicast()", True),
    "link-local-unicast-v6": ("ip('fe80::1').isLinkLocalUnicast()", True),
    "link-local-unicast-no": ("ip('192.168.0.1').isLinkLocalUnicast()", False),
    "global-unicast-private-v4": ("ip('192.168.0.1').isGlobalUnicast()", True),
    "global-unicast-v6": ("ip('2001:db8::abcd').isGlobalUnicast()", True),
    "global-unicast-broadcast": ("ip('255.255.255.255').isGlobalUnicast()", False),
    "global-unicast-multicast": ("ip('ff00::1').isGlobalUnicast()", False),
    "global-unicast-link-local": ("ip('fe80::1').isGlobalUnicast()", False),
    "string-ip": ("__celvern_string(ip('2001:DB8::1'))", "2001:db8::1"),
    "cidr-equal": ("cidr('192.168.0.0/24') == cidr('192.168.0.0/24')", True),
    "cidr-host-bits-matter": ("cidr('192.168.0.1/24') == cidr('192.168.0.0/24')", False),
    "is-cidr": ("isCIDR('10.0.0.0/8')", True),
    "is-cidr-no-slash": ("isCIDR('10.0.0.0')", False),
    "is-cidr-leading-zero-bits": ("isCIDR('10.0.0.0/08')", False),
    "is-cidr-too-long": ("isCIDR('10.0.0.0/33')", False),
    "cidr-bad-bits": (
        "cidr('192.168.0.0/')",
        Error('netip.ParsePrefix("192.168.0.0/"): bad bits after slash: ""'),
    ),
    "cidr-out-of-range": ("cidr('::1/129')", Error("prefix length out of range")),
    "cidr-mapped": ("cidr('::ffff:1.2.3.4/120')", Error("IPv4-mapped IPv6 address")),
    "cidr-zone": ("cidr('fe80::1%eth0/64')", Error("IPv6 zones cannot be present in a prefix")),
    "contains-ip": ("cidr('192.168.0.0/24').containsIP(ip('192.168.0.1'))", True),
    "contains-ip-no": ("cidr('192.168.0.0/24').containsIP(ip('192.168.1.1'))", False),
    "contains-ip-string": ("cidr('2001:db8::/32').containsIP('2001:db8::1')", True),
    "contains-ip-other-family": ("cidr('0.0.0.0/0').containsIP('::1')", False),
    "contains-ip-bad-string": ("cidr('10.0.0.0/8').containsIP('10.0.0')", Error("parse error")),
    "contains-cidr": ("cidr('192.168.0.0/16').containsCIDR(cidr('192.168.10.0/24'))", True),
    "contains-cidr-string": ("cidr('192.168.0.0/16').containsCIDR('192.168.10.0/24')", True),
    "contains-cidr-wider": ("cidr('192.168.0.0/24').containsCIDR('192.168.0.0/23')", False),
    "contains-cidr-disjoint": ("cidr('192.168.1.0/24').containsCIDR('192.168.2.0/24')", False),
    "contains-cidr-v6": ("cidr('2001:db8::/32').containsCIDR('2001:db8::/33')", True),
    "cidr-ip": ("cidr('192.168.0.1/24').ip() == ip('192.168.0.1')", True),
    "cidr-masked": ("cidr('192.168.0.1/24').masked() == cidr('192.168.0.0/24')", True),
    "cidr-masked-v6": ("__celvern_string(cidr('2001:db8:1::/32').masked())", "2001:db8::/32"),
    "cidr-prefix-length": ("cidr('2001:db8::/32').prefixLength()", 32),
    "string-cidr": ("__celvern_string(cidr('192.168.0.0/24'))", "192.168.0.0/24"),
    "cidr-method-on-ip": ("ip('10.0.0.1').prefixLength()", Error("expected a cidr, got ip")),
}

URL = {
    "scheme": ("url('https://example.com:80/').getScheme()", "https"),
    "host": ("url('https://example.com:80/').getHost()", "example.com:80"),
    "hostname": ("url('https://example.com:80/').getHostname()", "example.com"),
    "port": ("url('https://example.com:80/').getPort()", "80"),
    "no-port": ("url('https://example.com/').getPort()", ""),
    "ipv6-host": ("url('https://[::1]:80/').getHost()", "[::1]:80"),
    "ipv6-hostname": ("url('https://[::1]:80/').getHostname()", "::1"),
    "escaped-path": (
        "url('https://example.com/path with spaces/').getEscapedPath()",
        "/path%20with%20spaces/",
    ),
    "escaped-path-kept": ("url('https://example.com/a%2Fb').getEscapedPath()", "/a%2Fb"),
    "path-only": ("url('/absolute-path').getEscapedPath()", "/absolute-path"),
    "query": (
        "url('https://example.com/path?k1=a&k2=b&k2=c&k3').getQuery()",
        {"k1": ["a"], "k2": ["b", "c"], "k3": [""]},
    ),
    "query-unescaped": ("url('https://example.com/?a=x+y%21').getQuery()", {"a": ["x y!"]}),
    "query-semicolon-dropped": ("url('https://example.com/?a=1;b=2&c=3').getQuery()", {"c": ["3"]}),
    "fragment-dropped": ("url('https://example.com/p?q=1#frag').getQuery()", {"q": ["1"]}),
    "equal": ("url('https://example.com/') == url('https://example.com/')", True),
    "is-url": ("isURL('https://example.com/')", True),
    "is-url-relative": ("isURL('example.com')", False),
    "is-url-empty": ("isURL('')", False),
    "is-url-bad-port": ("isURL('https://example.com:port/')", False),
    "is-url-bad-escape": ("isURL('https://example.com/%zz')", False),
    "url-relative-error": (
        "url('../relative')",
        Error('URL parse error during conversion from string: parse "../relative"'),
    ),
    "url-missing-scheme": ("url(':foo')", Error("missing protocol scheme")),
    "url-bad-host": ("url('https://exa mple.com/')", Error('invalid character " " in host name')),
}

REGEX = {
    "find": ("'abc 123'.find('[0-9]+')", "123"),
    "find-no-match": ("'abc'.find('[0-9]+')", ""),
    "find-all": ("'123 abc 456'.findAll('[0-9]+')", ["123", "456"]),
    "find-all-limit": ("'123 abc 456'.findAll('[0-9]+', 1)", ["123"]),
    "find-all-limit-zero": ("'123 abc 456'.findAll('[0-9]+', 0)", []),
    "find-all-negative-limit": ("'1 2 3'.findAll('[0-9]', -1)", ["1", "2", "3"]),
    "find-all-empty-matches": ("'abc'.findAll('x*')", ["", "", "", ""]),
    "digit-class-is-ascii": ("'٣3'.find('\\\\d')", "3"),
    "word-class-is-ascii": ("'héllo'.findAll('\\\\w+')", ["h", "llo"]),
    "dollar-is-end-of-text": ("'ab\\n'.find('b$')", ""),
    "backslash-z": ("'ab'.find('b\\\\z')", "b"),
    "posix-class": ("'ab12'.find('[[:digit:]]+')", "12"),
    "quoted-literal": ("'a.b'.find('\\\\Qa.b\\\\E')", "a.b"),
    "named-group": ("'key=value'.find('(?<k>[a-z]+)=')", "key="),
    "case-insensitive": ("'ABC'.find('(?i)b')", "B"),
    "invalid-regex": ("'abc'.find('(')", Error("error parsing regexp")),
    "unicode-letter-class": ("'héllo wörld 42'.findAll('\\\\p{L}+')", ["héllo", "wörld"]),
    "unicode-negated-class": ("'ab12cd'.find('\\\\P{L}+')", "12"),
    "mid-pattern-flag": ("'fooBAR FOObar'.find('foo(?i)bar')", "fooBAR"),
    "scoped-flag-group": ("'xABC xAbc'.find('x(?i:a)bc')", "xAbc"),
    "pathological-no-match": (f"'{'a' * 5000}b'.find('(a|a)*c')", ""),
    "pathological-match": (f"'{'a' * 5000}b'.find('(a|a)*b').size()", 5001),
    "pathological-find-all": (f"'{'a' * 5000}b'.findAll('(a|a)*c')", []),
    "invalid-regex-go-wording": ("'abc'.find('(')", Error("error parsing regexp: missing closing ): `(`")),
    "lookahead-rejected": ("'abc'.find('a(?=b)')", Error("error parsing regexp: invalid or unsupported Perl syntax")),
    "lookahead-rejected-explained": ("'abc'.find('a(?=b)')", Error("look-ahead and look-behind assertions")),
    "lookahead-rejected-names-pattern": ("'abc'.find('a(?=b)')", Error("in `a(?=b)`")),
    "lookbehind-rejected": ("'abc'.find('(?<!a)b')", Error("are not supported by RE2) in `(?<!a)b`")),
    "backreference-rejected": ("'aa'.find('(a)\\\\1')", Error("error parsing regexp: invalid escape sequence")),
    "backreference-rejected-explained": ("'aa'.find('(a)\\\\1')", Error("back-references are not supported")),
    "byte-escape-rejected": ("'a'.find('\\\\C')", Error("invalid escape sequence: `\\C`")),
    "bad-repeat-count": ("'a'.find('a{1001}')", Error("invalid repeat count")),
    "pattern-too-long": (f"'a'.find('{'a' * 3000}')", Error("pattern longer than")),
}

LISTS = {
    "is-sorted": ("[1, 2, 2, 3].isSorted()", True),
    "is-sorted-no": ("['b', 'a'].isSorted()", False),
    "is-sorted-empty": ("[].isSorted()", True),
    "is-sorted-mixed": ("[1, 'a'].isSorted()", Error("cannot compare int with string")),
    "sum-int": ("[1, 2, 3].sum()", 6),
    "sum-double": ("[1.5, 2.5].sum()", 4.0),
    "sum-empty": ("[].sum()", 0),
    "sum-overflow": ("[9223372036854775807, 1].sum()", Error("integer overflow")),
    "sum-mixed": ("dyn([1, 2.0]).sum()", Error("list elements must all be int, uint or double")),
    "sum-strings": ("['a'].sum()", Error("list elements must all be int")),
    "min": ("[3, 1, 2].min()", 1),
    "max": ("['a', 'c', 'b'].max()", "c"),
    "min-mixed-numbers": ("dyn([2, 1.5]).min()", 1.5),
    "min-empty": ("[].min()", Error("min called on empty list")),
    "max-empty": ("[].max()", Error("max called on empty list")),
    "max-incomparable": ("[{'a': 1}, {'b': 2}].max()", Error("cannot be ordered")),
    "min-timestamps-refused": ("[timestamp('2024-01-01T00:00:00Z')].min()", Error("timestamps or durations")),
    "index-of": ("__celvern_list_indexOf([1, 2, 3, 2], 2)", 1),
    "index-of-absent": ("__celvern_list_indexOf([1, 2, 3], 4)", -1),
    "index-of-heterogeneous-numbers": ("__celvern_list_indexOf([1, 2], 2.0)", 1),
    "index-of-uint": ("__celvern_list_indexOf([1, 2], 2u)", 1),
    "index-of-bool-is-not-int": ("__celvern_list_indexOf([1, true], true)", 1),
    "index-of-string": ("__celvern_list_indexOf(['a', 'b'], 'b')", 1),
    "index-of-list": ("__celvern_list_indexOf([[1], [2]], [2])", 1),
    "index-of-map": ("__celvern_list_indexOf([{'a': 1}], {'a': 1.0})", 0),
    "index-of-null": ("__celvern_list_indexOf([1, null], null)", 1),
    "index-of-bytes": ("__celvern_list_indexOf([b'x', b'y'], b'y')", 1),
    "index-of-timestamp": (
        "__celvern_list_indexOf([timestamp('2024-01-01T00:00:00Z')], timestamp('2024-01-01T00:00:00Z'))",
        0,
    ),
    "last-index-of": ("__celvern_list_lastIndexOf([1, 2, 3, 2], 2)", 3),
    "last-index-of-absent": ("__celvern_list_lastIndexOf(['a'], 'b')", -1),
    "reverse": ("__celvern_list_reverse([1, 'a', true])", [True, "a", 1]),
    "flatten": ("[1, [2, [3]], [], [[4]]].flatten()", [1, 2, [3], [4]]),
    "flatten-depth": ("[1, [2, [3, [4]]]].flatten(2)", [1, 2, 3, [4]]),
    "flatten-depth-zero": ("[[1]].flatten(0)", [[1]]),
    "flatten-negative": ("[[1]].flatten(-1)", Error("level must be non-negative")),
    "distinct": ("[1, 2, 1.0, 2u, 'a', 'a', true].distinct()", [1, 2, "a", True]),
    "distinct-maps": ("[{'a': 1}, {'a': 1}, {'a': 2}].distinct()", [{"a": 1}, {"a": 2}]),
    "slice": ("[1, 2, 3, 4].slice(1, 3)", [2, 3]),
    "slice-empty": ("[1, 2].slice(2, 2)", []),
    "slice-negative": ("[1, 2].slice(-1, 2)", Error("negative indexes not supported")),
    "slice-reversed": ("[1, 2].slice(2, 1)", Error("start index must be less than or equal to end index")),
    "slice-too-long": ("[1, 2].slice(0, 3)", Error("list is length 2")),
    "sort-ints": ("[3, 1, 2].sort()", [1, 2, 3]),
    "sort-strings": ("['b', 'c', 'a'].sort()", ["a", "b", "c"]),
    "sort-bytes": ("[b'c', b'a'].sort() == [b'a', b'c']", True),
    "sort-mixed": ("dyn([1, 'a']).sort()", Error("list elements must have the same type")),
    "sort-maps": ("[{'a': 1}].sort()", Error("cannot be ordered")),
    "sort-empty": ("[].sort()", []),
    "range": ("lists.range(4)", [0, 1, 2, 3]),
    "range-zero": ("lists.range(0)", []),
    "range-negative": ("lists.range(-3)", []),
    "range-limit": ("lists.range(100001)", Error("exceeds the limit of 100000")),
    "sets-contains": ("sets.contains([1, 2, 3], [3, 1])", True),
    "sets-contains-empty": ("sets.contains([1], [])", True),
    "sets-contains-no": ("sets.contains([1, 2], [3])", False),
    "sets-contains-numeric": ("sets.contains([1, 2u, 3.0], [1.0, 2, 3u])", True),
    "sets-contains-bool-not-int": ("sets.contains([1], [true])", False),
    "sets-equivalent": ("sets.equivalent([1, 2, 2], [2, 1])", True),
    "sets-equivalent-no": ("sets.equivalent([1, 2], [1])", False),
    "sets-intersects": ("sets.intersects([1, 2], [2.0, 5])", True),
    "sets-intersects-no": ("sets.intersects([1], ['1'])", False),
    "sets-intersects-empty": ("sets.intersects([], [1])", False),
}

SEMVER = {
    "parse-equal": ("semver('1.2.3') == semver('1.2.3')", True),
    "build-metadata-ignored": ("semver('1.0.0+a') == semver('1.0.0+b')", True),
    "prerelease-matters": ("semver('1.0.0-rc.1') == semver('1.0.0')", False),
    "is-semver": ("isSemver('1.2.3-alpha.1+build.5')", True),
    "is-semver-short": ("isSemver('1.2')", False),
    "is-semver-v-prefix": ("isSemver('v1.2.3')", False),
    "is-semver-normalize": ("isSemver('v1.2', true)", True),
    "is-semver-normalize-false": ("isSemver('v1.2', false)", False),
    "is-semver-leading-zero": ("isSemver('01.2.3')", False),
    "normalize": ("semver('v01.02', true) == semver('1.2.0')", True),
    "normalize-short-prerelease": ("semver('1.2-alpha', true)", Error("short version cannot contain")),
    "major": ("semver('1.2.3').major()", 1),
    "minor": ("semver('1.2.3').minor()", 2),
    "patch": ("semver('1.2.3').patch()", 3),
    "less-than-numeric": ("semver('1.2.3').isLessThan(semver('1.10.0'))", True),
    "prerelease-before-release": ("semver('1.0.0-rc.1').isLessThan(semver('1.0.0'))", True),
    "numeric-prerelease-order": ("semver('1.0.0-beta.2').isLessThan(semver('1.0.0-beta.11'))", True),
    "alnum-after-numeric": ("semver('1.0.0-alpha.beta').isGreaterThan(semver('1.0.0-alpha.1'))", True),
    "longer-prerelease": ("semver('1.0.0-alpha').compareTo(semver('1.0.0-alpha.1'))", -1),
    "compare-equal": ("semver('2.0.0+x').compareTo(semver('2.0.0'))", 0),
    "compare-greater": ("semver('2.0.0').compareTo(semver('1.9.9'))", 1),
    "invalid": ("semver('1.2.x')", Error('Invalid character(s) found in patch number "x"')),
    "invalid-empty": ("semver('')", Error("Version string empty")),
    "major-wrong-receiver": ("quantity('1').major()", Error("expected a semver, got quantity")),
}

_LABEL_REGEX_ERROR = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)

FORMAT = {
    "constant-equal": ("format.dns1123Label() == format.dns1123Label()", True),
    "constants-differ": ("format.dns1123Label() == format.dns1035Label()", False),
    "named": ("__celvern_format_named('dns1123Label') == format.dns1123Label()", True),
    "named-unknown": ("__celvern_format_named('nope')", {}),
    "named-optional": ("optional.ofNonZeroValue(__celvern_format_named('nope')).hasValue()", False),
    "label-valid": ("__celvern_format_validate(format.dns1123Label(), 'my-name')", []),
    "label-dots": ("__celvern_format_validate(format.dns1123Label(), 'a.b')", ["must not contain dots"]),
    "label-uppercase": ("__celvern_format_validate(format.dns1123Label(), 'My-Name')", [_LABEL_REGEX_ERROR]),
    "label-too-long": (
        f"__celvern_format_validate(format.dns1123Label(), '{'a' * 64}')",
        ["must be no more than 63 characters"],
    ),
    "label-prefix-trailing-dash": ("__celvern_format_validate(format.dns1123LabelPrefix(), 'my-name-')", []),
    "label-no-trailing-dash": ("size(__celvern_format_validate(format.dns1123Label(), 'my-name-'))", 1),
    "subdomain-valid": ("__celvern_format_validate(format.dns1123Subdomain(), 'example.com')", []),
    "subdomain-invalid": ("size(__celvern_format_validate(format.dns1123Subdomain(), '-example.com'))", 1),
    "subdomain-prefix": ("__celvern_format_validate(format.dns1123SubdomainPrefix(), 'example-')", []),
    "dns1035-digit-start": (
        "__celvern_format_validate(format.dns1035Label(), '1abc')[0].startsWith('a DNS-1035 label')",
        True,
    ),
    "dns1035-prefix": ("__celvern_format_validate(format.dns1035LabelPrefix(), 'abc-')", []),
    "qualified-name": ("__celvern_format_validate(format.qualifiedName(), 'example.com/MyName')", []),
    "qualified-name-empty-prefix": (
        "__celvern_format_validate(format.qualifiedName(), '/name')",
        ["prefix part must be non-empty"],
    ),
    "qualified-name-bad-prefix": (
        "__celvern_format_validate(format.qualifiedName(), 'Example.com/name')[0]"
        ".startsWith('prefix part a lowercase RFC 1123 subdomain')",
        True,
    ),
    "qualified-name-two-slashes": (
        "__celvern_format_validate(format.qualifiedName(), 'a/b/c')[0].startsWith('a qualified name must consist')",
        True,
    ),
    "label-value-empty": ("__celvern_format_validate(format.labelValue(), '')", []),
    "label-value-bad": ("size(__celvern_format_validate(format.labelValue(), '-bad'))", 1),
    "uri-valid": ("__celvern_format_validate(format.uri(), 'https://example.com/x')", []),
    "uri-invalid": (
        "__celvern_format_validate(format.uri(), 'relative')",
        ['parse "relative": invalid URI for request'],
    ),
    "uuid-valid": ("__celvern_format_validate(format.uuid(), '123e4567-e89b-12d3-a456-426614174000')", []),
    "uuid-invalid": (
        "__celvern_format_validate(format.uuid(), 'not-a-uuid')",
        ["does not match the UUID format"],
    ),
    "byte-valid": ("__celvern_format_validate(format.byte(), 'aGVsbG8=')", []),
    "byte-invalid": ("__celvern_format_validate(format.byte(), 'aGVsbG8')", ["invalid base64"]),
    "date-valid": ("__celvern_format_validate(format.date(), '2024-02-29')", []),
    "date-invalid-day": ("__celvern_format_validate(format.date(), '2023-02-29')", ["invalid date"]),
    "datetime-valid": ("__celvern_format_validate(format.datetime(), '2024-01-02T03:04:05.6Z')", []),
    "datetime-offset": ("__celvern_format_validate(format.datetime(), '2024-01-02T03:04:05+02:00')", []),
    "datetime-invalid": (
        "__celvern_format_validate(format.datetime(), '2024-01-02 25:00')",
        ["invalid datetime"],
    ),
    "validate-wrong-receiver": ("__celvern_format_validate(quantity('1'), 'x')", Error("expected a format")),
}


@_cases(QUANTITY)
def test_quantity(env: Any, expression: str, expected: Any) -> None:
    _check(env, expression, expected)


@_cases(NETWORK)
def test_ip_and_cidr(env: Any, expression: str, expected: Any) -> None:
    _check(env, expression, expected)


@_cases(URL)
def test_url(env: Any, expression: str, expected: Any) -> None:
    _check(env, expression, expected)


@_cases(REGEX)
def test_regex(env: Any, expression: str, expected: Any) -> None:
    _check(env, expression, expected)


@_cases(LISTS)
def test_lists_and_sets(env: Any, expression: str, expected: Any) -> None:
    _check(env, expression, expected)


@_cases(SEMVER)
def test_semver(env: Any, expression: str, expected: Any) -> None:
    _check(env, expression, expected)


@_cases(FORMAT)
def test_format(env: Any, expression: str, expected: Any) -> None:
    _check(env, expression, expected)


def test_opaque_values_carry_their_type(env: Any) -> None:
    value = _evaluate(env, "[quantity('1'), ip('::1'), cidr('::/0'), url('/'), semver('1.0.0'), format.uuid()]")
    kinds = [item[OPAQUE_TYPE_KEY] for item in value.plain_value()]
    assert kinds == ["quantity", "ip", "cidr", "url", "semver", "format"]


def test_functions_apply_to_dyn_data(env: Any) -> None:
    data = {"object": {"limits": ["250m", "1"], "ips": ["10.0.0.1", "192.168.1.1"], "tags": [3, 1, 2]}}
    expression = (
        "object.limits.all(l, quantity(l).isLessThan(quantity('2'))) && "
        "object.ips.filter(i, cidr('10.0.0.0/8').containsIP(i)) == ['10.0.0.1'] && "
        "object.tags.sort() == [1, 2, 3] && object.tags.max() == 3"
    )
    value = _evaluate(env, expression, data)
    assert value.plain_value() is True


def test_every_function_name_is_declared_once() -> None:
    names = [decl for library in LIBRARIES for decl in library.functions]
    assert LIBRARY in LIBRARIES
    assert len(names) == len({id(decl) for decl in names})


def test_compiled_pattern_cache_is_bounded() -> None:
    for n in range(PATTERN_CACHE_SIZE + 10):
        compile_pattern(f"x{n}")
    info = compile_pattern.cache_info()
    assert info.maxsize == PATTERN_CACHE_SIZE
    assert info.currsize <= PATTERN_CACHE_SIZE
