"""dnspython (~3 MB) is imported when the relay first needs DNS, not at start (bench 7a: base memory)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
from mailsuite.relay.dns import MXResolver
r = MXResolver(nameservers=["127.0.0.1:5353"], reactor=object())
print("before", any(m == "dns" or m.startswith("dns.") for m in sys.modules))
r.resolver
print("after", "dns.resolver" in sys.modules, r.resolver.nameservers[0].port, r.resolver.lifetime)
from mailsuite.relay.dns import LAZY_MODULES
from mailsuite.service import preload
preload()
print("preloaded", all(m in sys.modules for m in LAZY_MODULES))
"""


def test_dnspython_is_imported_on_first_use_and_by_preload() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:3] == ["before False", "after True 5353 20.0", "preloaded True"], out
