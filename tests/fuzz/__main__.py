"""Run the fuzz targets for a fixed time: ``python -m tests.fuzz [TARGET ...] [--seconds N]``.

With atheris installed (``pip install atheris``; coverage-guided libFuzzer) one target runs per process;
without it a hypothesis-driven random loop runs each target in turn for its share of the time.  A failing
input is printed (and, with atheris, written as ``crash-*`` in the current directory).  Exit status 1 on a
failure.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import types
from typing import Any

from .targets import TARGETS

#: inputs per hypothesis run; runs repeat until the time is up
BATCH = 200


def run_hypothesis(name: str, seconds: float) -> bool:
    """Batches of random inputs from hypothesis (shrunk on failure) until ``seconds`` have passed."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    target = TARGETS[name]
    runs = 0

    @settings(max_examples=BATCH, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=4096))
    def batch(data: bytes) -> None:
        nonlocal runs
        runs += 1
        target(data)

    deadline = time.monotonic() + seconds
    while True:
        try:
            batch()
        except Exception:  # noqa: BLE001 - report any failure with the shrunk input
            traceback.print_exc()
            print(f"{name}: FAILED after {runs} inputs", flush=True)
            return False
        if time.monotonic() >= deadline:
            break
    print(f"{name}: ok, {runs} inputs in {seconds:.0f} s", flush=True)
    return True


def _instrument(atheris: Any) -> None:
    """Coverage for mailsuite and the targets only (``instrument_all`` would take minutes on Twisted)."""
    seen: set[int] = set()
    for module_name, module in list(sys.modules.items()):
        if not (module_name.startswith("mailsuite") or module_name == "tests.fuzz.targets"):
            continue
        for value in list(vars(module).values()):
            members = list(vars(value).values()) if isinstance(value, type) else [value]
            for member in members:
                member = getattr(member, "__func__", member)        # static and class methods
                if (isinstance(member, types.FunctionType) and id(member) not in seen
                        and getattr(member, "__module__", "") == module_name):
                    seen.add(id(member))
                    atheris.instrument_func(member)


def run_atheris(name: str, seconds: float) -> None:
    import atheris

    target = TARGETS[name]
    _instrument(atheris)
    # -timeout: one input running longer than 10 s is a failure too (a hang in an engine)
    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-max_len=4096", "-timeout=10"], target)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=float, default=60.0, help="total time (default 60)")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    args = parser.parse_args(argv)
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris" if len(names) == 1 else "hypothesis"
        except ImportError:
            engine = "hypothesis"
    if engine == "atheris":
        if len(names) != 1:
            parser.error("atheris runs one target per process")
        run_atheris(names[0], args.seconds)     # exits the process itself
        return 0
    share = args.seconds / len(names)
    ok = [run_hypothesis(name, share) for name in names]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
