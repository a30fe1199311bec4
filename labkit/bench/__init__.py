"""Benchmarks: timing primitives, sweeps, kernel benchmark and the `python -m labkit.bench` commands."""
