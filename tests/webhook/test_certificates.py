"""SecretCertificates: the webhook's CA and serving certificate kept in a Secret, the CA injected into caBundles.

Rounds run against `InMemoryCluster` with an injected clock (no sleeping); one round runs through the real
`kubernetes` client against the fake API server.
"""

from __future__ import annotations

import base64
import datetime
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from engine.resources import ResourceType
from tests.webhook.fake_apiserver import FakeApiServer
from webhook.certificates import (
    MUTATING_WEBHOOKS,
    SECRETS,
    VALIDATING_WEBHOOKS,
    CertificateResult,
    CertificateRounds,
    SecretAction,
    SecretCertificates,
    ca_bundle,
)
from webhook.cluster import ApiError, Cluster, InMemoryCluster
from webhook.kubernetes_cluster import KubernetesCluster
from webhook.tls import generate_ca, renewal_reason, service_dns_names

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
NAMESPACE, NAME = "celvern", "celvern-webhook-tls"
DNS_NAMES = service_dns_names("celvern-webhook", "celvern")
DAY = datetime.timedelta(days=1)


# --- the world a round runs in ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime.datetime:
        return self.now


class Scripted:
    """A `Cluster` over an InMemoryCluster that runs `before[(verb, plural)]` once, just before that call: to raise
    an API error, or to let another replica write first."""

    def __init__(self, memory: InMemoryCluster) -> None:
        self.memory = memory
        self.before: dict[tuple[str, str], Callable[[], object]] = {}

    def _hook(self, verb: str, resource: ResourceType) -> None:
        action = self.before.pop((verb, resource.resource), None)
        if action is not None:
            action()

    def get(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        self._hook("get", resource)
        return self.memory.get(resource, namespace, name)

    def create(self, resource: ResourceType, obj: Any) -> dict[str, Any]:
        self._hook("create", resource)
        return self.memory.create(resource, obj)

    def update(self, resource: ResourceType, obj: Any) -> dict[str, Any]:
        self._hook("update", resource)
        return self.memory.update(resource, obj)

    def __getattr__(self, name: str) -> Any:  # list, watch, delete, allowed: unused by SecretCertificates
        return getattr(self.memory, name)


def fail(status: int = 500) -> Callable[[], object]:
    def raise_error() -> object:
        raise ApiError(status, "injected")

    return raise_error


def webhook_configuration(name: str, *webhooks: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": webhook,
                "clientConfig": {"service": {"namespace": "celvern", "name": "celvern-webhook", "path": "/validate"}},
            }
            for webhook in webhooks
        ],
    }


@dataclass
class World:
    memory: InMemoryCluster = field(default_factory=InMemoryCluster)
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.cluster = Scripted(self.memory)
        self.memory.create(VALIDATING_WEBHOOKS, webhook_configuration("celvern", "validate.celvern.io"))
        self.memory.create(MUTATING_WEBHOOKS, webhook_configuration("celvern", "mutate.celvern.io", "more.celvern.io"))

    def certificates(self, cluster: Cluster | None = None, **options: Any) -> SecretCertificates:
        options.setdefault("dns_names", DNS_NAMES)
        options.setdefault("webhook_configurations", ["celvern"])
        return SecretCertificates(
            cluster if cluster is not None else self.cluster,  # type: ignore[arg-type]
            namespace=NAMESPACE,
            name=NAME,
            clock=self.clock,
            **options,
        )

    def secret(self) -> dict[str, Any]:
        found = self.memory.get(SECRETS, NAMESPACE, NAME)
        assert found is not None
        return found

    def pems(self) -> dict[str, bytes]:
        return {key: base64.b64decode(value) for key, value in self.secret()["data"].items()}

    def set_data(self, **values: bytes) -> None:
        secret = self.secret()
        secret["data"].update({key.replace("_", "."): base64.b64encode(v).decode() for key, v in values.items()})
        self.memory.update(SECRETS, secret)

    def bundles(self) -> list[list[x509.Certificate]]:
        """The CAs in the caBundle of every webhook of both configurations."""
        found = []
        for resource in (VALIDATING_WEBHOOKS, MUTATING_WEBHOOKS):
            configuration = self.memory.get(resource, "", "celvern")
            assert configuration is not None
            for webhook in configuration["webhooks"]:
                bundle = base64.b64decode(webhook["clientConfig"].get("caBundle", ""))
                found.append(x509.load_pem_x509_certificates(bundle) if bundle else [])
        return found

    def versions(self) -> dict[str, str]:
        objects = {
            "secret": self.memory.get(SECRETS, NAMESPACE, NAME),
            "validating": self.memory.get(VALIDATING_WEBHOOKS, "", "celvern"),
            "mutating": self.memory.get(MUTATING_WEBHOOKS, "", "celvern"),
        }
        return {key: obj["metadata"]["resourceVersion"] for key, obj in objects.items() if obj is not None}

    def assert_in_place(self, at: datetime.datetime, dns_names: list[str] = DNS_NAMES) -> None:
        """The Secret is good at `at` for `dns_names` and every caBundle starts with its CA."""
        pems = self.pems()
        assert renewal_reason(pems["ca.crt"], pems["ca.key"], pems["tls.crt"], pems["tls.key"], dns_names, at) is None
        ca = x509.load_pem_x509_certificate(pems["ca.crt"])
        assert all(bundle and bundle[0] == ca for bundle in self.bundles())


