"""Benchmarks behind ``raycl bench``: every number is a ratio against a baseline measured in
the same run, with peak memory measured per size in a fresh process."""
