"""Fault-injection tests (issue 8): kills during extraction and training, bad videos, bad annotation
files, a damaged cache, two writers, a full disk. `python -m tests.faults` runs them at full trial counts
and prints the summary table; the default pytest run keeps small counts (CI)."""
