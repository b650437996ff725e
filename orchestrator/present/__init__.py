"""Presentation and input parsing shared by the CLI and the web pages: rich tables, progress,
JSON output, byte sizes (``output``), lists and shapes typed by users (``cliparse``).

May import: ``fleet`` and everything below it.
"""
