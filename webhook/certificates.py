"""The webhook's TLS material kept in a Kubernetes Secret, and its CA injected into the webhook configurations.

Why this module exists: every webhook replica must present a certificate that the `caBundle` of the webhook
configurations trusts, so the certificate cannot be generated per pod. As in Kyverno, one place owns it: the
leader-elected controller (`celvern controller --tls-secret`) runs `SecretCertificates.reconcile` at the start of its
term and then periodically (`CertificateRounds`). A round

1. reads the Secret (type kubernetes.io/tls; keys ca.crt, ca.key, tls.crt, tls.key) and judges it with the same rules
   as a certificate directory (`webhook.tls.renewal_reason`), looking `renew_ahead` into the future so that the
   webhook replicas, which mount the Secret read-only and apply those rules at the present time, never find it due.
   When it is missing, unusable, due or does not cover the wanted DNS names, a new serving certificate is issued,
   signed by the stored CA while that is usable (a new CA only when it is not, logged loudly), and the Secret is
   created or updated. Updates carry the resourceVersion that was read: a Conflict means another replica wrote first,
   and the next round reads its result instead of overwriting it. A good Secret is never written (no churn).
2. makes the `caBundle` of every webhook of the named Validating/MutatingWebhookConfigurations hold the CA first,
   followed by the CAs it already held (and, right after a rotation, the previous CA of the Secret) while they have
   not expired, at most `keep_previous` of them: serving certificates of the old CA that replicas still present
   (the kubelet refreshes mounted Secrets after a delay) keep verifying. Nothing is written when the bundle is right.

Every API failure is caught and reported in the `CertificateResult` (and logged); a round never raises `ApiError`.
All Kubernetes access goes through the `webhook.cluster.Cluster` seam.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from engine.resources import ResourceType
from webhook.cluster import ApiError, Cluster, Conflict
from webhook.tls import CA_DAYS, SERVING_DAYS, issue, renewal_reason

log = logging.getLogger("celvern.certificates")

SECRETS = ResourceType("", "v1", "Secret", "secrets", True)
VALIDATING_WEBHOOKS = ResourceType(
    "admissionregistration.k8s.io",
    "v1",
    "ValidatingWebhookConfiguration",
    "validatingwebhookconfigurations",
    False,
)
MUTATING_WEBHOOKS = ResourceType(
    "admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", False
)
WEBHOOK_KINDS = (VALIDATING_WEBHOOKS, MUTATING_WEBHOOKS)

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
SECRET_TYPE = "kubernetes.io/tls"
RENEW_AHEAD = datetime.timedelta(days=1)
"""The controller renews this much earlier than the replicas' own check would find the certificates due."""
KEEP_PREVIOUS_CAS = 2
"""Older, unexpired CAs kept in a caBundle after the current one (bounds the bundle if the Secret keeps vanishing)."""
RETRY_SECONDS = 15.0
"""Seconds before the next round when one did not converge (API errors, conflicts, missing configurations)."""

SecretAction = Literal["unchanged", "created", "updated", "conflict", "error"]
BundleAction = Literal["unchanged", "updated", "conflict", "error"]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class CertificateResult:
    """What one round did. `webhook_configurations` maps "Kind/name" of each configuration found to its outcome;
    `missing` names the configurations found as neither kind; `errors` holds every API failure."""

    secret: SecretAction
    reason: str = ""
    """Why a certificate was issued ("" when the Secret was good)."""
    new_ca: bool = False
    webhook_configurations: dict[str, BundleAction] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """Whether the Secret and every named configuration are now as wanted (nothing to retry soon)."""
        return (
            self.secret in ("unchanged", "created", "updated")
            and not self.errors
            and not self.missing
            and all(action in ("unchanged", "updated") for action in self.webhook_configurations.values())
        )


def ca_bundle(
    ca_pem: bytes, previous: Iterable[bytes], now: datetime.datetime, *, keep_previous: int = KEEP_PREVIOUS_CAS
) -> bytes:
    """The caBundle to want: `ca_pem` first, then the distinct certificates of the `previous` PEM bundles (in order)
    that have not expired at `now`, at most `keep_previous` of them. Unparseable bundles contribute nothing."""
    current = x509.load_pem_x509_certificate(ca_pem)
    seen = {current.fingerprint(hashes.SHA256())}
    kept: list[x509.Certificate] = []
    for bundle in previous:
        for certificate in _certificates(bundle):
            fingerprint = certificate.fingerprint(hashes.SHA256())
            if fingerprint in seen or certificate.not_valid_after_utc <= now:
                continue
            seen.add(fingerprint)
            kept.append(certificate)
    chosen = [current, *kept[: max(keep_previous, 0)]]
    return b"".join(certificate.public_bytes(serialization.Encoding.PEM) for certificate in chosen)


