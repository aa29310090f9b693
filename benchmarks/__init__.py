"""Benchmarks: run each as a module from the repository root, e.g. `python -m benchmarks.select` (a plain `python benchmarks/select.py` would shadow the standard library module `select`)."""
