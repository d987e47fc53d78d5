"""Kyverno's CEL libraries, evaluated through the real C++ runtime with per-evaluation services."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import pytest
from cel_expr_python import cel
from cel_expr_python.ext import ext_bindings, ext_encoders, ext_math, ext_optional, ext_strings
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from engine.cel import services
from engine.cel.libraries import OPAQUE_TYPE_KEY
from engine.cel.libraries.image import ImageReferenceError, parse_reference
from engine.cel.libraries.kyverno import LIBRARIES
from engine.cel.libraries.kyverno_cluster import projection_key
from engine.cel.libraries.kyverno_data import go_json
from engine.cel.libraries.offline import InMemoryResources, MockedHttp, UnmatchedCall, plural_of

DIGEST = "sha256:6aefddb645ee6963afd681b1845c661d0ea4c3b20ab9db86d9e753b203d385f2"

# Kyverno's own x509 test certificate (kyverno/sdk extensions/cel/libs/x509/impl_test.go).
CERT = """-----BEGIN CERTIFICATE-----
MIIC7TCCAdWgAwIBAgIBADANBgkqhkiG9w0BAQsFADAYMRYwFAYDVQQDDA0qLmt5
dmVybm8uc3ZjMB4XDTIyMTAxMDExNDYzMloXDTIzMTAxMDEyNDYzMlowGDEWMBQG
A1UEAwwNKi5reXZlcm5vLnN2YzCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoC
ggEBAOKF+2P0Ufp855hpdsGD4lYkd6oU7HZAOWm1XskAMwrdsqWwTNNAinyHRoPQ
IbNbGDQ+r6Cggc2mlxHJ90PnC2weHj5otaD17Z+ARZpJZ4HMWkEfFt8sxwo9vuQJ
RWihqNwFheowjswoSB1DHnPufrZHfztkMoRx278ZfHaIMdlSTg50ektkNDoHA3OJ
sxxw54X3HR1iq6SZwN8xNT0TI6B6BbfAYWMNmKCiZ2iV6kW//XnTEqGd2WcmhuP0
SjwO4tCJbj9oV6+Bj/uhFr7J4foErMaodYDBtQs/ul2tcAwSBHfnC2KcLbiZTZsC
0Rs0WPJ4YwF/cOsD7Z/RmLs4FHsCAwEAAaNCMEAwDgYDVR0PAQH/BAQDAgKkMA8G
A1UdEwEB/wQFMAMBAf8wHQYDVR0OBBYEFJaK+3Wfnf7rVkYBzMCLSaV56NMqMA0G
CSqGSIb3DQEBCwUAA4IBAQDY7F6b+t9BX7098JyGk6zeT39MoLdSv+8IaKXn+m8G
yOKn3CZkruko57ycvPd4taC0gggtmUYynFhwPMQr+boNrrK9rat8Jw3yPPsBq/8D
/s6tvwxSNXBfPUI5OvNIB/hA5XpJpdHQaCkYm+FWkcJsolkkbSOfVjUjImW26JHB
nnPPtR4Y7dx0SVoPS19IC0T5RmdvgqlXj4XbhTnX3QOujVHn8u+wQ8po7EngHDQs
+onfkp8ipe0QpEJL1ZdW2LhyDXGKrZ2y8UPZ9wYNzxHWaj1Thu4B9YFdsPUwWqSx
n9e+FygpoktlD8YgT7jwgiVKX7Koz++zyvMIdhvRrtgS
-----END CERTIFICATE-----"""


@pytest.fixture(scope="module")
def env() -> Any:
    return cel.NewEnv(
        variables={"object": cel.Type.DYN, "cert": cel.Type.STRING},
        extensions=[
            ext_optional.ExtOptional(),
            ext_strings.ExtStrings(),
            ext_math.ExtMath(),
            ext_bindings.ExtBindings(),
            ext_encoders.ExtEncoders(),
        ],
        functions=[decl for library in LIBRARIES for decl in library.functions],
    )


def evaluate(env: Any, expression: str, **data: Any) -> Any:
    """The plain value of `expression`; a CEL error value fails the test with its message."""
    value = env.compile(expression).eval(env.Activation(data={"object": {}, "cert": CERT, **data}))
    assert value.type().name() != "ERROR", value.value()
    return value.plain_value()


def error_of(env: Any, expression: str, **data: Any) -> str:
    """The message of the error value `expression` evaluates to."""
    value = env.compile(expression).eval(env.Activation(data={"object": {}, "cert": CERT, **data}))
    assert value.type().name() == "ERROR", value.plain_value()
    return str(value.value())


def case(expression: str, expected: Any, id: str) -> Any:
    return pytest.param(expression, expected, id=id)


# --- pure functions ---------------------------------------------------------------------------------------

PURE_CASES = [
    case(
        'json.unmarshal("{\\"a\\": [1, \\"x\\", null, true]}")',
        {"a": [1.0, "x", None, True]},
        "json-unmarshal",
    ),
    case('type(json.unmarshal("{\\"n\\": 1}").n) == double', True, "json-unmarshal-numbers-are-doubles"),
    case('json.marshal({"b": 1, "a": [2.5, null, true]})', '{"a":[2.5,null,true],"b":1}', "json-marshal-sorted"),
    case('json.marshal("<a&b>")', '"\\u003ca\\u0026b\\u003e"', "json-marshal-html-escape"),
    case("json.marshal(1e21)", "1e+21", "json-marshal-large-double"),
    case("json.marshal(0.0000001)", "1e-7", "json-marshal-small-double"),
    case("json.marshal(3.0)", "3", "json-marshal-integral-double"),
    case('json.marshal(b"foo")', '"Zm9v"', "json-marshal-bytes-base64"),
    case("json.marshal(null)", "null", "json-marshal-null"),
    case(
        'json.marshal(timestamp("2024-01-02T03:04:05.5Z"))',
        '"2024-01-02T03:04:05.5Z"',
        "json-marshal-timestamp",
    ),
    case('json.marshal(json.unmarshal("{\\"a\\":\\"b\\"}"))', '{"a":"b"}', "json-roundtrip"),
    case('yaml.parse("a: 1\\nb: [x, 2.5]\\nc: yes")', {"a": 1.0, "b": ["x", 2.5], "c": True}, "yaml-parse"),
    case('yaml.parse("d: 2024-01-02")', {"d": "2024-01-02"}, "yaml-timestamps-stay-strings"),
    case('sha256("abc")', "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "sha256"),
    case(
        'hash.sha256("abc")',
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "hash.sha256",
    ),
    case('sha1("abc")', "a9993e364706816aba3e25717850c26c9cd0d89d", "sha1"),
    case('hash.sha1("abc")', "a9993e364706816aba3e25717850c26c9cd0d89d", "hash.sha1"),
    case('md5("abc")', "900150983cd24fb0d6963f7d28e17f72", "md5"),
    case('hash.md5("abc")', "900150983cd24fb0d6963f7d28e17f72", "hash.md5"),
    case('gzip.decompress(gzip.compress("hello, world"))', "hello, world", "gzip-roundtrip"),
    case('gzip.compress("x") == gzip.compress("x")', True, "gzip-deterministic"),
    case("__celvern_math_round(2.345, 2)", 2.35, "round-half-up"),
    case("__celvern_math_round(-2.5, 0)", -3.0, "round-half-away-from-zero"),
    case("__celvern_math_round(0.49999999999999994, 0)", 0.0, "round-exact-below-half"),
    case("__celvern_math_round(1234, -2)", 1200.0, "round-int-negative-precision"),
    case(
        'time.truncate(timestamp("2024-05-06T10:37:12Z"), duration("1h"))',
        datetime.datetime(2024, 5, 6, 10, tzinfo=datetime.UTC),
        "time-truncate",
    ),
    case(
        'time.truncate(timestamp("2024-05-06T10:37:12Z"), duration("0s"))',
        datetime.datetime(2024, 5, 6, 10, 37, 12, tzinfo=datetime.UTC),
        "time-truncate-zero-step",
    ),
    case('time.toCron(timestamp("2024-03-10T10:07:12Z"))', "7 10 10 3 0", "time-to-cron-sunday"),
    case(
        'listObjToMap([{"k": "a"}, {"k": "b"}], [{"v": 1}, {"v": 2}], "k", "v")',
        {"a": 1, "b": 2},
        "listObjToMap",
    ),
    case('transform.listObjToMap([{"k": "a"}], [{"v": "x"}], "k", "v")', {"a": "x"}, "transform.listObjToMap"),
    case(
        'parseServiceAccount("system:serviceaccount:kube-system:default")',
        {"name": "default", "namespace": "kube-system"},
        "parseServiceAccount",
    ),
    case('user.parseServiceAccount("jane")', {"name": "", "namespace": ""}, "parseServiceAccount-not-an-sa"),
    case('jsonpatch.escapeKey("example.com/a~b")', "example.com~1a~0b", "jsonpatch-escapeKey"),
    case('random().matches("^[0-9a-z]{8}$")', True, "random-default"),
    case("random.random().size() == 8", True, "random.random-default"),
    case('random("[A-F]{4}-(ab|cd)\\\\d{2}").matches("^[A-F]{4}-(ab|cd)[0-9]{2}$")', True, "random-pattern"),
    case('random("x{3}")', "xxx", "random-literal-repeat"),
]


@pytest.mark.parametrize(("expression", "expected"), PURE_CASES)
def test_pure_functions(env: Any, expression: str, expected: Any) -> None:
    assert evaluate(env, expression) == expected


PURE_ERRORS = [
    case('json.unmarshal("{")', "json:", "json-unmarshal-invalid"),
    case('yaml.parse("a: [")', "yaml:", "yaml-parse-invalid"),
    case('gzip.decompress(b"not gzip")', "gzip:", "gzip-decompress-invalid"),
    case('listObjToMap([{"k": "a"}], [], "k", "v")', "lists of equal length", "listObjToMap-length"),
    case('listObjToMap([{"k": 1}], [{"v": 1}], "k", "v")', "cannot be handled as a string", "listObjToMap-key"),
    case('random("[a-")', "missing ']'", "random-bad-pattern"),
    case('random("\\\\pL")', "unsupported escape", "random-unsupported-escape"),
    case('x509.decode("not a pem")', "failed to decode PEM block", "x509-not-pem"),
    case(
        'x509.decode("-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----")',
        "neither contains a CERTIFICATE",
        "x509-wrong-block",
    ),
]


@pytest.mark.parametrize(("expression", "message"), PURE_ERRORS)
def test_pure_function_errors(env: Any, expression: str, message: str) -> None:
    assert message in error_of(env, expression)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(100.0, "100", id="integral"),
        pytest.param(1e20, "100000000000000000000", id="below-1e21-fixed"),
        pytest.param(1.5e-7, "1.5e-7", id="below-1e-6-exponent"),
        pytest.param(-0.0, "-0", id="negative-zero"),
        pytest.param({"k": "\u2028\n"}, '{"k":"\\u2028\\n"}', id="escapes"),
        pytest.param(datetime.timedelta(seconds=1), "1000000000", id="duration-nanoseconds"),
    ],
)
def test_go_json(value: Any, expected: str) -> None:
    assert go_json(value) == expected


def test_go_json_rejects_nan() -> None:
    with pytest.raises(ValueError, match="unsupported value"):
        go_json(float("nan"))


def test_time_now_reads_the_evaluation_clock(env: Any) -> None:
    fixed = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    with services.use(services.Services(now=lambda: fixed)):
        assert evaluate(env, "time.now()") == fixed


# --- x509 -------------------------------------------------------------------------------------------------


def test_x509_decode_matches_kyverno(env: Any) -> None:
    result = evaluate(env, "x509.decode(cert)")
    assert result["IsCA"] is True
    assert result["BasicConstraintsValid"] is True
    assert result["KeyUsage"] == 37.0
    assert result["SerialNumber"] == 0.0
    assert result["PublicKeyAlgorithm"] == 1.0
    assert result["MaxPathLen"] == -1.0
    assert result["MaxPathLenZero"] is False
    assert result["NotBefore"] == "2022-10-10T11:46:32Z"
    assert result["NotAfter"] == "2023-10-10T12:46:32Z"
    assert result["Issuer"]["CommonName"] == "*.kyverno.svc"
    assert result["Issuer"]["SerialNumber"] == ""
    assert result["Issuer"]["Names"] == [{"Type": [2.0, 5.0, 4.0, 3.0], "Value": "*.kyverno.svc"}]
    assert result["PublicKey"]["E"] == 65537.0
    assert result["PublicKey"]["N"].startswith("2859592590596222342452094735220710545174461679708817")
    assert len(result["Extensions"]) == 3
    assert result["Extensions"][0]["Critical"] is True
    assert result["DNSNames"] is None
    assert all(result[key] for key in ("Raw", "RawIssuer", "RawSubject", "RawSubjectPublicKeyInfo", "Signature"))


def test_x509_decode_usable_in_expressions(env: Any) -> None:
    assert evaluate(env, 'x509.decode(cert).Issuer.CommonName.endsWith(".svc") && x509.decode(cert).IsCA')


def _pem_request(key: Any) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app.example.com")])
    )
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("app.example.com")]), False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def test_x509_decode_certificate_request(env: Any) -> None:
    pem = _pem_request(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    result = evaluate(env, "x509.decode(cert)", cert=pem)
    assert result["Subject"]["CommonName"] == "app.example.com"
    assert result["DNSNames"] == ["app.example.com"]
    assert result["SignatureAlgorithm"] == 4.0  # x509.SHA256WithRSA
    assert result["PublicKey"]["E"] == 65537.0


def test_x509_decode_rejects_non_rsa_keys(env: Any) -> None:
    pem = _pem_request(ec.generate_private_key(ec.SECP256R1()))
    assert "certificate should use rsa algorithm" in error_of(env, "x509.decode(cert)", cert=pem)


# --- image ------------------------------------------------------------------------------------------------

IMAGE_CASES = [
    case('parseImageReference("nginx").registry()', "index.docker.io", "docker-hub-default-registry"),
    case('parseImageReference("nginx").repository()', "library/nginx", "docker-hub-library-namespace"),
    case('parseImageReference("nginx").tag()', "latest", "default-tag"),
    case('parseImageReference("nginx").identifier()', "latest", "default-identifier"),
    case('parseImageReference("docker.io/bitnami/redis:7").registry()', "index.docker.io", "docker.io-alias"),
    case('parseImageReference("localhost:5000/app:v1").registry()', "localhost:5000", "registry-with-port"),
    case('parseImageReference("localhost/app").registry()', "index.docker.io", "localhost-without-port-is-repo"),
    case('parseImageReference("localhost/app").repository()', "localhost/app", "localhost-repository"),
    case(
        'parseImageReference("registry.k8s.io/kube-apiserver-arm64").repository()',
        "kube-apiserver-arm64",
        "repo",
    ),
    case(f'parseImageReference("ghcr.io/a/b@{DIGEST}").digest()', DIGEST, "digest"),
    case(f'parseImageReference("ghcr.io/a/b@{DIGEST}").tag()', "", "digest-has-no-tag"),
    case(f'parseImageReference("ghcr.io/a/b@{DIGEST}").identifier()', DIGEST, "digest-identifier"),
    case(f'parseImageReference("ghcr.io/a/b:1.2@{DIGEST}").tag()', "1.2", "tag-and-digest-tag"),
    case(f'parseImageReference("ghcr.io/a/b:1.2@{DIGEST}").identifier()', f"1.2@{DIGEST}", "tag-and-digest-id"),
    case(f'parseImageReference("reg.example:5000/repo@{DIGEST}").tag()', "", "port-is-not-a-tag"),
    case(f'parseImageReference("ghcr.io/a/b:1.2@{DIGEST}").containsDigest()', True, "containsDigest"),
    case('parseImageReference("ghcr.io/a/b:1.2").containsDigest()', False, "containsDigest-false"),
    case('parseImageReference("ghcr.io/a/b:1.2").digest()', "", "no-digest"),
    case('image("nginx:1.25").tag()', "1.25", "image-alias"),
    case('isImage("registry.k8s.io/pause:3.9")', True, "isImage"),
    case('isImage("registry.k8s.io/kube-apiserver-arm64:@")', False, "isImage-empty-tag"),
    case('isImage("Nginx")', False, "isImage-uppercase-repository"),
    case('isImage("https://ghcr.io/a/b")', False, "isImage-url-scheme"),
    case(
        'parseImageReference("nginx") == parseImageReference("index.docker.io/library/nginx:latest")',
        True,
        "eq",
    ),
]


@pytest.mark.parametrize(("expression", "expected"), IMAGE_CASES)
def test_image_library(env: Any, expression: str, expected: Any) -> None:
    assert evaluate(env, expression) == expected


def test_image_parse_error_names_the_reference(env: Any) -> None:
    message = error_of(env, 'parseImageReference("registry.k8s.io/kube-apiserver-arm64:@")')
    assert "could not parse reference: registry.k8s.io/kube-apiserver-arm64:@" in message


def test_image_members_reject_other_maps(env: Any) -> None:
    assert "expected an image" in error_of(env, '{"registry": "x"}.registry()')


def test_parse_reference_rejects_bad_digest() -> None:
    with pytest.raises(ImageReferenceError):
        parse_reference("ghcr.io/a/b@sha256:abc")


# --- resource ---------------------------------------------------------------------------------------------

CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "settings", "namespace": "team-a", "labels": {"app": "web"}},
    "data": {"mode": "strict"},
}
OTHER_CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "other", "namespace": "team-b"},
    "data": {},
}
POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny", "namespace": "team-a"},
}


def cluster(**overrides: Any) -> services.Services:
    resources = InMemoryResources([CONFIGMAP, OTHER_CONFIGMAP, POLICY])
    return services.Services(resources=resources, **overrides)


RESOURCE_CASES = [
    case('resource.Get("v1", "configmaps", "team-a", "settings").data.mode', "strict", "get"),
    case('resource.get("v1", "configmaps", "team-a", "settings").data.mode', "strict", "get-camel"),
    case('resource.Get("v1", "configmaps", "team-a", "missing") == null', True, "get-not-found-null"),
    case(
        'resource.List("v1", "configmaps", "").items.map(c, c.metadata.name)',
        ["settings", "other"],
        "list-all",
    ),
    case('resource.list("v1", "configmaps", "team-b").items.size()', 1, "list-namespace"),
    case('resource.List("v1", "configmaps", "", {"app": "web"}).items.size()', 1, "list-labels"),
    case('resource.List("v1", "configmaps", "team-a").kind', "ConfigMapList", "list-kind"),
    case('resource.List("v1", "configmaps", "team-a").apiVersion', "v1", "list-apiVersion"),
    case(
        'resource.List("v1", "secrets", "team-a")',
        {"apiVersion": "v1", "items": []},
        "list-empty-unknown-kind",
    ),
    case('resource.ToGVR("networking.k8s.io/v1", "NetworkPolicy").Resource', "networkpolicies", "toGVR"),
    case(
        'resource.Get(resource.toGVR("networking.k8s.io/v1", "NetworkPolicy"), "team-a", "deny").metadata.name',
        "deny",
        "get-by-gvr",
    ),
    case(
        'resource.List(resource.ToGVR("v1", "ConfigMap"), "team-b").items.size()',
        1,
        "list-by-gvr",
    ),
]


@pytest.mark.parametrize(("expression", "expected"), RESOURCE_CASES)
def test_resource_library(env: Any, expression: str, expected: Any) -> None:
    with services.use(cluster()):
        assert evaluate(env, expression) == expected


NAMESPACED_CASES = [
    case('resource.Get("v1", "configmaps", "settings").data.mode', "strict", "get-in-policy-namespace"),
    case('resource.Get("v1", "configmaps", "other") == null', True, "other-namespace-invisible"),
    case('resource.List("v1", "configmaps").items.size()', 1, "list-in-policy-namespace"),
    case('resource.list("v1", "configmaps", {"app": "web"}).items.size()', 1, "list-labels"),
    case('resource.List(resource.ToGVR("v1", "ConfigMap")).items.size()', 1, "list-by-gvr"),
    case('resource.Get(resource.ToGVR("v1", "ConfigMap"), "settings").data.mode', "strict", "get-by-gvr"),
]


@pytest.mark.parametrize(("expression", "expected"), NAMESPACED_CASES)
def test_resource_library_in_namespaced_policies(env: Any, expression: str, expected: Any) -> None:
    with services.use(cluster(policy_namespace="team-a")):
        assert evaluate(env, expression) == expected


RESOURCE_ERRORS = [
    case(
        'resource.Get("v1", "configmaps", "team-b", "other")',
        "not available in namespaced policies",
        "ns-arg",
    ),
    case(
        'resource.Post("v1", "configmaps", {"a": 1})',
        "resource.Post is not available offline",
        "post-offline",
    ),
    case('resource.List(object, "x")', "expected a GroupVersionResource", "list-map-not-gvr"),
]


@pytest.mark.parametrize(("expression", "message"), RESOURCE_ERRORS)
def test_resource_errors_in_namespaced_policies(env: Any, expression: str, message: str) -> None:
    with services.use(cluster(policy_namespace="team-a")):
        assert message in error_of(env, expression)


def test_resource_calls_without_namespace_need_a_namespaced_policy(env: Any) -> None:
    with services.use(cluster()):
        assert "only available in namespaced policies" in error_of(env, 'resource.Get("v1", "configmaps", "x")')


def test_resource_calls_without_service(env: Any) -> None:
    message = error_of(env, 'resource.Get("v1", "configmaps", "team-a", "settings")')
    assert "resource lookups are not available in this evaluation" in message


def test_resource_to_gvr_unknown_kind(env: Any) -> None:
    with services.use(services.Services(resources=_NoMapping())):
        assert "failed to map kind to resource" in error_of(env, 'resource.ToGVR("v1", "Pod")')


class _NoMapping:
    """A ResourceLookup that knows no objects and no kind→resource mapping."""

    def get(self, api_version: str, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def list(
        self, api_version: str, resource: str, namespace: str, labels: Mapping[str, str] | None
    ) -> list[dict[str, Any]]:
        return []


def test_resource_lookup_failure_is_wrapped(env: Any) -> None:
    class Failing(_NoMapping):
        def get(self, api_version: str, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
            raise PermissionError("forbidden")

    with services.use(services.Services(resources=Failing())):
        message = error_of(env, 'resource.Get("v1", "secrets", "a", "b")')
    assert "failed to get resource: forbidden" in message


def test_resource_returns_copies(env: Any) -> None:
    with services.use(cluster()):
        first = evaluate(env, 'resource.Get("v1", "configmaps", "team-a", "settings")')
        first["data"]["mode"] = "changed"
        assert evaluate(env, 'resource.Get("v1", "configmaps", "team-a", "settings").data.mode') == "strict"


# --- http -------------------------------------------------------------------------------------------------

HTTP = MockedHttp(
    [
        {"url": "https://example.com/config", "method": "GET", "response": {"body": {"allowed": True}}},
        {
            "url": "https://authz.example.com/validate",
            "method": "POST",
            "response": {"statusCode": 403, "body": {"allowed": False}},
        },
        {"urlPath": "/any", "method": "", "response": {"body": "text"}},
    ]
)

HTTP_CASES = [
    case('http.Get("https://example.com/config")', {"body": {"allowed": True}, "statusCode": 200}, "get"),
    case('http.get("https://example.com/config", {"Authorization": "x"}).body.allowed', True, "get-headers"),
    case('http.Post("https://authz.example.com/validate", {"name": "p"}).statusCode', 403, "post"),
    case('http.post("https://authz.example.com/validate", "x", {"a": "b"}).body.allowed', False, "post-headers"),
    case('http.Put("http://h.example/any?q=1", [1]).body', "text", "urlPath-any-method"),
    case('http.Client("ca-bundle").Get("https://example.com/config").body.allowed', True, "client-get"),
    case('http.client("ca").post("https://authz.example.com/validate", {}).statusCode', 403, "client-post"),
]


@pytest.mark.parametrize(("expression", "expected"), HTTP_CASES)
def test_http_library(env: Any, expression: str, expected: Any) -> None:
    with services.use(services.Services(http=HTTP)):
        assert evaluate(env, expression) == expected


def test_http_unmatched_call_names_method_and_url(env: Any) -> None:
    with services.use(services.Services(http=HTTP)):
        message = error_of(env, 'http.Post("https://example.com/config", {})')
    assert "request failed: no mocked response for POST https://example.com/config" in message


def test_http_denied_in_namespaced_policies(env: Any) -> None:
    with services.use(services.Services(http=HTTP, allow_http=False)):
        assert "http calls are not allowed in namespaced policies" in error_of(env, 'http.Get("https://x")')


def test_http_without_service(env: Any) -> None:
    assert "http calls are not available in this evaluation" in error_of(env, 'http.Get("https://x")')


def test_http_request_receives_method_body_and_headers(env: Any) -> None:
    calls: list[tuple[str, str, Any, Any]] = []

    class Recorder:
        def request(self, method: str, url: str, body: Any, headers: Mapping[str, str] | None) -> Any:
            calls.append((method, url, body, headers))
            return {"ok": True}

    with services.use(services.Services(http=Recorder())):
        evaluate(env, 'http.Post("https://h/x", {"a": [1]}, {"H": "v"})')
    assert calls == [("POST", "https://h/x", {"a": [1]}, {"H": "v"})]


# --- globalContext and image data -------------------------------------------------------------------------


def test_global_context(env: Any) -> None:
    entries = {"deployments": {"count": 3}, projection_key("deployments", "names"): ["a", "b"]}
    with services.use(services.Services(global_context=entries)):
        assert evaluate(env, 'globalContext.Get("deployments").count') == 3
        assert evaluate(env, 'globalContext.get("deployments", "names")') == ["a", "b"]
        assert "'missing' not found" in error_of(env, 'globalContext.Get("missing")')


def test_image_metadata(env: Any) -> None:
    data = {"ghcr.io/app/web:1.0": {"config": {"architecture": "amd64"}}}
    with services.use(services.Services(image_data=data)):
        assert evaluate(env, 'image.GetMetadata("ghcr.io/app/web:1.0").config.architecture') == "amd64"
        assert evaluate(env, 'image.getMetadata("ghcr.io/app/web:1.0").config.architecture') == "amd64"
        assert "no image data for nginx" in error_of(env, 'image.GetMetadata("nginx")')


def test_image_metadata_matches_equivalent_references(env: Any) -> None:
    with services.use(services.Services(image_data={"nginx": {"ok": True}})):
        assert evaluate(env, 'image.GetMetadata("docker.io/library/nginx:latest").ok') is True


# --- offline services -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "plural"),
    [
        pytest.param("Pod", "pods", id="s"),
        pytest.param("Ingress", "ingresses", id="es"),
        pytest.param("NetworkPolicy", "networkpolicies", id="ies"),
        pytest.param("Gateway", "gateways", id="vowel-y"),
    ],
)
def test_plural_of(kind: str, plural: str) -> None:
    assert plural_of(kind) == plural


def test_in_memory_resources_plural_override() -> None:
    def plural_for(api_version: str, kind: str) -> str | None:
        return "endpoints" if kind == "Endpoints" else None

    objects = [{"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "e", "namespace": "n"}}]
    resources = InMemoryResources(objects, plural_for=plural_for)
    assert resources.get("v1", "endpoints", "n", "e") is not None
    assert resources.kind_for("v1", "endpoints") == "Endpoints"
    assert resources.resource_for("v1", "Service") == "services"


def test_in_memory_resources_cluster_scoped() -> None:
    resources = InMemoryResources([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}])
    assert resources.get("v1", "namespaces", "", "prod") == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "prod"},
    }
    assert [o["metadata"]["name"] for o in resources.list("v1", "namespaces", "", None)] == ["prod"]


def test_in_memory_resources_rejects_nameless_objects() -> None:
    with pytest.raises(ValueError, match=r"metadata\.name"):
        InMemoryResources([{"apiVersion": "v1", "kind": "Pod", "metadata": {}}])


def test_mocked_http_rules() -> None:
    http = MockedHttp(
        [
            {"url": "https://a/x", "method": "post", "response": {"body": 1}},
            {"url": "https://a/x", "response": {"statusCode": 500, "body": None}},
        ]
    )
    assert http.request("POST", "https://a/x", {}, None) == {"body": 1, "statusCode": 200}
    assert http.request("GET", "https://a/x", None, None) == {"body": None, "statusCode": 500}
    with pytest.raises(UnmatchedCall, match="GET https://a/y"):
        http.request("GET", "https://a/y", None, None)


def test_mocked_http_needs_url() -> None:
    with pytest.raises(ValueError, match="url or urlPath"):
        MockedHttp([{"method": "GET", "response": {}}])


def test_opaque_values_carry_their_type(env: Any) -> None:
    assert evaluate(env, f'parseImageReference("nginx")["{OPAQUE_TYPE_KEY}"]') == "kyverno.image"