def _certificates(bundle: bytes) -> list[x509.Certificate]:
    if not bundle.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return []


def _decode(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""  # present but corrupt: unparseable, so the material is re-issued


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class SecretCertificates:
    """Keeps Secret `namespace/name` holding a CA and a serving certificate for `dns_names`, and the caBundle of
    the webhook configurations named `webhook_configurations` (each looked up as validating and as mutating)
    holding that CA. Call `reconcile()` from one place at a time (the leader); see the module docstring."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        namespace: str,
        name: str,
        dns_names: Sequence[str],
        webhook_configurations: Sequence[str] = (),
        ca_common_name: str = "celvern-ca",
        ca_days: int = CA_DAYS,
        serving_days: int = SERVING_DAYS,
        renew_ahead: datetime.timedelta = RENEW_AHEAD,
        keep_previous: int = KEEP_PREVIOUS_CAS,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        if not dns_names:
            raise ValueError("the serving certificate needs at least one DNS name")
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.dns_names = list(dns_names)
        self.webhook_configurations = list(dict.fromkeys(webhook_configurations))
        self.ca_common_name = ca_common_name
        self.ca_days = ca_days
        self.serving_days = serving_days
        self.renew_ahead = renew_ahead
        self.keep_previous = keep_previous
        self.clock = clock

    @property
    def secret_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    def reconcile(self) -> CertificateResult:
        """One round: make the Secret good, then the caBundles; API failures are reported, never raised."""
        result = CertificateResult(secret="unchanged")
        cas = self._reconcile_secret(result)
        if cas is not None:
            self._inject(cas[0], cas[1], result)
        if result.converged:
            log.debug("certificates in place", extra={"secret": self.secret_name})
        return result

    # --- the Secret ----------------------------------------------------------------------------------------------

    def _reconcile_secret(self, result: CertificateResult) -> tuple[bytes, list[bytes]] | None:
        """(the CA now in the Secret, earlier CAs the bundles should keep), or None when the Secret is not known
        to be good after this round (read or write failed, another replica won a race)."""
        try:
            current = self.cluster.get(SECRETS, self.namespace, self.name)
        except ApiError as error:
            self._failed(result, f"get secret {self.secret_name}: {error}")
            return None
        now = self.clock()
        data = (current or {}).get("data")
        stored = {key: _decode(value) for key, value in (data.items() if isinstance(data, Mapping) else ())}
        ca_pem, ca_key, cert_pem, key_pem = (stored.get(key) for key in (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY))
        ahead = now + self.renew_ahead
        reason = renewal_reason(ca_pem, ca_key, cert_pem, key_pem, self.dns_names, ahead)
        if reason is None:
            assert ca_pem is not None  # renewal_reason found every part
            return ca_pem, []
        issued = issue(
            (ca_pem, ca_key) if ca_pem is not None and ca_key is not None else None,
            self.dns_names,
            now=now,
            ca_valid_at=ahead,
            ca_common_name=self.ca_common_name,
            ca_days=self.ca_days,
            serving_days=self.serving_days,
        )
        result.reason, result.new_ca = reason, issued.new_ca
        if issued.new_ca and ca_pem:
            log.warning(
                "rotating the webhook CA: the caBundle of the webhook configurations keeps the previous CA until it "
                "expires",
                extra={"secret": self.secret_name, "reason": reason},
            )
        elif issued.new_ca:
            log.info("creating the webhook CA", extra={"secret": self.secret_name})
        wanted = {
            CA_CERT: _encode(issued.ca[0]),
            CA_KEY: _encode(issued.ca[1]),
            TLS_CERT: _encode(issued.serving[0]),
            TLS_KEY: _encode(issued.serving[1]),
        }
        try:
            if current is None:
                self.cluster.create(SECRETS, self._new_secret(wanted))
                result.secret = "created"
            else:
                updated = copy.deepcopy(current)  # keeps metadata.resourceVersion: optimistic concurrency
                updated["data"] = {**(data if isinstance(data, Mapping) else {}), **wanted}
                self.cluster.update(SECRETS, updated)  # the type is immutable: an Opaque Secret stays Opaque
                result.secret = "updated"
        except Conflict as error:
            result.secret = "conflict"
            log.info(
                "another writer changed the certificate Secret first; reading it again next round",
                extra={"secret": self.secret_name, "error": str(error)},
            )
            return None
        except ApiError as error:
            self._failed(result, f"write secret {self.secret_name}: {error}")
            return None
        log.info(
            "serving certificate issued",
            extra={"secret": self.secret_name, "reason": reason, "dns_names": self.dns_names, "new_ca": issued.new_ca},
        )
        return issued.ca[0], [ca_pem] if issued.new_ca and ca_pem else []

    def _new_secret(self, data: Mapping[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "celvern", "app.kubernetes.io/part-of": "celvern"},
            },
            "type": SECRET_TYPE,
            "data": dict(data),
        }

    @staticmethod
    def _failed(result: CertificateResult, message: str) -> None:
        result.secret = "error"
        result.errors.append(message)
        log.warning("certificate Secret not reconciled", extra={"error": message})

    # --- the webhook configurations ------------------------------------------------------------------------------

    def _inject(self, ca_pem: bytes, previous: list[bytes], result: CertificateResult) -> None:
        now = self.clock()
        for name in self.webhook_configurations:
            found = False
            for resource in WEBHOOK_KINDS:
                key = f"{resource.kind}/{name}"
                try:
                    configuration = self.cluster.get(resource, "", name)
                except ApiError as error:
                    found = True  # unknown: not reported as missing
                    self._bundle_failed(result, key, f"get {key}: {error}")
                    continue
                if configuration is None:
                    continue
                found = True
                if not self._set_bundles(configuration, ca_pem, previous, now):
                    result.webhook_configurations[key] = "unchanged"
                    continue
                try:
                    self.cluster.update(resource, configuration)
                except Conflict:
                    result.webhook_configurations[key] = "conflict"
                    log.info("webhook configuration changed meanwhile; retrying soon", extra={"configuration": key})
                    continue
                except ApiError as error:
                    self._bundle_failed(result, key, f"update {key}: {error}")
                    continue
                result.webhook_configurations[key] = "updated"
                log.info("caBundle updated", extra={"configuration": key})
            if not found:
                result.missing.append(name)
                log.warning(
                    "webhook configuration not found (neither validating nor mutating): its caBundle cannot be set",
                    extra={"configuration": name},
                )

    def _set_bundles(
        self, configuration: dict[str, Any], ca_pem: bytes, previous: list[bytes], now: datetime.datetime
    ) -> bool:
        """Set the wanted caBundle on every webhook of `configuration` in place; True when anything changed."""
        changed = False
        webhooks = configuration.get("webhooks")
        for webhook in webhooks if isinstance(webhooks, list) else []:
            if not isinstance(webhook, dict):
                continue
            client_config = webhook.get("clientConfig")
            if not isinstance(client_config, dict):
                client_config = webhook["clientConfig"] = {}
            existing = _decode(client_config.get("caBundle")) or b""
            wanted = ca_bundle(ca_pem, [*previous, existing], now, keep_previous=self.keep_previous)
            if existing != wanted:
                client_config["caBundle"] = _encode(wanted)
                changed = True
        return changed

    @staticmethod
    def _bundle_failed(result: CertificateResult, key: str, message: str) -> None:
        result.webhook_configurations[key] = "error"
        result.errors.append(message)
        log.warning("caBundle not reconciled", extra={"error": message})


class Reconciler(Protocol):
    def reconcile(self) -> CertificateResult: ...


class CertificateRounds:
    """Runs `reconcile()` of a `SecretCertificates` for the leader: at the start of each term, then every
    `interval` seconds, or after `retry` seconds when a round did not converge.

    Each round runs in a short-lived daemon thread, one at a time, so that a slow API server delays the next round
    instead of the caller's loop (which must keep renewing its Lease). `tick` is cheap: call it on every pass.
    """

    def __init__(
        self,
        certificates: Reconciler,
        *,
        interval: float,
        retry: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.certificates = certificates
        self.interval = interval
        self.retry = min(retry, interval)
        self.last: CertificateResult | None = None
        self._clock = clock
        self._next: float | None = None
        self._thread: threading.Thread | None = None

    def tick(self, *, new_term: bool = False) -> bool:
        """Start a round when one is due (always at a new term) and none is running; True when one started."""
        if self._thread is not None and self._thread.is_alive():
            return False
        if not new_term and self._next is not None and self._clock() < self._next:
            return False
        self._thread = threading.Thread(target=self._round, name="celvern-certificates", daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running round (at shutdown, before the Lease is released)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _round(self) -> None:
        result: CertificateResult | None = None
        try:
            result = self.certificates.reconcile()
        except Exception:  # a bug must not end the controller: the current certificates stay in use
            log.exception("certificate round failed")
        self.last = result
        converged = result is not None and result.converged
        self._next = self._clock() + (self.interval if converged else self.retry)
