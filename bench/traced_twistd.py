"""twistd with tracemalloc on, for ``run.py --tracemalloc DIR``: where mailsuite's memory goes.

    python bench/traced_twistd.py OUT_FILE --nodaemon ... mailsuite --config X

On SIGUSR1 the top allocation sites (grouped by file:line, 12 frames kept) are written to OUT_FILE.
tracemalloc slows the server down: figures measured with it are not benchmark figures.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path


def _dump(out: Path) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    stats = snapshot.statistics("lineno")
    total = sum(s.size for s in stats)
    lines = [f"traced total: {total / 1048576:.1f} MiB in {sum(s.count for s in stats)} blocks", "by line:"]
    lines += [f"  {s.size / 1048576:8.2f} MiB {s.count:8d} blocks  {s.traceback[0]}" for s in stats[:30]]
    by_file = snapshot.statistics("filename")
    lines.append("by file:")
    lines += [f"  {s.size / 1048576:8.2f} MiB {s.count:8d} blocks  {s.traceback[0].filename}" for s in by_file[:20]]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    out = Path(sys.argv.pop(1))
    tracemalloc.start(12)
    signal.signal(signal.SIGUSR1, lambda *_: _dump(out))
    from twisted.scripts.twistd import run
    run()


if __name__ == "__main__":
    main()
