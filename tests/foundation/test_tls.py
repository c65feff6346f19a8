"""TLS: a configured chain (intermediate sent), SIGHUP reload without dropping connections, bad files named."""

from __future__ import annotations

import datetime
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailsuite.tls import TLSError, TLSManager
from tests.server import MailServer


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool, sans: list[str] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_chain(directory: Path, cn: str) -> Path:
    """Root CA → intermediate → leaf; writes root.pem, fullchain.pem (leaf + intermediate) and privkey.pem."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Test Root", root_key, "Test Root", root_key, True)
    inter = _cert("Test Intermediate", inter_key, "Test Root", root_key, True)
    leaf = _cert(cn, leaf_key, "Test Intermediate", inter_key, False, [cn])
    pem = serialization.Encoding.PEM
    (directory / "root.pem").write_bytes(root.public_bytes(pem))
    (directory / "fullchain.pem").write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
    (directory / "privkey.pem").write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()))
    return directory


def peer_cn(sock: ssl.SSLSocket) -> str:
    cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_self_signed_is_made_once(tmp_path: Path) -> None:
    first = TLSManager(None, None, data_dir=tmp_path, names=["mail.example.org"])
    pem = first.cert_path.read_bytes()
    assert oct(first.key_path.stat().st_mode & 0o777) == "0o600"
    TLSManager(None, None, data_dir=tmp_path, names=["mail.example.org"])
    assert first.cert_path.read_bytes() == pem


def test_bad_files_are_named(tmp_path: Path) -> None:
    chain = make_chain(tmp_path / "a", "mail.example.org")
    other = make_chain(tmp_path / "b", "mail.example.org")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TLSError, match="junk.pem: no PEM certificate"):
        TLSManager(tmp_path / "junk.pem", chain / "privkey.pem", data_dir=tmp_path, names=["x"])
    with pytest.raises(TLSError, match="do not match"):
        TLSManager(chain / "fullchain.pem", other / "privkey.pem", data_dir=tmp_path, names=["x"])


def test_chain_is_sent_and_sighup_reloads_without_dropping(tmp_path: Path) -> None:
    live = tmp_path / "live"
    first = make_chain(tmp_path / "first", "first.example.org")
    second = make_chain(tmp_path / "second", "second.example.org")
    live.mkdir()
    for name in ("fullchain.pem", "privkey.pem"):
        (live / name).write_bytes((first / name).read_bytes())
    srv = MailServer(tmp_path / "srv", services=("pop3s",),
                     extra_config=f'[tls]\ncert = "{live / "fullchain.pem"}"\nkey = "{live / "privkey.pem"}"\n')
    srv.start()
    try:
        def connect(root: Path, cn: str) -> ssl.SSLSocket:
            ctx = ssl.create_default_context(cafile=str(root / "root.pem"))  # only the root: needs the intermediate
            raw = socket.create_connection(("127.0.0.1", srv.port("pop3s")), timeout=10)
            return ctx.wrap_socket(raw, server_hostname=cn)

        old = connect(first, "first.example.org")
        assert peer_cn(old) == "first.example.org"
        assert old.recv(1024).startswith(b"+OK")
        for name in ("fullchain.pem", "privkey.pem"):
            (live / name).write_bytes((second / name).read_bytes())
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificate reloaded" not in srv.log_text():
            assert time.monotonic() < deadline, srv.log_text()
            time.sleep(0.05)
        new = connect(second, "second.example.org")
        assert peer_cn(new) == "second.example.org"
        new.close()
        old.sendall(b"CAPA\r\n")   # the connection made before the reload goes on
        assert old.recv(1024).startswith(b"+OK")
        old.close()
        # a broken file on reload keeps the working certificate
        (live / "fullchain.pem").write_text("garbage")
        srv.proc.send_signal(signal.SIGHUP)
        while "keeping the previous certificate" not in srv.log_text():
            assert time.monotonic() < deadline + 10, srv.log_text()
            time.sleep(0.05)
        assert peer_cn(connect(second, "second.example.org")) == "second.example.org"
    finally:
        srv.stop()


def test_self_signed_key_is_private_even_over_an_old_file(tmp_path: Path) -> None:
    """A key left from a half-made pair (no certificate) is rewritten with mode 0600, not its old mode."""
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    old_key = tls_dir / "selfsigned-key.pem"
    old_key.write_text("left over\n")
    old_key.chmod(0o644)
    manager = TLSManager(None, None, data_dir=tmp_path, names=["mail.example.org"])
    assert manager.key_path == old_key and (old_key.stat().st_mode & 0o777) == 0o600
    assert b"PRIVATE KEY" in old_key.read_bytes()
