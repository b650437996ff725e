"""Benchmarks and evaluations and what they mean: running them (``runs``, ``evals``,
``run_lifecycle``, ``rounds``), statistics (``stats``; ``pairing``: which results of
two runs are compared, and the gate), reports (``verdictreport``: verdicts as tables),
verdicts, JUnit, trends.

May import: ``fleet``, ``artifacts``, ``inventory``, ``transport``, ``core``.
"""
