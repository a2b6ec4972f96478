"""TLS for the data plane: an ephemeral server certificate, pinned by its SHA-256 fingerprint.

The ServerApp creates a fresh key pair and self-signed certificate (ECDSA P-256, valid one day) when its data
plane starts. The certificate's SHA-256 fingerprint travels to each client inside the Flower train message —
over Flower's own channel, which is TLS-protected and SuperNode-authenticated in a deployment — and the client
refuses any data-plane server whose certificate does not have exactly that fingerprint (compared in constant
time, before the client sends anything). No CA is involved, so nothing else can impersonate the server.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import socket
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class PinMismatchError(ssl.SSLError):
    """The data-plane server's certificate is not the one named in the train message."""


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, lower-case hex."""
    return hashlib.sha256(der).hexdigest()


def server_context() -> tuple[ssl.SSLContext, str]:
    """A TLS server context with a fresh self-signed certificate, and that certificate's fingerprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedguard-data-plane")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="fedguard-dp-") as folder:  # ssl loads keys from files only
        cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        with open(cert_path, "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))
        context.load_cert_chain(cert_path, key_path)
    return context, fingerprint(der)


def client_connect(host: str, port: int, pinned: str, timeout: float) -> ssl.SSLSocket:
    """A TLS connection to ``host:port`` whose server certificate has fingerprint ``pinned``; raises
    :class:`PinMismatchError` (after closing) otherwise."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # trust comes from the pinned fingerprint, checked below
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        conn = context.wrap_socket(raw, server_hostname=None)
    except BaseException:
        raw.close()
        raise
    der = conn.getpeercert(binary_form=True) or b""
    if not hmac.compare_digest(fingerprint(der), pinned.lower()):
        conn.close()
        raise PinMismatchError(f"data-plane server at {host}:{port} presented a certificate that is not the one "
                               "named in the train message (fingerprint mismatch): refusing to send anything")
    return conn
