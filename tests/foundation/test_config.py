"""Config: defaults, typed parsing, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsuite.config import ConfigError, load_settings, parse_settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_without_a_file() -> None:
    s = load_settings(None)
    assert s.listen.smtp == ("tcp:25",) and s.listen.imaps == ("tcp:993",)
    assert s.domains and s.smtp.max_recipients == 100 and s.auth.allow_plaintext_loopback is False


def test_example_config_is_valid_and_documents_every_key() -> None:
    text = (REPO / "etc" / "mailsuite.toml").read_text()
    parse_settings(text.replace('# cert = ', 'cert_unused = ').replace("cert_unused", "# cert"), "etc/mailsuite.toml")
    from dataclasses import fields
    from mailsuite.config import SECTIONS
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text, section
        for f in fields(cls):
            assert f"{f.name} =" in text, f"etc/mailsuite.toml does not document {section}.{f.name}"


def test_values_are_typed() -> None:
    s = parse_settings('hostname = "mx.example.org"\ndomains = ["Example.ORG"]\n[smtp]\nmax_recipients = 5\n'
                       '[auth]\nfailure_delay = 1\n[listen]\nsmtp = "tcp:2525"\n')
    assert s.domains == ("example.org",) and s.smtp.max_recipients == 5
    assert s.auth.failure_delay == 1.0 and s.listen.smtp == ("tcp:2525",)


@pytest.mark.parametrize("text, line, key, words", [
    ('[smtp]\nmax_recipents = 5\n', 2, "smtp.max_recipents", "unknown key"),
    ('\n[smtp]\n\nmax_recipients = "many"\n', 4, "smtp.max_recipients", "expected an integer"),
    ('[listen]\nsmtp = ["tcp:twentyfive"]\n', 2, "listen.smtp", "bad port"),
    ('[listen]\nimap = ["bogus:143"]\n', 2, "listen.imap", "unknown endpoint type"),
    ('[tls]\ncert = "/nonexistent/cert.pem"\nkey = "/nonexistent/key.pem"\n', 2, "tls.cert", "file not found"),
    ('[auth]\nallow_plaintext_loopback = "yes"\n', 2, "auth.allow_plaintext_loopback", "true or false"),
    ('colour = "blue"\n', 1, "colour", "unknown key"),
    ('[smtp]\nvrfy = "yes"\n', 2, "smtp.vrfy", "must be one of"),
    ('[smtp]\nmax_message_size = 0\n', 2, "smtp.max_message_size", "greater than 0"),
])
def test_errors_name_file_line_and_key(text: str, line: int, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "/etc/m.toml")
    message = str(info.value)
    assert message.startswith(f"/etc/m.toml:{line}: {key}: "), message
    assert words in message


def test_invalid_toml_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"^x.toml:3: invalid TOML"):
        parse_settings("a = 1\n\nb = = 2\n", "x.toml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.toml")
