"""Benchmark of regd against the reference registry (Distribution); run `python bench/run.py`."""
