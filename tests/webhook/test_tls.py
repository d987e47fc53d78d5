"""Certificates: SANs, CA signature, TLS 1.2 minimum, and renewal that swaps the certificate without dropping
connections."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from webhook.tls import (
    CertificateFiles,
    CertificateStore,
    PemPair,
    generate_ca,
    generate_serving,
    issue,
    renewal_reason,
    service_dns_names,
)

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


def test_serving_certificate_has_service_sans_and_is_signed_by_the_ca() -> None:
    ca = generate_ca("test-ca", now=NOW)
    names = service_dns_names("celvern", "policy", ["127.0.0.1", "extra.example"])
    assert names[:4] == ["celvern", "celvern.policy", "celvern.policy.svc", "celvern.policy.svc.cluster.local"]
    cert_pem, _ = generate_serving(ca, names, days=30, now=NOW)
    certificate = x509.load_pem_x509_certificate(cert_pem)
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [n for n in names if n != "127.0.0.1"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ca_certificate = x509.load_pem_x509_certificate(ca[0])
    certificate.verify_directly_issued_by(ca_certificate)
    assert ca_certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certificate.not_valid_after_utc - NOW == datetime.timedelta(days=30)


def test_store_creates_files_and_renews_when_a_third_of_the_lifetime_is_left(tmp_path: Path) -> None:
    now = [NOW]
    store = CertificateStore(tmp_path / "tls", dns_names=["localhost"], serving_days=90, clock=lambda: now[0])
    assert store.needs_renewal(NOW) and store.ensure() is True
    assert store.ensure() is False
    assert oct(store.key_path.stat().st_mode & 0o777) == "0o600" and oct(store.ca_key_path.stat().st_mode & 0o777)
    assert not store.needs_renewal(NOW + datetime.timedelta(days=59))
    assert store.needs_renewal(NOW + datetime.timedelta(days=61))
    ca_before, cert_before = store.ca_pem, store.cert_path.read_bytes()
    now[0] = NOW + datetime.timedelta(days=61)
    assert store.ensure() is True
    assert store.ca_pem == ca_before and store.cert_path.read_bytes() != cert_before  # the caBundle stays valid
    # Wanting another DNS name re-issues the certificate.
    wider = CertificateStore(tmp_path / "tls", dns_names=["localhost", "other"], clock=lambda: now[0])
    assert wider.needs_renewal(now[0])


# --- the shared rules (used by CertificateStore and webhook.certificates.SecretCertificates) -------------------

NAMES = ["localhost", "127.0.0.1"]
CA = generate_ca("rules-ca", now=NOW)
SERVING = generate_serving(CA, NAMES, days=90, now=NOW)
OTHER_CA = generate_ca("other-ca", now=NOW)


def _material(**changes: bytes | None) -> dict[str, bytes | None]:
    material: dict[str, bytes | None] = {"ca": CA[0], "ca_key": CA[1], "cert": SERVING[0], "key": SERVING[1]}
    material.update(changes)
    return material


@pytest.mark.parametrize(
    ("material", "names", "at", "reason"),
    [
        pytest.param(_material(), NAMES, NOW, None, id="good material"),
        pytest.param(_material(cert=None), NAMES, NOW, "missing", id="no serving certificate"),
        pytest.param(_material(ca=b"garbage"), NAMES, NOW, "unparseable certificate", id="corrupt CA certificate"),
        pytest.param(
            _material(key=OTHER_CA[1]), NAMES, NOW, "serving key does not match its certificate", id="key mismatch"
        ),
        pytest.param(_material(ca_key=OTHER_CA[1]), NAMES, NOW, "CA unusable", id="CA key mismatch"),
        pytest.param(
            _material(ca=OTHER_CA[0], ca_key=OTHER_CA[1]),
            NAMES,
            NOW,
            "serving certificate not issued by the CA",
            id="serving issued by another CA",
        ),
        pytest.param(
            _material(cert=SERVING[1], key=SERVING[1]), NAMES, NOW, "unparseable certificate", id="key as certificate"
        ),
        pytest.param(_material(), NAMES, NOW + datetime.timedelta(days=59), None, id="serving 2/3 through its life"),
        pytest.param(
            _material(),
            NAMES,
            NOW + datetime.timedelta(days=61),
            "serving certificate due for renewal",
            id="serving less than 1/3 left",
        ),
        pytest.param(
            _material(), NAMES, NOW + datetime.timedelta(days=2500), "CA due for renewal", id="CA less than 1/3 left"
        ),
        pytest.param(
            _material(),
            [*NAMES, "celvern.celvern.svc"],
            NOW,
            "serving certificate does not cover the wanted names",
            id="a wanted name is not covered",
        ),
    ],
)
def test_renewal_reason(
    material: dict[str, bytes | None], names: list[str], at: datetime.datetime, reason: str | None
) -> None:
    assert renewal_reason(material["ca"], material["ca_key"], material["cert"], material["key"], names, at) == reason


def _rsa_ca() -> PemPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator-ca")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.mark.parametrize(
    ("ca", "at", "keeps_ca"),
    [
        pytest.param(CA, NOW, True, id="usable ECDSA CA is kept"),
        pytest.param(_rsa_ca(), NOW, True, id="usable RSA CA (made by an operator) is kept"),
        pytest.param(CA, NOW + datetime.timedelta(days=2500), False, id="CA due: a new one"),
        pytest.param((CA[0], OTHER_CA[1]), NOW, False, id="CA key mismatch: a new one"),
        pytest.param(None, NOW, False, id="no CA: a new one"),
    ],
)
def test_issue_keeps_a_usable_ca(ca: PemPair | None, at: datetime.datetime, keeps_ca: bool) -> None:
    issued = issue(ca, NAMES, now=at)
    assert issued.new_ca is not keeps_ca
    assert (issued.ca == ca) is keeps_ca
    assert renewal_reason(*issued.ca, *issued.serving, NAMES, at) is None


def test_context_refuses_tls_1_1_and_weak_ciphers(tmp_path: Path) -> None:
    store = CertificateStore(tmp_path, dns_names=["localhost"])
    context = store.ssl_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name) for name in tls12)
    with TlsServer(context) as server:
        client = ssl.create_default_context(cadata=store.ca_pem.decode())
        client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1_2
        with server.connect(client) as connection:
            assert connection.version() == "TLSv1.2"
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the point is to offer an old version
            old.minimum_version, old.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            server.connect(old).close()


class TlsServer:
    """A threaded loopback TLS echo server (one thread per connection)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept)

    def __enter__(self) -> TlsServer:
        self.acceptor.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.acceptor.join(5)
        for thread in self.threads:
            thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._echo, args=(raw,))
            self.threads.append(thread)
            thread.start()

    def _echo(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            with self.context.wrap_socket(raw, server_side=True) as connection:
                while data := connection.recv(1024):
                    connection.sendall(data)
        except (ssl.SSLError, OSError):
            pass
        finally:
            raw.close()

    def connect(self, context: ssl.SSLContext) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            return context.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise


def serial(connection: ssl.SSLSocket) -> int:
    der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CertificateStore]:
    """A store whose serving certificate was issued 300 of its 365 days ago: valid, but due for renewal."""
    issued = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=300)
    store = CertificateStore(tmp_path, dns_names=["localhost"], clock=lambda: issued)
    store.ssl_context()
    store.clock = lambda: datetime.datetime.now(datetime.UTC)
    yield store
    store.stop()