@pytest.fixture
def world() -> World:
    return World()


def converged_once(world: World) -> CertificateResult:
    result = world.certificates().reconcile()
    assert result.converged, result
    return result


def ca_of(world: World) -> x509.Certificate:
    return x509.load_pem_x509_certificate(world.pems()["ca.crt"])


# --- rounds -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    prepare: Callable[[World], object]
    """Runs before the round under test (after a first converged round unless `fresh`)."""
    secret: SecretAction
    new_ca: bool
    bundle_size: int
    fresh: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def nothing(_: World) -> None:
    pass


def advance(days: float) -> Callable[[World], None]:
    def move(world: World) -> None:
        world.clock.now = NOW + datetime.timedelta(days=days)

    return move


def rotate_then_outlive_the_old_ca(world: World) -> None:
    world.clock.now = NOW + 2500 * DAY  # the CA is due: a new one, the old one stays in the bundles
    result = world.certificates().reconcile()
    assert result.new_ca and all(len(bundle) == 2 for bundle in world.bundles())
    world.clock.now = NOW + 3651 * DAY  # the old CA has expired


CASES = {
    "first round creates the Secret and sets every caBundle": Case(nothing, "created", True, 1, fresh=True),
    "second round writes nothing": Case(nothing, "unchanged", False, 1),
    "serving certificate 242 days old is kept (not due a day ahead)": Case(advance(242), "unchanged", False, 1),
    "serving certificate 243 days old is renewed a day early, CA kept": Case(advance(243), "updated", False, 1),
    "CA due: a new CA, caBundle holds new and previous": Case(advance(2500), "updated", True, 2),
    "expired previous CA is dropped from caBundle": Case(rotate_then_outlive_the_old_ca, "updated", False, 1),
    "corrupt serving certificate is replaced, CA kept": Case(
        lambda w: w.set_data(tls_crt=b"not a certificate"), "updated", False, 1
    ),
    "serving key of another pair is replaced, CA kept": Case(
        lambda w: w.set_data(tls_key=generate_ca(now=NOW)[1]), "updated", False, 1
    ),
    "CA key that does not match means a new CA": Case(
        lambda w: w.set_data(ca_key=generate_ca(now=NOW)[1]), "updated", True, 2
    ),
    "data that is not base64 is replaced": Case(
        lambda w: w.memory.update(SECRETS, {**w.secret(), "data": {**w.secret()["data"], "tls.crt": "%%%"}}),
        "updated",
        False,
        1,
    ),
    "a wanted name the certificate lacks means a new serving certificate": Case(
        nothing, "updated", False, 1, options={"dns_names": [*DNS_NAMES, "celvern.example.com"]}
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_round(world: World, case: Case) -> None:
    if not case.fresh:
        converged_once(world)
    case.prepare(world)
    before = world.versions()
    ca_before = ca_of(world) if "secret" in before else None

    result = world.certificates(**case.options).reconcile()

    assert (result.secret, result.new_ca) == (case.secret, case.new_ca), result
    assert result.converged and not result.errors and not result.missing
    assert (ca_of(world) != ca_before) is case.new_ca
    assert [len(bundle) for bundle in world.bundles()] == [case.bundle_size] * 3
    world.assert_in_place(world.clock.now, case.options.get("dns_names", DNS_NAMES))
    if case.new_ca and ca_before is not None:
        assert all(bundle[1] == ca_before for bundle in world.bundles()), "the previous CA stays trusted"
    if case.secret == "unchanged":
        assert world.versions() == before
    # And the round after writes nothing.
    after = world.versions()
    again = world.certificates(**case.options).reconcile()
    assert (again.secret, set(again.webhook_configurations.values())) == ("unchanged", {"unchanged"})
    assert world.versions() == after


def test_created_secret_is_a_tls_secret(world: World) -> None:
    converged_once(world)
    secret = world.secret()
    assert secret["type"] == "kubernetes.io/tls"
    assert sorted(secret["data"]) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    certificate = x509.load_pem_x509_certificate(world.pems()["tls.crt"])
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "celvern-webhook.celvern.svc" in sans.get_values_for_type(x509.DNSName)


def test_a_hand_made_opaque_secret_keeps_its_type_and_extra_keys(world: World) -> None:
    world.memory.create(
        SECRETS,
        {
            "metadata": {"namespace": NAMESPACE, "name": NAME},
            "type": "Opaque",
            "data": {"note": base64.b64encode(b"made by hand").decode()},
        },
    )
    result = world.certificates().reconcile()
    assert result.secret == "updated" and result.converged
    assert world.secret()["type"] == "Opaque"  # the type of a Secret is immutable
    assert world.pems()["note"] == b"made by hand"
    world.assert_in_place(NOW)


# --- races, faults, missing configurations ----------------------------------------------------------------------


def corrupt(world: World) -> None:
    world.set_data(tls_crt=b"garbage")


RACES = {
    "another replica creates the Secret first": ("create", nothing),
    "another replica repairs the Secret first": ("update", corrupt),
}


@pytest.mark.parametrize(("verb", "prepare"), RACES.values(), ids=RACES.keys())
def test_losing_a_race_never_overwrites_and_the_next_round_converges(
    world: World, verb: str, prepare: Callable[[World], object]
) -> None:
    if verb == "update":
        converged_once(world)
    prepare(world)
    other = world.certificates(cluster=world.memory)  # the other replica talks to the same cluster
    world.cluster.before[(verb, "secrets")] = other.reconcile

    result = world.certificates().reconcile()

    assert result.secret == "conflict" and not result.converged
    assert result.webhook_configurations == {}  # the CA to inject is the winner's: read it next round
    winner = world.versions()
    world.assert_in_place(NOW)  # what the other replica wrote, untouched
    again = world.certificates().reconcile()
    assert again.secret == "unchanged" and again.converged
    assert world.versions() == winner


def test_missing_webhook_configuration_is_reported(world: World) -> None:
    world.memory.delete(MUTATING_WEBHOOKS, "", "celvern")  # "celvern" is still a validating configuration
    result = world.certificates(webhook_configurations=["celvern", "absent"]).reconcile()
    assert result.secret == "created"
    assert result.webhook_configurations == {"ValidatingWebhookConfiguration/celvern": "updated"}
    assert result.missing == ["absent"] and not result.errors
    assert not result.converged  # retried soon: an install may still be creating it


FAULTS = {
    "reading the Secret fails": (("get", "secrets", 500), "error", {}),
    "creating the Secret is forbidden": (("create", "secrets", 403), "error", {}),
    "reading a webhook configuration fails": (
        ("get", "validatingwebhookconfigurations", 503),
        "created",
        {"ValidatingWebhookConfiguration/celvern": "error", "MutatingWebhookConfiguration/celvern": "updated"},
    ),
    "updating a webhook configuration times out": (
        ("update", "mutatingwebhookconfigurations", 0),
        "created",
        {"ValidatingWebhookConfiguration/celvern": "updated", "MutatingWebhookConfiguration/celvern": "error"},
    ),
}


@pytest.mark.parametrize(("call", "secret", "configurations"), FAULTS.values(), ids=FAULTS.keys())
def test_api_errors_are_reported_not_raised(
    world: World, call: tuple[str, str, int], secret: SecretAction, configurations: dict[str, str]
) -> None:
    verb, plural, status = call
    world.cluster.before[(verb, plural)] = fail(status)
    result = world.certificates().reconcile()
    assert result.secret == secret
    assert result.webhook_configurations == configurations
    assert len(result.errors) == 1 and "injected" in result.errors[0]
    assert not result.converged
    again = world.certificates().reconcile()
    assert again.converged
    world.assert_in_place(NOW)


def test_an_error_writing_a_due_secret_keeps_the_old_one(world: World) -> None:
    converged_once(world)
    before = world.versions()
    world.clock.now = NOW + 300 * DAY
    world.cluster.before[("update", "secrets")] = fail(500)
    result = world.certificates().reconcile()
    assert (result.secret, result.reason) == ("error", "serving certificate due for renewal")
    assert world.versions() == before
    assert world.certificates().reconcile().secret == "updated"


# --- the caBundle rule ----------------------------------------------------------------------------------------------


def pem_bundle(*cas: tuple[bytes, bytes]) -> bytes:
    return b"".join(ca[0] for ca in cas)


OLD = generate_ca("old", days=100, now=NOW)
OLDER = generate_ca("older", days=100, now=NOW)
CURRENT = generate_ca("current", now=NOW)

GARBAGE = b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"
BUNDLES = {
    "empty bundle": ([b""], NOW, 2, [CURRENT]),
    "current CA already first": ([pem_bundle(CURRENT)], NOW, 2, [CURRENT]),
    "previous CA kept after the current": ([pem_bundle(OLD)], NOW, 2, [CURRENT, OLD]),
    "current CA moved first": ([pem_bundle(OLD, CURRENT)], NOW, 2, [CURRENT, OLD]),
    "duplicates once": ([pem_bundle(OLD, CURRENT, OLD)], NOW, 2, [CURRENT, OLD]),
    "previous CAs in order of the bundles": ([pem_bundle(OLD), pem_bundle(OLDER)], NOW, 2, [CURRENT, OLD, OLDER]),
    "expired CA dropped": ([pem_bundle(OLD)], NOW + 101 * DAY, 2, [CURRENT]),
    "garbage replaced": ([GARBAGE], NOW, 2, [CURRENT]),
    "at most keep_previous older CAs": ([pem_bundle(OLD), pem_bundle(OLDER)], NOW, 1, [CURRENT, OLD]),
}


@pytest.mark.parametrize(("previous", "at", "keep", "wanted"), BUNDLES.values(), ids=BUNDLES.keys())
def test_ca_bundle(previous: list[bytes], at: datetime.datetime, keep: int, wanted: list[tuple[bytes, bytes]]) -> None:
    bundle = ca_bundle(CURRENT[0], previous, at, keep_previous=keep)
    assert x509.load_pem_x509_certificates(bundle) == [x509.load_pem_x509_certificate(ca[0]) for ca in wanted]


# --- scheduling ---------------------------------------------------------------------------------------------------


class Recorder:
    """A reconciler that returns scripted results (or raises) and counts its rounds."""

    def __init__(self, *outcomes: CertificateResult | Exception) -> None:
        self.outcomes = list(outcomes)
        self.rounds = 0

    def reconcile(self) -> CertificateResult:
        self.rounds += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_rounds_run_at_a_new_term_then_every_interval_and_sooner_after_failures() -> None:
    now = [0.0]
    good, bad = CertificateResult(secret="unchanged"), CertificateResult(secret="error", errors=["boom"])
    recorder = Recorder(good, bad, RuntimeError("bug"), good, good)
    rounds = CertificateRounds(recorder, interval=600, retry=15, clock=lambda: now[0])

    def tick(new_term: bool = False) -> bool:
        started = rounds.tick(new_term=new_term)
        rounds.join(timeout=10)
        return started

    assert tick() and recorder.rounds == 1  # the first tick of a term runs a round
    now[0] = 599.0
    assert not tick()
    now[0] = 600.0
    assert tick() and rounds.last is bad  # an error: retry after 15 s, not 600
    now[0] = 615.0
    assert tick() and rounds.last is None  # a bug is logged, the timer survives and retries soon
    now[0] = 630.0
    assert tick() and rounds.last is good
    assert tick(new_term=True)  # a new leader term checks at once
    assert recorder.rounds == 5


def test_a_running_round_is_not_started_twice() -> None:
    entered, release = threading.Event(), threading.Event()

    class Slow:
        def reconcile(self) -> CertificateResult:
            entered.set()
            release.wait(10)
            return CertificateResult(secret="unchanged")

    rounds = CertificateRounds(Slow(), interval=600)
    assert rounds.tick(new_term=True)
    assert entered.wait(10)
    assert not rounds.tick(new_term=True)
    release.set()
    rounds.join(timeout=10)


# --- through the real client ----------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as fake:
        fake.cluster.create(VALIDATING_WEBHOOKS, webhook_configuration("celvern", "validate.celvern.io"))
        fake.cluster.create(MUTATING_WEBHOOKS, webhook_configuration("celvern", "mutate.celvern.io"))
        yield fake


def test_rounds_through_the_kubernetes_client(server: FakeApiServer, tmp_path: Path) -> None:
    with KubernetesCluster.from_kubeconfig(server.write_kubeconfig(tmp_path), timeout=5) as kube:
        certificates = SecretCertificates(
            kube, namespace=NAMESPACE, name=NAME, dns_names=DNS_NAMES, webhook_configurations=["celvern"]
        )
        first = certificates.reconcile()
        assert (first.secret, first.converged) == ("created", True)
        assert set(first.webhook_configurations.values()) == {"updated"}
        writes = len(server.requests)
        second = certificates.reconcile()
    assert (second.secret, set(second.webhook_configurations.values())) == ("unchanged", {"unchanged"})
    assert [method for method, _, _ in server.requests[writes:]] == ["GET", "GET", "GET"]
    memory = server.cluster
    secret = memory.get(SECRETS, NAMESPACE, NAME)
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    ca = base64.b64decode(secret["data"]["ca.crt"])
    for resource in (VALIDATING_WEBHOOKS, MUTATING_WEBHOOKS):
        configuration = memory.get(resource, "", "celvern")
        assert configuration is not None
        assert base64.b64decode(configuration["webhooks"][0]["clientConfig"]["caBundle"]) == ca
