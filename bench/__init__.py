"""Benchmarks: ratios against baselines run in the same process (`make bench`)."""
