"""Benchmarks behind ``ddnn bench`` and ``experiments/bench_*.py``: each prints one JSON line per
measurement. Ratios are measured side by side in one process; absolute times mean something only
on a quiet machine or an accelerator."""
