"""Fuzz targets for every parser and engine (issue 8): ``targets.TARGETS`` maps a name to ``fn(data: bytes)``.

Each target raises only AssertionError (a broken invariant) or nothing; any other exception is a bug.
``python -m tests.fuzz`` runs them for a fixed time (atheris when installed, else a hypothesis-driven loop);
``test_fuzz_targets.py`` runs each with a small fixed budget in the test suite.
"""
