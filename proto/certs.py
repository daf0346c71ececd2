"""
Certificates: minting, loading and thumbprints.

No PKI is needed to run GNP/1: the server mints its own certificate on
first start, a client is admitted by its certificate's thumbprint, and the
CLI mints client certificates. Everything uses C{cryptography}; pyOpenSSL
objects never leave L{proto.tls}.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Minted:
    """A certificate and its private key, as objects and as PEM."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certPEM(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def keyPEM(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def sha1Thumbprint(cert: x509.Certificate) -> str:
    """The SHA-1 digest of the DER certificate: 40 lower-case hex digits."""
    return cert.fingerprint(hashes.SHA1()).hex()


def sha256Thumbprint(cert: x509.Certificate) -> str:
    """The SHA-256 digest of the DER certificate: 64 lower-case hex digits."""
    return cert.fingerprint(hashes.SHA256()).hex()


def commonName(cert: x509.Certificate) -> str:
    """The subject's common name, or C{""} when it has none."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return ""
    value = names[0].value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _subjectAltNames(names: Iterable[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def mint(
    commonName: str,
    *,
    server: bool = False,
    altNames: Iterable[str] = (),
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
    days: int = 825,
    issuer: Minted | None = None,
) -> Minted:
    """
    Mint an ECDSA P-256 certificate, self-signed unless C{issuer} is given.

    @param server: mark it for TLS server use (else client use).
    @param altNames: DNS names and IP addresses for the SubjectAltName.
    @param notBefore: start of validity (default: an hour ago, to allow for
        clock skew between machines).
    @param notAfter: end of validity (default: C{days} after now).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    notBefore = notBefore or now - datetime.timedelta(hours=1)
    notAfter = notAfter or now + datetime.timedelta(days=days)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    sans = _subjectAltNames(altNames)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    signer = issuer.key if issuer else key
    return Minted(builder.sign(signer, hashes.SHA256()), key)


def mintCA(commonName: str, days: int = 3650) -> Minted:
    """Mint a self-signed CA certificate (for deployments and tests with a CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Minted(cert, key)


def loadCertificates(pem: bytes) -> list[x509.Certificate]:
    """
    Load every certificate of a PEM file: the first is the leaf, the rest
    its chain.

    @raise ValueError: if there is none.
    """
    certs = x509.load_pem_x509_certificates(pem)
    if not certs:
        raise ValueError("no certificate found in PEM data")
    return certs


def loadPrivateKey(pem: bytes) -> SigningKey:
    """
    Load a PEM private key: PKCS#8 (C{BEGIN PRIVATE KEY}) or traditional
    RSA/EC PEM, unencrypted.

    @raise TypeError: a key of a kind that cannot sign (X25519, DH...).
    """
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, _SIGNING_KEYS):
        raise TypeError(f"a {type(key).__name__} cannot sign a TLS handshake")
    return key


#: The private keys TLS (pyOpenSSL's C{use_privatekey}) can sign with.
SigningKey = Union[
    dsa.DSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey, rsa.RSAPrivateKey,
]
_SIGNING_KEYS = (
    dsa.DSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey, rsa.RSAPrivateKey,
)


def loadCertificateAndKey(
    certPath: str, keyPath: str, role: str
) -> tuple[list[x509.Certificate], SigningKey]:
    """
    Load a PEM certificate file (the leaf, then its chain) and the PEM
    private key that goes with it.

    @param role: how error messages name them (C{"server"}, C{"client"}).
    @raise ValueError: a sentence naming the file that cannot be used, or
        saying the key does not belong to the certificate.
    """
    try:
        with open(certPath, "rb") as f:
            chain = loadCertificates(f.read())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load {role} certificate {certPath}: {e}") from None
    try:
        with open(keyPath, "rb") as f:
            key = loadPrivateKey(f.read())
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"cannot load {role} key {keyPath}: {e}") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ValueError(f"{role} key {keyPath} does not belong to certificate {certPath}")
    return chain, key
