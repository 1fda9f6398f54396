"""Benchmarks that print numbers: ``python -m resprune.bench {select,prefill,scenes} [options]``.

Each sub-benchmark is a module here with a ``main(argv: list[str]) -> int``; targets are reported as measured
ratios from one run, never asserted in unit tests.
"""
