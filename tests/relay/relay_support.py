"""Test doubles on loopback for the relay: a tiny authoritative DNS server and a tiny receiving SMTP server.

Both run in daemon threads with blocking sockets, so the code under test (in the Twisted reactor) talks to
them over real UDP/TCP.  Nothing here is used by the product code.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# --------------------------------------------------------------------------------------------- DNS


class FakeDNS:
    """Answers from `zone`: {name: [(rdtype, rdata text), ...]}; CNAMEs are chased within the zone.

    A name absent from the zone is NXDOMAIN; a name present without the asked type is NOERROR/empty;
    a name with ("SERVFAIL", "") answers SERVFAIL.
    """

    def __init__(self, zone: dict[str, list[tuple[str, str]]], host: str = "127.0.0.1") -> None:
        self.zone = {k.lower().rstrip("."): v for k, v in zone.items()}
        self.queries: list[tuple[str, str]] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                try:
                    reply = outer.answer(data)
                except Exception:
                    return
                sock.sendto(reply, self.client_address)

        self.server = socketserver.ThreadingUDPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.address = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        for _ in range(8):
            records = self.zone.get(name)
            if records is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                break
            if any(t == "SERVFAIL" for t, _ in records):
                response.set_rcode(dns.rcode.SERVFAIL)
                break
            cname = [v for t, v in records if t == "CNAME"]
            if cname and rdtype != "CNAME":
                response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "CNAME", cname[0]))
                name = cname[0].lower().rstrip(".")
                continue
            values = [v for t, v in records if t == rdtype]
            if values:
                response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", rdtype, *values))
            break
        return response.to_wire()

    def start(self) -> "FakeDNS":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -------------------------------------------------------------------------------------------- TLS


def make_cert(directory: Path, names: tuple[str, ...] = ("localhost", "smarthost.test"),
              ips: tuple[str, ...] = ("127.0.0.1", "127.0.0.2")) -> tuple[Path, Path]:
    """A self-signed certificate (also usable as its own CA file): (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# ------------------------------------------------------------------------------------------- SMTP


@dataclass
class Received:
    helo: str
    mail: str                      # the whole MAIL command line
    rcpts: list[str]               # the whole RCPT command lines
    data: bytes                    # after dot-unstuffing, without the terminator
    raw: bytes                     # as sent on the wire, including the terminator
    tls: bool
    auth: str | None


@dataclass
class SMTPBehaviour:
    greeting: str = "220 {name} ESMTP test server"
    extensions: tuple[str, ...] = ("PIPELINING", "SIZE 10000000", "8BITMIME", "DSN", "ENHANCEDSTATUSCODES")
    cert: tuple[Path, Path] | None = None         # offer STARTTLS with this certificate
    implicit_tls: bool = False
    broken_tls: bool = False                      # answer STARTTLS with 220, then garbage instead of TLS
    users: dict[str, str] | None = None           # offer AUTH PLAIN LOGIN (after TLS only)
    require_tls: bool = False                     # MAIL refused before STARTTLS
    require_auth: bool = False                    # MAIL refused before AUTH
    rcpt: Callable[[str], str] = lambda address: "250 2.1.5 ok"
    # the reply to the end of DATA; count: messages accepted before, data: this message (unstuffed)
    data: Callable[[int, bytes], str] = lambda count, data: "250 2.0.0 queued"


class FakeSMTP:
    """A small threaded SMTP server recording what it receives (see `SMTPBehaviour`)."""

    def __init__(self, host: str, port: int = 0, name: str = "mx.test", behaviour: SMTPBehaviour | None = None):
        self.name = name
        self.behaviour = behaviour or SMTPBehaviour()
        self.received: list[Received] = []
        self.connections = 0
        self.commands: list[str] = []
        self.lock = threading.Lock()
        self.hang = threading.Event()      # set to let silent sessions end
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    outer._session(self.request)
                except (OSError, ssl.SSLError, ValueError):
                    pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> "FakeSMTP":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.hang.set()
        self.server.shutdown()
        self.server.server_close()

    def _tls_context(self) -> ssl.SSLContext:
        assert self.behaviour.cert is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*map(str, self.behaviour.cert))
        return ctx

    def _session(self, sock: socket.socket) -> None:
        b = self.behaviour
        with self.lock:
            self.connections += 1
            count = len(self.received)
        tls = False
        if b.implicit_tls:
            sock = self._tls_context().wrap_socket(sock, server_side=True)
            tls = True
        f = sock.makefile("rb")

        def send(line: str) -> None:
            sock.sendall(line.encode() + b"\r\n")

        def readline() -> str:
            line = f.readline(10000)
            if not line:
                raise OSError("closed")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            with self.lock:
                self.commands.append(text)
            return text

        if not b.greeting:
            # a server that accepts the connection and never says anything (timeout tests)
            self.hang.wait(30)
            return
        greeting = b.greeting.format(name=self.name)
        send(greeting)
        if not greeting.startswith("220"):
            if readline().upper().startswith("QUIT"):
                send("221 bye")
            return
        helo, auth_user = "", None
        mail, rcpts = "", []
        while True:
            line = readline()
            verb = line.split(" ", 1)[0].upper()
            arg = line[len(verb):].strip()
            if verb == "EHLO":
                helo, mail, rcpts = arg, "", []
                exts = list(b.extensions)
                if b.cert and not tls and not b.implicit_tls:
                    exts.append("STARTTLS")
                if b.users is not None and tls:
                    exts.append("AUTH PLAIN LOGIN")
                lines = [self.name] + exts
                for i, text in enumerate(lines):
                    send(("250 " if i == len(lines) - 1 else "250-") + text)
            elif verb == "HELO":
                helo = arg
                send(f"250 {self.name}")
            elif verb == "STARTTLS" and b.cert and not tls:
                send("220 2.0.0 ready")
                if b.broken_tls:
                    sock.sendall(b"this is not a TLS handshake\r\n")
                    return
                sock = self._tls_context().wrap_socket(sock, server_side=True)
                f = sock.makefile("rb")
                tls, helo, mail, rcpts, auth_user = True, "", "", [], None
            elif verb == "AUTH" and b.users is not None and tls:
                mech, _, initial = arg.partition(" ")
                if mech.upper() == "PLAIN":
                    if not initial:
                        send("334 ")
                        initial = readline()
                    _, user, password = base64.b64decode(initial).split(b"\0")
                else:
                    send("334 VXNlcm5hbWU6")
                    user = base64.b64decode(readline())
                    send("334 UGFzc3dvcmQ6")
                    password = base64.b64decode(readline())
                if b.users.get(user.decode()) == password.decode():
                    auth_user = user.decode()
                    send("235 2.7.0 authenticated")
                else:
                    send("535 5.7.8 bad credentials")
            elif verb == "MAIL":
                if b.require_tls and not tls:
                    send("530 5.7.0 must issue STARTTLS first")
                elif b.require_auth and auth_user is None:
                    send("530 5.7.0 authentication required")
                else:
                    mail, rcpts = line, []
                    send("250 2.1.0 ok")
            elif verb == "RCPT":
                if not mail:
                    send("503 5.5.1 MAIL first")
                    continue
                address = arg.partition("<")[2].partition(">")[0]
                reply = b.rcpt(address)
                if reply.startswith("2"):
                    rcpts.append(line)
                send(reply)
            elif verb == "DATA":
                if not rcpts:
                    send("554 5.5.1 no valid recipients")
                    continue
                send("354 go ahead")
                raw = b""
                while True:
                    chunk = f.readline()
                    if not chunk:
                        raise OSError("closed in DATA")
                    raw += chunk
                    if chunk == b".\r\n":
                        break
                body = raw[:-3]
                lines = body.split(b"\r\n")
                data = b"\r\n".join(x[1:] if x.startswith(b".") else x for x in lines)
                reply = b.data(count, data)
                if reply.startswith("2"):
                    with self.lock:
                        self.received.append(Received(helo, mail, list(rcpts), data, raw, tls, auth_user))
                        count = len(self.received)
                send(reply)
                mail, rcpts = "", []
            elif verb == "RSET":
                mail, rcpts = "", []
                send("250 2.0.0 reset")
            elif verb == "NOOP":
                send("250 2.0.0 ok")
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                return
            else:
                send("500 5.5.2 unknown command")


def common_port(hosts: tuple[str, ...]) -> int:
    """A port number free on every one of `hosts` (the relay uses one destination port for all MX)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no common free port")
