"""`cmr-assets bench`: every benchmark is a ratio against a plain baseline measured in the same run.

Entry point: `benchmarks.run.run_benchmarks(quick) -> int` (see `benchmarks/run.py`); the method
and the measured figures are in `docs/benchmarks.md`.
"""
