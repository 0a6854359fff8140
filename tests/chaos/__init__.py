"""The chaos run (issue 6, section 1): `python -m tests.chaos run --help`.

Lives under tests/ because it is built from the fault tests' support code (the
process and server helpers, the database checks, the poison cases) and loads
test-only saga definitions; `tests/chaos/test_chaos.py` runs a small seeded run
in CI. See tests/chaos/run.py for what a run does and checks; its parts are
plan.py (settings, seeded plans), stack.py (the processes), progress.py, faults.py
(injecting them), workload.py, quiescence.py, checks.py and report.py (the tables).
"""
