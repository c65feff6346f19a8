"""Password hashes in Dovecot's ``{SCHEME}hash`` notation.

New hashes are ``{ARGON2ID}`` (argon2-cffi, the same encoded form Dovecot writes) or ``{SCRYPT}``. For users
moving from Dovecot, ``{SHA512-CRYPT}``, ``{SHA256-CRYPT}`` (Drepper's SHA-crypt, implemented here because the
stdlib ``crypt`` module is gone in Python 3.13) and ``{BLF-CRYPT}`` (bcrypt) are verified too. Weak schemes
(PLAIN, MD5, ...) are refused when the users file is loaded. Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

import argon2
import bcrypt

__all__ = ["hash_password", "verify_password", "scheme_of", "SUPPORTED", "PasswordFormatError"]

SUPPORTED = ("ARGON2ID", "SCRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT")
_argon = argon2.PasswordHasher()  # RFC 9106 second recommended option: m=64 MiB, t=3, p=4
_SCRYPT = {"n": 2 ** 15, "r": 8, "p": 1}


class PasswordFormatError(ValueError):
    """A stored hash is malformed or uses a scheme we refuse."""


def scheme_of(stored: str) -> str:
    match = re.match(r"^\{([A-Za-z0-9._-]+)\}", stored)
    if not match:
        raise PasswordFormatError("password hash must start with {SCHEME}")
    scheme = match.group(1).upper()
    if scheme not in SUPPORTED:
        raise PasswordFormatError(f"unsupported or weak password scheme {{{scheme}}} "
                                  f"(supported: {', '.join(SUPPORTED)})")
    return scheme


def hash_password(password: str, scheme: str = "ARGON2ID") -> str:
    """Hash ``password`` for the users file."""
    scheme = scheme.upper()
    if scheme == "ARGON2ID":
        return "{ARGON2ID}" + _argon.hash(password)
    if scheme == "SCRYPT":
        salt = os.urandom(16)
        digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=64 * 1024 * 1024, dklen=32, **_SCRYPT)
        ln = _SCRYPT["n"].bit_length() - 1
        return "{SCRYPT}$scrypt$ln=%d,r=%d,p=%d$%s$%s" % (
            ln, _SCRYPT["r"], _SCRYPT["p"], _b64(salt), _b64(digest))
    raise PasswordFormatError(f"cannot create new {scheme} hashes; use ARGON2ID or SCRYPT")


def verify_password(stored: str, password: str) -> bool:
    """True when ``password`` matches ``stored`` (``{SCHEME}...``). Never raises on a wrong password."""
    scheme = scheme_of(stored)
    body = stored[len(scheme) + 2:]
    secret = password.encode("utf-8")
    try:
        if scheme == "ARGON2ID":
            try:
                return _argon.verify(body, secret)
            except argon2.exceptions.VerifyMismatchError:
                return False
        if scheme == "SCRYPT":
            match = re.fullmatch(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([^$]+)\$([^$]+)", body)
            if not match:
                raise PasswordFormatError("malformed {SCRYPT} hash")
            ln, r, p = (int(x) for x in match.group(1, 2, 3))
            expected = _unb64(match.group(5))
            digest = hashlib.scrypt(secret, salt=_unb64(match.group(4)), n=2 ** ln, r=r, p=p,
                                    maxmem=256 * 1024 * 1024, dklen=len(expected))
            return hmac.compare_digest(digest, expected)
        if scheme in ("SHA512-CRYPT", "SHA256-CRYPT"):
            return hmac.compare_digest(sha_crypt(secret, body).encode(), body.encode())
        if scheme == "BLF-CRYPT":
            return bcrypt.checkpw(secret, body.encode())
    except (ValueError, TypeError) as exc:
        raise PasswordFormatError(f"malformed {{{scheme}}} hash: {exc}") from None
    return False  # pragma: no cover - scheme_of limits the schemes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


# --- SHA-crypt (Ulrich Drepper, "Unix crypt using SHA-256 and SHA-512", 2008) -----------------------------

_CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _crypt64(value: int, count: int) -> str:
    out = []
    for _ in range(count):
        out.append(_CRYPT64[value & 0x3F])
        value >>= 6
    return "".join(out)


def sha_crypt(password: bytes, setting: str) -> str:
    """Compute ``$5$``/``$6$`` SHA-crypt for ``password`` with the salt and rounds taken from ``setting``."""
    match = re.match(r"^\$([56])\$(?:rounds=(\d+)\$)?([^$]{0,16})", setting)
    if not match:
        raise ValueError("not a $5$/$6$ SHA-crypt hash")
    variant, rounds_text, salt_text = match.groups()
    algo, size = (hashlib.sha512, 64) if variant == "6" else (hashlib.sha256, 32)
    rounds = 5000 if rounds_text is None else min(max(int(rounds_text), 1000), 999_999_999)
    salt = salt_text.encode()
    plen = len(password)

    b = algo(password + salt + password).digest()
    a = algo(password + salt)
    for i in range(0, plen, size):
        a.update(b[: min(size, plen - i)])
    n = plen
    while n:
        a.update(b if n & 1 else password)
        n >>= 1
    a_digest = a.digest()
    dp = algo(password * plen).digest()
    p_seq = (dp * (plen // size + 1))[:plen]
    ds = algo(salt * (16 + a_digest[0])).digest()
    s_seq = (ds * (len(salt) // size + 1))[: len(salt)]
    c = a_digest
    for i in range(rounds):
        ctx = algo(p_seq if i & 1 else c)
        if i % 3:
            ctx.update(s_seq)
        if i % 7:
            ctx.update(p_seq)
        ctx.update(c if i & 1 else p_seq)
        c = ctx.digest()

    parts = []
    if size == 64:
        for k in range(21):
            first = (k * 22) % 63
            parts.append(_crypt64((c[first] << 16) | (c[(first + 21) % 63] << 8) | c[(first + 42) % 63], 4))
        parts.append(_crypt64(c[63], 2))
    else:
        for k in range(10):
            first = (k * 21) % 30
            parts.append(_crypt64((c[first] << 16) | (c[(first + 10) % 30] << 8) | c[(first + 20) % 30], 4))
        parts.append(_crypt64((c[31] << 8) | c[30], 3))
    rounds_part = f"rounds={rounds}$" if rounds_text is not None else ""
    return f"${variant}${rounds_part}{salt_text}${''.join(parts)}"
