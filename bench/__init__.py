"""Benchmarks. Run `python -m bench` (or `make bench`); see bench/core.py."""
