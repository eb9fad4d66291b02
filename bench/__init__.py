"""Benchmarks that print figures: ``python -m bench.all [--tiny]`` (see BENCHMARKS.md)."""
