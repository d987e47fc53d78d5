"""TLS for the admission server: a self-signed CA, a serving certificate for the Service, and live renewal.

Why this module exists: the API server only calls webhooks over HTTPS, verifying the serving certificate against
the `caBundle` of the webhook configuration and the Service's DNS name. Out of the box celvern creates that chain
itself (`cryptography`, ECDSA P-256): a long-lived CA (its certificate is the caBundle) and a shorter-lived serving
certificate with SANs for `name`, `name.namespace`, `name.namespace.svc` and `name.namespace.svc.cluster.local`,
stored as `ca.crt`/`ca.key`/`tls.crt`/`tls.key` (the names of a kubernetes.io/tls Secret) in a directory.

Renewal must not drop connections: the server keeps one `ssl.SSLContext` for its whole life, and a renewal writes
new files and calls `load_cert_chain` on that same context again. OpenSSL copies the certificate into each
connection when it is created, so new handshakes get the new certificate and established connections are untouched.
Loading goes through a private temporary file holding the key and certificate together, after checking that they
belong to each other: a half-written pair (new certificate, old key) is skipped instead of breaking the context.

Contexts accept TLS 1.2 and 1.3 only; TLS 1.2 is limited to ECDHE key exchange with AES-GCM or ChaCha20-Poly1305
(TLS 1.3 suites are all AEAD).

The rules that decide whether stored material is still good (`renewal_reason`: a matching pair, a usable CA that
issued the serving certificate, SANs covering the wanted names, more than `RENEW_FRACTION` of each lifetime left)
and the issuing itself (`issue`: keep a usable CA, otherwise create one) are pure functions over PEM bytes, shared
by `CertificateStore` (a directory) and `webhook.certificates.SecretCertificates` (a Secret that the controller
owns and the webhook replicas mount read-only); file changes are picked up by `CertificateFiles.reload`.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("celvern.tls")

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""OpenSSL cipher string for TLS 1.2: forward secrecy and AEAD only (TLS 1.3 suites are configured separately)."""

CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_FRACTION = 1 / 3
"""Renew when less than this fraction of a certificate's lifetime is left."""
_BACKDATE = datetime.timedelta(minutes=5)
"""Certificates start slightly in the past, to tolerate clock skew between celvern and the API server."""

PemPair = tuple[bytes, bytes]
"""(certificate PEM, private key PEM)."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def service_dns_names(name: str, namespace: str, extra: Iterable[str] = ()) -> list[str]:
    """The DNS names a Service is reached by, plus `extra` (further names or IP addresses), without duplicates.

    `localhost` and `127.0.0.1` are always included: probes and local runs (`celvern serve` on a laptop) reach the
    server that way, and a name only the pod itself can use grants nothing to anyone else."""
    names = [
        name,
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        *extra,
    ]
    return list(dict.fromkeys(names))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate_ca(
    common_name: str = "celvern-ca", *, days: int = CA_DAYS, now: datetime.datetime | None = None
) -> PemPair:
    """A self-signed CA certificate (pathlen 0: it signs serving certificates only) and its key."""
    now = now or _utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Digital signatures only, plus certificate and CRL signing for the CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def generate_serving(
    ca: PemPair, dns_names: Sequence[str], *, days: int = SERVING_DAYS, now: datetime.datetime | None = None
) -> PemPair:
    """A serving certificate signed by `ca` for `dns_names` (entries that are IP addresses become IP SANs)."""
    if not dns_names:
        raise ValueError("a serving certificate needs at least one DNS name")
    now = now or _utcnow()
    ca_certificate = x509.load_pem_x509_certificate(ca[0])
    ca_key = serialization.load_pem_private_key(ca[1], password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the CA key must be an ECDSA or RSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_certificate.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_san(name) for name in dns_names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def server_context() -> ssl.SSLContext:
    """A server-side context with TLS 1.2 minimum and no weak ciphers (no certificate loaded yet)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    return context


def pair_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the PEM certificate and PEM private key belong together (False when either cannot be parsed)."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return False
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    return certificate.public_key().public_bytes(encoding, public) == key.public_key().public_bytes(encoding, public)


