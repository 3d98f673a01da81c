"""Benchmarks behind ``blindfed bench``: each compares against a baseline timed in the same run."""
