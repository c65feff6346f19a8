"""Long SIGKILL loop (issue 8): many rounds of SMTP load, SIGKILL at a random moment, restart, check.

    python bench/sigkill_loop.py                   # 50 rounds
    python bench/sigkill_loop.py --rounds 500 --clients 8 --seed 1 --keep /tmp/sigkill

Each round: start the real server (tests/server.py), push SMTP from several client threads, SIGKILL it,
then check with the server down that every message that got a 250 is in its Maildir exactly once and
complete, that no refused message is there, and that the index agrees with the files and kept its UIDs;
after the restart IMAP and POP3 must serve exactly those messages.  The same checks as
tests/reliability/test_sigkill.py, many more times.  Exits 1 on the first broken promise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.reliability.sigkill import run_rounds  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--clients", type=int, default=6, help="SMTP client threads")
    parser.add_argument("--max-acked", type=int, default=60, help="kill after at most this many 250s a round")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="mailsuite-sigkill-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"seed {args.seed}, work directory {work}", flush=True)
    started = time.monotonic()
    try:
        totals = run_rounds(work, args.rounds, args.seed, clients=args.clients, max_acked=args.max_acked,
                            report=True)
    except AssertionError as exc:
        print(f"FAILED (seed {args.seed}, data kept in {work}): {exc}", file=sys.stderr)
        return 1
    print(f"ok: {totals['rounds']} rounds, {totals['acked']} messages acknowledged, {totals['in_flight']} "
          f"killed in flight, {totals['files']} files, {time.monotonic() - started:.0f} s")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