def due(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    """Whether less than `RENEW_FRACTION` of the certificate's lifetime is left at `now` (expired included)."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return end - now < (end - start) * RENEW_FRACTION


def usable_ca(ca_pem: bytes | None, ca_key_pem: bytes | None, now: datetime.datetime) -> PemPair | None:
    """The CA pair when it can go on signing at `now`: parseable, matching, a CA, an ECDSA or RSA key, not due."""
    if ca_pem is None or ca_key_pem is None or not pair_matches(ca_pem, ca_key_pem):
        return None
    try:
        certificate = x509.load_pem_x509_certificate(ca_pem)
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound):
        return None
    if not is_ca or not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) or due(certificate, now):
        return None
    return ca_pem, ca_key_pem


def renewal_reason(
    ca_pem: bytes | None,
    ca_key_pem: bytes | None,
    cert_pem: bytes | None,
    key_pem: bytes | None,
    dns_names: Sequence[str],
    now: datetime.datetime,
) -> str | None:
    """Why the stored material must be (re)issued at `now`, or None when it is good as it is.

    Missing or unparseable parts, a serving key that does not match its certificate, a CA that cannot sign
    (see `usable_ca`) or is due, a serving certificate that is due, was not issued by the CA, or does not cover
    every name in `dns_names` (entries that are IP addresses are IP SANs).
    """
    if ca_pem is None or ca_key_pem is None or cert_pem is None or key_pem is None:
        return "missing"
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        serving = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "unparseable certificate"
    if not pair_matches(cert_pem, key_pem):
        return "serving key does not match its certificate"
    if usable_ca(ca_pem, ca_key_pem, now) is None:
        return "CA due for renewal" if pair_matches(ca_pem, ca_key_pem) and due(ca, now) else "CA unusable"
    if due(serving, now):
        return "serving certificate due for renewal"
    try:
        serving.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "serving certificate not issued by the CA"
    try:
        covered = set(serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return "serving certificate has no SANs"
    if not {_san(name) for name in dns_names} <= covered:
        return "serving certificate does not cover the wanted names"
    return None


@dataclass(frozen=True, slots=True)
class Issued:
    """What `issue` produced: the CA (kept or new) and a serving certificate it signed."""

    ca: PemPair
    serving: PemPair
    new_ca: bool


def issue(
    ca: PemPair | None,
    dns_names: Sequence[str],
    *,
    now: datetime.datetime,
    ca_common_name: str = "celvern-ca",
    ca_days: int = CA_DAYS,
    serving_days: int = SERVING_DAYS,
    ca_valid_at: datetime.datetime | None = None,
) -> Issued:
    """A new serving certificate for `dns_names`, signed by `ca` when it is usable at `ca_valid_at` (default
    `now`), otherwise by a new CA (changing the CA means updating every caBundle: callers log it loudly)."""
    kept = usable_ca(ca[0], ca[1], ca_valid_at or now) if ca is not None else None
    signer = kept if kept is not None else generate_ca(ca_common_name, days=ca_days, now=now)
    serving = generate_serving(signer, dns_names, days=serving_days, now=now)
    return Issued(signer, serving, new_ca=kept is None)


def load_pair(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and key into `context` (in place: new handshakes use it). ValueError on mismatch."""
    if not pair_matches(cert_pem, key_pem):
        raise ValueError("the certificate and the private key do not belong together")
    descriptor, path = tempfile.mkstemp(prefix="celvern-tls-", suffix=".pem")  # created 0600
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key_pem.rstrip() + b"\n" + cert_pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class CertificateFiles:
    """A serving certificate and key in files, loaded into one long-lived `ssl.SSLContext`.

    `reload()` loads the files again when their content changed (e.g. cert-manager rotated a mounted Secret, or a
    `CertificateStore` renewed them); call it from the thread that runs the TLS server's event loop when possible,
    so that no handshake runs while the context changes.
    """

    def __init__(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self._context: ssl.SSLContext | None = None
        self._loaded: str | None = None
        self._context_lock = threading.Lock()

    def _read(self) -> tuple[bytes, bytes, str]:
        cert_pem, key_pem = self.cert_path.read_bytes(), self.key_path.read_bytes()
        return cert_pem, key_pem, hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest()

    def ssl_context(self) -> ssl.SSLContext:
        """The one shared context, created (and loaded with the current files) on first use."""
        with self._context_lock:
            if self._context is None:
                context = server_context()
                cert_pem, key_pem, fingerprint = self._read()
                load_pair(context, cert_pem, key_pem)
                self._context, self._loaded = context, fingerprint
            return self._context

    def reload(self) -> bool:
        """Load the files into the shared context if they changed; True when new handshakes now use new files.

        A pair that cannot be read or does not match (a renewal half written) is skipped and retried next time.
        """
        with self._context_lock:
            if self._context is None:
                return False
            try:
                cert_pem, key_pem, fingerprint = self._read()
                if fingerprint == self._loaded:
                    return False
                load_pair(self._context, cert_pem, key_pem)
            except (OSError, ValueError, ssl.SSLError) as error:
                log.warning("cannot reload the serving certificate yet", extra={"error": str(error)})
                return False
            self._loaded = fingerprint
        log.info("serving certificate reloaded", extra={"certificate": str(self.cert_path)})
        return True


class CertificateStore(CertificateFiles):
    """A self-signed CA and serving certificate in `directory`, created when missing and renewed before expiry.

    Files: `ca.crt` (the webhook configurations' caBundle), `ca.key`, `tls.crt`, `tls.key`; keys are written 0600.
    The serving certificate is renewed when less than a third of its lifetime is left, when it does not cover the
    wanted DNS names, or when it was not issued by the stored CA. The CA is kept (changing it means updating every
    caBundle) unless it is itself due for renewal, which is logged loudly.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        dns_names: Sequence[str] = ("localhost",),
        ca_common_name: str = "celvern-ca",
        ca_days: int = CA_DAYS,
        serving_days: int = SERVING_DAYS,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        self.directory = Path(directory)
        super().__init__(self.directory / "tls.crt", self.directory / "tls.key")
        self.ca_cert_path = self.directory / "ca.crt"
        self.ca_key_path = self.directory / "ca.key"
        self.dns_names = list(dns_names)
        self.ca_common_name = ca_common_name
        self.ca_days = ca_days
        self.serving_days = serving_days
        self.clock = clock
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- files -----------------------------------------------------------------------------------------------------

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate (the caBundle for webhook configurations)."""
        return self.ca_cert_path.read_bytes()

    def ensure(self) -> bool:
        """Create or renew whatever is missing or due; True when files were written."""
        with self._write_lock:
            if not self.needs_renewal(self.clock()):
                return False
            self._renew()
            return True

    def needs_renewal(self, now: datetime.datetime) -> bool:
        """Whether the serving certificate (or the CA) is missing, unusable, or has less than 1/3 of its life left
        (the rules of `renewal_reason`)."""
        return (
            renewal_reason(
                _read_or_none(self.ca_cert_path),
                _read_or_none(self.ca_key_path),
                _read_or_none(self.cert_path),
                _read_or_none(self.key_path),
                self.dns_names,
                now,
            )
            is not None
        )

    def renew(self) -> None:
        """Issue a new serving certificate now (and a new CA when the current one is missing or due)."""
        with self._write_lock:
            self._renew()

    def _renew(self) -> None:
        now = self.clock()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca_pem, ca_key = _read_or_none(self.ca_cert_path), _read_or_none(self.ca_key_path)
        issued = issue(
            (ca_pem, ca_key) if ca_pem is not None and ca_key is not None else None,
            self.dns_names,
            now=now,
            ca_common_name=self.ca_common_name,
            ca_days=self.ca_days,
            serving_days=self.serving_days,
        )
        if issued.new_ca:
            if ca_pem is not None:
                log.warning(
                    "creating a new CA: update the caBundle of the webhook configurations",
                    extra={"ca": str(self.ca_cert_path)},
                )
            _write_atomic(self.ca_key_path, issued.ca[1], 0o600)
            _write_atomic(self.ca_cert_path, issued.ca[0], 0o644)
        cert_pem, key_pem = issued.serving
        # Key first: a reader between the two writes sees a mismatched pair and skips it (see `reload`).
        _write_atomic(self.key_path, key_pem, 0o600)
        _write_atomic(self.cert_path, cert_pem, 0o644)
        log.info("serving certificate issued", extra={"certificate": str(self.cert_path), "dns_names": self.dns_names})

    def ssl_context(self) -> ssl.SSLContext:
        """The shared context; the files are created first if they are missing or due (renewals happen through
        `ensure`/`renew` and `reload`, or the `start` timer)."""
        if self._context is None:
            self.ensure()
        return super().ssl_context()

    # --- background renewal ----------------------------------------------------------------------------------------

    def start(self, interval: float = 3600.0, *, on_renewed: Callable[[], object] | None = None) -> None:
        """Check every `interval` seconds in a daemon thread; renew when due, then call `on_renewed`.

        By default `on_renewed` reloads the shared context from this thread (new handshakes get the new
        certificate; open connections keep theirs). A server whose event loop runs elsewhere can pass a callable
        that schedules `reload` on that loop, or a no-op when its workers watch the files themselves.
        """
        if self._thread is not None:
            return
        callback = self.reload if on_renewed is None else on_renewed
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    if self.ensure():
                        callback()
                except Exception:  # keep the timer alive; the current certificate stays in use
                    log.exception("certificate renewal failed")

        self._thread = threading.Thread(target=run, name="celvern-tls-renewal", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
