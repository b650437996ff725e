"""Benchmarks and evaluations and what they mean: running them (``runs``, ``evals``,
``run_lifecycle``), statistics, reports, verdicts, JUnit, trends.

May import: ``fleet``, ``artifacts``, ``inventory``, ``transport``, ``core``.
"""