def test_renewal_serves_the_new_certificate_to_new_handshakes_and_keeps_open_connections(
    store: CertificateStore,
) -> None:
    context = store.ssl_context()
    client = ssl.create_default_context(cadata=store.ca_pem.decode())
    with TlsServer(context) as server, server.connect(client) as before:
        before.sendall(b"ping")
        assert before.recv(4) == b"ping"
        old_serial = serial(before)
        renewed = threading.Event()

        def reload_then_signal() -> None:
            store.reload()
            renewed.set()

        store.start(interval=0.01, on_renewed=reload_then_signal)
        assert renewed.wait(10)
        store.stop()
        with server.connect(client) as after:
            assert serial(after) != old_serial
            after.sendall(b"new")
            assert after.recv(3) == b"new"
        before.sendall(b"still")  # the connection made before the renewal keeps working
        assert before.recv(5) == b"still"
        assert serial(before) == old_serial


def test_default_timer_reloads_the_context_itself(store: CertificateStore) -> None:
    context = store.ssl_context()
    loaded = store.cert_path.read_bytes()
    store.start(interval=0.01)
    deadline = time.monotonic() + 10
    while store.cert_path.read_bytes() == loaded and time.monotonic() < deadline:
        time.sleep(0.01)
    store.stop()
    assert store.reload() is False  # the timer already loaded the renewed files into the shared context
    assert store.ssl_context() is context


def test_half_written_pair_is_skipped(tmp_path: Path) -> None:
    store = CertificateStore(tmp_path, dns_names=["localhost"])
    store.ssl_context()
    other = CertificateStore(tmp_path / "other", dns_names=["localhost"])
    other.ensure()
    files = CertificateFiles(store.cert_path, store.key_path)
    files.ssl_context()
    store.key_path.write_bytes(other.key_path.read_bytes())  # new key, old certificate
    assert files.reload() is False
    store.cert_path.write_bytes(other.cert_path.read_bytes())
    assert files.reload() is True
