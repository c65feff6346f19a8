#!/usr/bin/env bash
# TLS audit of every mailsuite listener with testssl (issue 8; long, not part of the test suite).
#
#   bench/testssl.sh [--fast] [WORKDIR]
#
# Makes a test CA and a CA-signed certificate for mail.example.org (openssl), starts the real server
# (tests/server.py) with it on free loopback ports, and runs `testssl` (Debian package testssl.sh) against
# the implicit-TLS ports 465/993/995 and STARTTLS on 587/25, 143 and 110.  Fails (exit 1) unless every
# port offers TLS 1.2+ only, has a trusted chain, and testssl reports no finding of severity HIGH or
# CRITICAL (weak ciphers, known vulnerabilities).  JSON and log of each run stay in WORKDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=""
if [ "${1:-}" = "--fast" ]; then FAST="--fast"; shift; fi
WORK="${1:-$(mktemp -d /tmp/mailsuite-testssl-XXXXXX)}"
mkdir -p "$WORK/pki"
command -v testssl >/dev/null || { echo "testssl missing: apt-get install testssl.sh" >&2; exit 2; }

# -- a CA and a leaf certificate signed by it (EC P-256, SAN mail.example.org) --------------------------
pki="$WORK/pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 90 -subj "/CN=mailsuite test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=mail.example.org" \
    -keyout "$pki/key.pem" -out "$pki/leaf.csr" 2>/dev/null
# revocation pointers as a public CA gives them (testssl only reports them: it does not phone out)
printf '%s\n' "subjectAltName=DNS:mail.example.org" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
    "crlDistributionPoints=URI:http://ca.example.org/ca.crl" \
    "authorityInfoAccess=OCSP;URI:http://ocsp.example.org/" > "$pki/leaf.ext"
openssl x509 -req -in "$pki/leaf.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 90 \
    -extfile "$pki/leaf.ext" -out "$pki/leaf.pem" 2>/dev/null
cat "$pki/leaf.pem" "$pki/ca.pem" > "$pki/fullchain.pem"

# -- the server, and testssl against each port ----------------------------------------------------------
WORK="$WORK" FAST="$FAST" python3 - <<'PY'
import json, os, subprocess, sys
from pathlib import Path
sys.path.insert(0, os.getcwd())
from tests.server import MailServer

work, fast = Path(os.environ["WORK"]), os.environ["FAST"]
pki = work / "pki"
srv = MailServer(work / "server", extra_config=f'[tls]\ncert = "{pki / "fullchain.pem"}"\nkey = "{pki / "key.pem"}"\n')
runs = [("submissions", None), ("imaps", None), ("pop3s", None),
        ("submission", "smtp"), ("smtp", "smtp"), ("imap", "imap"), ("pop3", "pop3")]
failed = []
srv.start()
try:
    for service, starttls in runs:
        out = work / f"{service}.json"
        out.unlink(missing_ok=True)
        cmd = ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--ip", "127.0.0.1",
               "--add-ca", str(pki / "ca.pem"), "--jsonfile", str(out), "--logfile", str(work / f"{service}.log")]
        cmd += [fast] if fast else []
        cmd += ["-t", starttls] if starttls else []
        cmd.append(f"mail.example.org:{srv.port(service)}")
        print(f"== {service} ({'STARTTLS ' + starttls if starttls else 'implicit TLS'}) port {srv.port(service)}",
              flush=True)
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
        findings = json.loads(out.read_text()) if out.exists() else []
        if not findings:
            failed.append(f"{service}: testssl produced no results")
            continue
        by_id = {f["id"]: f for f in findings}
        bad = [f"{f['id']}: {f['finding']}" for f in findings if f.get("severity") in ("HIGH", "CRITICAL")]
        for proto in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
            if proto in by_id and "not offered" not in by_id[proto]["finding"]:
                bad.append(f"{proto}: {by_id[proto]['finding']}")
        if "TLS1_2" in by_id and "offered" not in by_id["TLS1_2"]["finding"]:
            bad.append(f"TLS1_2: {by_id['TLS1_2']['finding']}")
        trust = [f for f in findings if f["id"].startswith("cert_chain_of_trust")]
        if trust and not all(f.get("severity") in ("OK", "INFO") for f in trust):
            bad.append("chain of trust: " + "; ".join(f["finding"] for f in trust))
        for line in bad:
            print("   FAIL", line)
        if not bad:
            print("   ok: TLS 1.2+ only, trusted chain, nothing HIGH/CRITICAL")
        failed += [f"{service}: {b}" for b in bad]
finally:
    srv.stop()
print(f"results in {work}")
sys.exit(1 if failed else 0)
PY
