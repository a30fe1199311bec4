"""`python -m labkit.bench <experiment>`: the name the benchmark commands keep; the code is labkit.cli."""
