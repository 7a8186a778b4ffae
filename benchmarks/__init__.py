"""Throughput benchmarks (issue #5): ``pytest benchmarks`` from the repo root.

A package, so the test modules and the memory probe (``python -m
benchmarks.chunk_memory``) share :mod:`benchmarks.common`.
"""
