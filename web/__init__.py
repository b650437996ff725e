"""The web control plane: the FastAPI app (``app``), JSON API (``api``, typed by ``schemas``),
HTML pages (``pages/``), tokens/roles/CSRF (``security``), the tokenless loopback gate
(``local_mode``), login, metrics, edge input validation (``inputs``), vendored ``static/``.

May import: ``orchestrator`` services (never ``orchestrator.cli`` or ``orchestrator.demo``).
"""
