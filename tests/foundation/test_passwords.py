"""Password hashes: our own schemes and the ones a Dovecot install leaves behind."""

from __future__ import annotations

import bcrypt
import pytest
from hypothesis import given, settings, strategies as st

from mailsuite.accounts.passwords import PasswordFormatError, hash_password, sha_crypt, verify_password


@pytest.mark.parametrize("scheme", ["ARGON2ID", "SCRYPT"])
def test_new_hashes(scheme: str) -> None:
    stored = hash_password("correct horse", scheme)
    assert stored.startswith("{%s}" % scheme)
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct horsE")
    assert hash_password("correct horse", scheme) != stored  # salted


def test_sha512_crypt_reference_vectors() -> None:
    # Drepper's specification, test vectors 1 and 2
    assert sha_crypt(b"Hello world!", "$6$saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1")
    assert sha_crypt(b"Hello world!", "$5$saltstring") == "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"


def test_dovecot_lines_are_accepted() -> None:
    # made by `doveadm pw -s SHA512-CRYPT -p secret` style: $6$ with a 16-char salt
    stored = "{SHA512-CRYPT}" + sha_crypt(b"secret", "$6$w3Y5kZ1M0aXWmZ8a")
    assert verify_password(stored, "secret") and not verify_password(stored, "Secret")
    blf = "{BLF-CRYPT}" + bcrypt.hashpw(b"secret", bcrypt.gensalt(5)).decode()
    assert verify_password(blf, "secret") and not verify_password(blf, "secreT")
    rounds = "{SHA256-CRYPT}" + sha_crypt(b"secret", "$5$rounds=2000$abcdefgh")
    assert "rounds=2000" in rounds and verify_password(rounds, "secret")


def test_sha_crypt_agrees_with_libc_when_available() -> None:
    crypt = pytest.importorskip("crypt", reason="the crypt module is gone in Python 3.13; vectors above still run")
    for setting in ("$6$abc", "$5$rounds=1500$0123456789abcdef", "$6$rounds=1000$x"):
        for password in ("", "p", "a" * 70, "ünïcode"):
            assert sha_crypt(password.encode(), setting) == crypt.crypt(password, setting)


@pytest.mark.parametrize("stored", ["{PLAIN}secret", "{MD5}abc", "nohash", "{CRYPT}xx"])
def test_weak_or_unknown_schemes_refused(stored: str) -> None:
    with pytest.raises(PasswordFormatError):
        verify_password(stored, "secret")


@settings(max_examples=20, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_sha_crypt_only_matches_its_password(a: str, b: str) -> None:
    stored = "{SHA512-CRYPT}" + sha_crypt(a.encode(), "$6$rounds=1000$hypothesis")
    assert verify_password(stored, a)
    assert verify_password(stored, b) == (a == b)
