"""What the TLS provider (pulumi_tls) returns, made here with `cryptography` for tests: the
provider plugin cannot run offline, so the Pulumi mocks answer its resources with these real
keys and certificates, built from the same inputs the stack declares (key algorithm and curve,
CA flag, IP addresses, validity). Tests then run a real nginx and a real TLS handshake
(openssl, Python's ssl) against them."""

from __future__ import annotations

import datetime
import ipaddress
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def new_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _name(subject: dict[str, Any]) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject.get("commonName", "x"))])


def _cert(
    subject: x509.Name, issuer: x509.Name, public: Any, signer: Any, hours: int, ca: bool
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=hours))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )


def self_signed_ca(key_pem: str, subject: dict[str, Any], hours: int) -> str:
    key = _key(key_pem)
    name = _name(subject)
    builder = _cert(name, name, key.public_key(), key, hours, ca=True).add_extension(
        x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def csr(key_pem: str, subject: dict[str, Any], ip_addresses: list[str]) -> str:
    """The request is not needed to sign here; its inputs travel as a JSON stand-in."""
    return json.dumps({"key": key_pem, "subject": subject, "ips": ip_addresses})


def locally_signed(csr_text: str, ca_key_pem: str, ca_cert_pem: str, hours: int) -> str:
    request = json.loads(csr_text)
    ca_key = _key(ca_key_pem)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    public = _key(request["key"]).public_key()
    builder = (
        _cert(_name(request["subject"]), ca_cert.subject, public, ca_key, hours, ca=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)) for ip in request["ips"]]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


_SECRET_SIG = "4dabf18193072939515e22adb298388d"  # how the mock runtime wraps a secret input


def _plain(value: Any) -> Any:
    if isinstance(value, dict) and _SECRET_SIG in value:
        return value["value"]
    return value


_MADE: dict[tuple[str, str], dict[str, Any]] = {}


def tls_mock_state(type_: str, name: str, raw_inputs: dict[str, Any]) -> dict[str, Any] | None:
    """Outputs for a pulumi_tls resource, as the provider would compute them. Like Pulumi
    state, a resource keeps what it made across runs (in this test process): a second run of
    the program sees the same keys and certificates."""
    if (type_, name) in _MADE:
        return _MADE[(type_, name)]
    made = _make(type_, {k: _plain(v) for k, v in raw_inputs.items()})
    if made is not None:
        _MADE[(type_, name)] = made
    return made


def _make(type_: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
    if type_ == "tls:index/privateKey:PrivateKey":
        assert inputs["algorithm"] == "ECDSA" and inputs["ecdsaCurve"] == "P256"
        return {**inputs, "privateKeyPem": new_key_pem()}
    if type_ == "tls:index/selfSignedCert:SelfSignedCert":
        assert inputs["isCaCertificate"] is True
        pem = self_signed_ca(
            inputs["privateKeyPem"], inputs["subject"], inputs["validityPeriodHours"]
        )
        return {**inputs, "certPem": pem}
    if type_ == "tls:index/certRequest:CertRequest":
        return {**inputs, "certRequestPem": csr(inputs["privateKeyPem"], inputs["subject"],
                                                 inputs["ipAddresses"])}  # fmt: skip
    if type_ == "tls:index/locallySignedCert:LocallySignedCert":
        pem = locally_signed(inputs["certRequestPem"], inputs["caPrivateKeyPem"],
                             inputs["caCertPem"], inputs["validityPeriodHours"])  # fmt: skip
        return {**inputs, "certPem": pem}
    return None
