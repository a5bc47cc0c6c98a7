"""Benchmarks: each step of a round set beside a bare PyTorch loop doing the same arithmetic.

Run ``python -m benchmarks`` (``--quick`` for a smaller run, ``--json`` for one JSON
document). Each benchmark times the ``icl`` code path and its bare reference in one
process, interleaved (A B A B ...), and reports the median of the per-pair ratios, so a
load change on the machine moves both sides of a pair alike. Not part of the test suite.
See BENCHMARKS.md for the figures and what they mean.
"""
