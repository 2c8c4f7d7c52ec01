"""Self-signed TLS certificate for the servers of the local stack.

The Dovecot component calls ``ensure_self_signed_cert`` so that IMAPS on
127.0.0.1 works with certificate verification: clients load the certificate
file as their CA file (``LocalStack.imap_ca_file``).
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from messagehub.localstack._files import write_atomically

logger = logging.getLogger(__name__)

CERT_VALIDITY = timedelta(days=365)
# A certificate that expires sooner than this is replaced at the next start.
RENEW_BEFORE = timedelta(days=7)


def ensure_self_signed_cert(cert_path: Path, key_path: Path) -> None:
    """Create a certificate for localhost and 127.0.0.1 unless a valid one exists."""
    if _cert_is_current(cert_path) and key_path.exists():
        return

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_cert(key)

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(key_path, key_pem, mode=0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    logger.info("tls: created a self-signed certificate %s valid until %s", cert_path, cert.not_valid_after_utc)


def _build_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    # The certificate is its own CA, so it carries the CA extensions that
    # strict verifiers (OpenSSL's X509_STRICT) expect of a trust anchor.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    public_key = key.public_key()
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def _cert_is_current(cert_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (FileNotFoundError, ValueError):
        return False
    return cert.not_valid_after_utc - datetime.now(timezone.utc) > RENEW_BEFORE
