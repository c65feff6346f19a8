"""TLS: the certificate (configured chain, or a self-signed one made on first start) and server contexts.

One ``TLSManager`` per process. ``server_options()`` returns a connection creator whose OpenSSL context is
swapped by ``reload()`` (SIGHUP), so renewed certificates are used by new handshakes while existing
connections go on. TLS 1.2 minimum with forward-secret AEAD ciphers only (Mozilla "intermediate").
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

#: Mozilla "intermediate" TLS 1.2 suites (ECDHE, AEAD only); TLS 1.3 suites are all AEAD + forward secret.
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
           "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


class TLSError(Exception):
    """The certificate or key can't be used; the message names the file."""


@dataclass(frozen=True)
class TLSInfo:
    version: str   # e.g. "TLSv1.3"
    cipher: str    # e.g. "TLS_AES_256_GCM_SHA384"


def tls_info(transport: Any) -> TLSInfo | None:
    """The negotiated TLS version and cipher of a connection, or None when it is not (yet) encrypted."""
    try:
        handle = transport.getHandle()
    except Exception:
        return None
    if not isinstance(handle, SSL.Connection):
        return None
    version, cipher = handle.get_protocol_version_name(), handle.get_cipher_name()
    if not cipher or version in (None, "", "Unknown"):
        return None
    return TLSInfo(version, cipher)


def make_self_signed(cert_path: Path, key_path: Path, names: list[str]) -> None:
    """Write a self-signed RSA-2048 certificate valid for ``names`` (SANs), key mode 0600."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailsuite self-signed")])
    alt: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)    # an older file of that name (a half-made pair) keeps its mode otherwise
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_chain(cert_path: Path, key_path: Path) -> tuple[list[x509.Certificate], Any]:
    """The certificate chain (leaf first) and private key, as cryptography objects."""
    try:
        pem = cert_path.read_bytes()
    except OSError as exc:
        raise TLSError(f"{cert_path}: cannot read certificate: {exc.strerror}") from None
    try:
        key_pem = key_path.read_bytes()
    except OSError as exc:
        raise TLSError(f"{key_path}: cannot read private key: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise TLSError(f"{cert_path}: no PEM certificate found")
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TLSError(f"{cert_path}: invalid certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TLSError(f"{key_path}: invalid or encrypted private key: {exc}") from None
    return chain, key


@implementer(IOpenSSLServerConnectionCreator)
class _Creator:
    """Makes server-side TLS connections from the manager's current context."""

    def __init__(self, manager: "TLSManager") -> None:
        self._manager = manager

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._manager.context, None)


class TLSManager:
    """Holds the current server SSL context; ``reload()`` re-reads the files (SIGHUP)."""

    def __init__(self, cert: Path | None, key: Path | None, *, data_dir: Path, names: list[str]) -> None:
        self._configured = cert is not None
        if cert is None or key is None:
            cert = data_dir / "tls" / "selfsigned-cert.pem"
            key = data_dir / "tls" / "selfsigned-key.pem"
            if not (cert.is_file() and key.is_file()):
                make_self_signed(cert, key, names)
                log.info("made a self-signed certificate for {names} in {path}", names=", ".join(names),
                         path=str(cert.parent))
        self.cert_path, self.key_path = cert, key
        self.context = self._build()
        self._creator = _Creator(self)

    @property
    def self_signed(self) -> bool:
        return not self._configured

    def _build(self) -> SSL.Context:
        chain, key = _load_chain(self.cert_path, self.key_path)
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)       # no SSLv3, TLS 1.0, TLS 1.1
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_SINGLE_ECDH_USE)
        context.set_cipher_list(CIPHERS.encode())
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        try:
            context.use_certificate(chain[0])
            for extra in chain[1:]:
                context.add_extra_chain_cert(extra)
            context.use_privatekey(key)
            context.check_privatekey()
        except SSL.Error as exc:
            raise TLSError(f"{self.cert_path}: certificate and key {self.key_path} do not match: {exc}") from None
        return context

    def reload(self) -> bool:
        """Re-read certificate and key; keep the old context (and log why) if the new files are bad."""
        try:
            self.context = self._build()
        except TLSError as exc:
            log.error("TLS reload failed, keeping the previous certificate: {err}", err=str(exc))
            return False
        log.info("TLS certificate reloaded from {path}", path=str(self.cert_path))
        return True

    def server_options(self) -> Any:
        """A connection creator for ``transport.startTLS`` and ``TLSMemoryBIOFactory``."""
        return self._creator
