"""Kyverno's `x509.decode`: a PEM certificate or CSR as the map Kyverno's Go code produces.

Kyverno encodes Go's `x509.Certificate` (a curated subset, its `CertificateOutput`) to JSON and back, so
policies see Go field names (`Issuer.CommonName`, `NotAfter`, `KeyUsage`, `IsCA`, ...), base64 strings for
byte slices, `null` for empty slices, RFC 3339 strings for times and doubles for every number. This module
rebuilds that map with `cryptography`. Like Kyverno it accepts RSA keys only, and the certificate map has
no `Subject` field (Kyverno's output struct leaves it out; a CSR's map has one).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import warnings
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtensionOID, NameOID

from engine.cel.libraries import Library, cel

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([^\n-]*)-----\s*\n(?:[^\n]*:[^\n]*\n)*\s*([A-Za-z0-9+/=\s]*?)-----END \1-----", re.DOTALL
)

# Go's x509.KeyUsage bits, in RFC 5280 order.
_KEY_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)

# Go's x509.ExtKeyUsage constants by OID.
_EXT_KEY_USAGE = {
    "2.5.29.37.0": 0,
    "1.3.6.1.5.5.7.3.1": 1,
    "1.3.6.1.5.5.7.3.2": 2,
    "1.3.6.1.5.5.7.3.3": 3,
    "1.3.6.1.5.5.7.3.4": 4,
    "1.3.6.1.5.5.7.3.5": 5,
    "1.3.6.1.5.5.7.3.6": 6,
    "1.3.6.1.5.5.7.3.7": 7,
    "1.3.6.1.5.5.7.3.8": 8,
    "1.3.6.1.5.5.7.3.9": 9,
    "1.3.6.1.4.1.311.10.3.3": 10,
    "2.16.840.1.113730.4.1": 11,
    "1.3.6.1.4.1.311.2.1.22": 12,
    "1.3.6.1.4.1.311.61.1.1": 13,
}

# Go's x509.SignatureAlgorithm constants by OID (used for CSRs).
_SIGNATURE_ALGORITHMS = {
    "1.2.840.113549.1.1.4": 2,
    "1.2.840.113549.1.1.5": 3,
    "1.2.840.113549.1.1.11": 4,
    "1.2.840.113549.1.1.12": 5,
    "1.2.840.113549.1.1.13": 6,
    "1.2.840.113549.1.1.10": 13,
    "1.2.840.10040.4.3": 7,
    "2.16.840.1.101.3.4.3.2": 8,
    "1.2.840.10045.4.1": 9,
    "1.2.840.10045.4.3.2": 10,
    "1.2.840.10045.4.3.3": 11,
    "1.2.840.10045.4.3.4": 12,
    "1.3.101.112": 16,
}

_RSA = 1.0  # x509.RSA


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _oid(dotted: str) -> list[float]:
    return [float(part) for part in dotted.split(".")]


def _or_null(items: list[Any]) -> list[Any] | None:
    """Go marshals a nil slice as null; its parser leaves absent lists nil."""
    return items or None


def _name(name: x509.Name) -> dict[str, Any]:
    """A pkix.Name as Go marshals it after `FillFromRDNSequence`."""
    fields: dict[str, list[str]] = {
        "Country": [],
        "Organization": [],
        "OrganizationalUnit": [],
        "Locality": [],
        "Province": [],
        "StreetAddress": [],
        "PostalCode": [],
    }
    by_oid = {
        NameOID.COUNTRY_NAME: "Country",
        NameOID.ORGANIZATION_NAME: "Organization",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "OrganizationalUnit",
        NameOID.LOCALITY_NAME: "Locality",
        NameOID.STATE_OR_PROVINCE_NAME: "Province",
        NameOID.STREET_ADDRESS: "StreetAddress",
        NameOID.POSTAL_CODE: "PostalCode",
    }
    common_name = serial_number = ""
    names: list[dict[str, Any]] = []
    for rdn in name.rdns:
        for attribute in rdn:
            value = attribute.value if isinstance(attribute.value, str) else _b64(attribute.value)
            names.append({"Type": _oid(attribute.oid.dotted_string), "Value": value})
            if not isinstance(value, str):
                continue
            if attribute.oid == NameOID.COMMON_NAME:
                common_name = value
            elif attribute.oid == NameOID.SERIAL_NUMBER:
                serial_number = value
            elif attribute.oid in by_oid:
                fields[by_oid[attribute.oid]].append(value)
    return {
        **{key: _or_null(values) for key, values in fields.items()},
        "SerialNumber": serial_number,
        "CommonName": common_name,
        "Names": _or_null(names),
        "ExtraNames": None,
    }


def _extension_value(extension: x509.Extension[x509.ExtensionType]) -> bytes:
    value = extension.value
    if isinstance(value, x509.UnrecognizedExtension):
        return value.value
    return value.public_bytes()


def _extensions(extensions: x509.Extensions) -> list[dict[str, Any]] | None:
    return _or_null(
        [
            {
                "Id": _oid(ext.oid.dotted_string),
                "Critical": ext.critical,
                "Value": _b64(_extension_value(ext)),
            }
            for ext in extensions
        ]
    )


def _extension(extensions: x509.Extensions, oid: x509.ObjectIdentifier) -> Any:
    try:
        return extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def _general_names(names: Iterable[x509.GeneralName], kind: type[x509.GeneralName]) -> list[Any]:
    return [name.value for name in names if isinstance(name, kind)]


def _ip_network(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> dict[str, Any]:
    return {"IP": str(network.network_address), "Mask": _b64(network.netmask.packed)}


def _rsa_key(key: Any) -> dict[str, Any]:
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("certificate should use rsa algorithm")
    numbers = key.public_numbers()
    return {"N": str(numbers.n), "E": float(numbers.e)}


def _san(extensions: x509.Extensions) -> dict[str, Any]:
    san = _extension(extensions, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    names: list[x509.GeneralName] = list(san) if san is not None else []
    return {
        "DNSNames": _or_null(_general_names(names, x509.DNSName)),
        "EmailAddresses": _or_null(_general_names(names, x509.RFC822Name)),
        "IPAddresses": _or_null([str(ip) for ip in _general_names(names, x509.IPAddress)]),
    }


def _go_int64(value: int) -> float:
    """big.Int.Int64 (the low 64 bits, sign kept) as the double JSON decoding gives."""
    low = abs(value) & 0xFFFFFFFFFFFFFFFF
    signed = low - (1 << 64) if low >= 1 << 63 else low
    return float(-signed if value < 0 else signed)


def _go_time(cert_time: Any) -> str:
    return str(cert_time.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _certificate(cert: x509.Certificate) -> dict[str, Any]:
    public_key = _rsa_key(cert.public_key())
    extensions = cert.extensions

    key_usage = 0
    usage = _extension(extensions, ExtensionOID.KEY_USAGE)
    if usage is not None:
        for bit, attribute in enumerate(_KEY_USAGE_BITS):
            if getattr(usage, attribute):
                key_usage |= 1 << bit
        if usage.key_agreement:
            key_usage |= (1 << 7) if usage.encipher_only else 0
            key_usage |= (1 << 8) if usage.decipher_only else 0

    ext_usage = _extension(extensions, ExtensionOID.EXTENDED_KEY_USAGE)
    ext_key_usage = [
        float(_EXT_KEY_USAGE[oid.dotted_string]) for oid in ext_usage or () if oid.dotted_string in _EXT_KEY_USAGE
    ]

    constraints = _extension(extensions, ExtensionOID.BASIC_CONSTRAINTS)
    max_path_len = 0
    if constraints is not None:
        max_path_len = -1 if constraints.path_length is None else constraints.path_length

    aki = _extension(extensions, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    aia = _extension(extensions, ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    ocsp = [d.access_location.value for d in aia or () if d.access_method.dotted_string == "1.3.6.1.5.5.7.48.1"]
    issuers = [d.access_location.value for d in aia or () if d.access_method.dotted_string == "1.3.6.1.5.5.7.48.2"]
    crl = _extension(extensions, ExtensionOID.CRL_DISTRIBUTION_POINTS)
    crl_points = [
        name.value
        for point in crl or ()
        for name in point.full_name or ()
        if isinstance(name, x509.UniformResourceIdentifier)
    ]
    policies = _extension(extensions, ExtensionOID.CERTIFICATE_POLICIES)
    policy_ids = [_oid(p.policy_identifier.dotted_string) for p in policies or ()]

    name_constraints = _extension(extensions, ExtensionOID.NAME_CONSTRAINTS)
    permitted: list[x509.GeneralName] = list(getattr(name_constraints, "permitted_subtrees", None) or ())
    excluded: list[x509.GeneralName] = list(getattr(name_constraints, "excluded_subtrees", None) or ())
    name_constraints_critical = False
    if name_constraints is not None:
        name_constraints_critical = extensions.get_extension_for_oid(ExtensionOID.NAME_CONSTRAINTS).critical

    return {
        "Raw": _b64(cert.public_bytes(serialization.Encoding.DER)),
        "RawTBSCertificate": _b64(cert.tbs_certificate_bytes),
        "RawSubjectPublicKeyInfo": _b64(
            cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ),
        "RawSubject": _b64(cert.subject.public_bytes()),
        "RawIssuer": _b64(cert.issuer.public_bytes()),
        "Signature": _b64(cert.signature),
        "PublicKeyAlgorithm": _RSA,
        "PublicKey": public_key,
        "SerialNumber": _go_int64(cert.serial_number),
        "Issuer": _name(cert.issuer),
        "NotBefore": _go_time(cert.not_valid_before_utc),
        "NotAfter": _go_time(cert.not_valid_after_utc),
        "KeyUsage": float(key_usage),
        "Extensions": _extensions(extensions),
        "ExtraExtensions": None,
        "ExtKeyUsage": _or_null(ext_key_usage),
        "BasicConstraintsValid": constraints is not None,
        "IsCA": bool(constraints is not None and constraints.ca),
        "MaxPathLen": float(max_path_len),
        "MaxPathLenZero": constraints is not None and max_path_len == 0,
        "AuthorityKeyId": _b64(aki.key_identifier) if aki is not None else None,
        "OCSPServer": _or_null(ocsp),
        "IssuingCertificateURL": _or_null(issuers),
        **_san(extensions),
        "PermittedDNSDomainsCritical": name_constraints_critical,
        "PermittedDNSDomains": _or_null(_general_names(permitted, x509.DNSName)),
        "ExcludedDNSDomains": _or_null(_general_names(excluded, x509.DNSName)),
        "PermittedIPRanges": _or_null([_ip_network(n) for n in _general_names(permitted, x509.IPAddress)]),
        "ExcludedIPRanges": _or_null([_ip_network(n) for n in _general_names(excluded, x509.IPAddress)]),
        "PermittedEmailAddresses": _or_null(_general_names(permitted, x509.RFC822Name)),
        "ExcludedEmailAddresses": _or_null(_general_names(excluded, x509.RFC822Name)),
        "PermittedURIDomains": _or_null(_general_names(permitted, x509.UniformResourceIdentifier)),
        "ExcludedURIDomains": _or_null(_general_names(excluded, x509.UniformResourceIdentifier)),
        "CRLDistributionPoints": _or_null(crl_points),
        "PolicyIdentifiers": _or_null(policy_ids),
    }


def _certificate_request(csr: x509.CertificateSigningRequest) -> dict[str, Any]:
    public_key = _rsa_key(csr.public_key())
    extensions = csr.extensions
    return {
        "Raw": _b64(csr.public_bytes(serialization.Encoding.DER)),
        "RawTBSCertificateRequest": _b64(csr.tbs_certrequest_bytes),
        "RawSubjectPublicKeyInfo": _b64(
            csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ),
        "RawSubject": _b64(csr.subject.public_bytes()),
        "Version": 0.0,
        "Signature": _b64(csr.signature),
        "SignatureAlgorithm": float(_SIGNATURE_ALGORITHMS.get(csr.signature_algorithm_oid.dotted_string, 0)),
        "PublicKeyAlgorithm": _RSA,
        "PublicKey": public_key,
        "Subject": _name(csr.subject),
        "Attributes": None,
        "Extensions": _extensions(extensions),
        "ExtraExtensions": None,
        **_san(extensions),
        "URIs": None,
    }


def _pem_block(text: str) -> tuple[str, bytes]:
    match = _PEM_BLOCK.search(text)
    if match is None:
        raise ValueError("failed to decode PEM block")
    try:
        return match.group(1), base64.b64decode("".join(match.group(2).split()), validate=True)
    except ValueError:
        raise ValueError("failed to decode PEM block") from None


def decode(text: str) -> dict[str, Any]:
    """`x509.decode`: the first PEM block of `text`, a CERTIFICATE or CERTIFICATE REQUEST."""
    kind, der = _pem_block(text)
    if kind == "CERTIFICATE":
        with warnings.catch_warnings():
            # Go accepts serial numbers RFC 5280 forbids (zero, negative), like the one of Kyverno's test
            # certificate; cryptography reads them but warns on loading and on reading `serial_number`.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError as exc:
                raise ValueError(f"x509: {exc}") from None
            return _certificate(cert)
    if kind == "CERTIFICATE REQUEST":
        try:
            csr = x509.load_der_x509_csr(der)
        except ValueError as exc:
            raise ValueError(f"x509: {exc}") from None
        return _certificate_request(csr)
    raise ValueError("PEM block neither contains a CERTIFICATE or CERTIFICATE REQUEST")


LIBRARY = Library(
    name="kyverno.x509",
    functions=(
        cel.FunctionDecl(
            "x509.decode",
            [cel.Overload("kyverno_x509_decode_string", cel.Type.DYN, [cel.Type.STRING], impl=decode)],
        ),
    ),
)
"""`x509.decode(string) -> dyn`."""
