"""The ``edgefleet`` command: ``main`` registers the command modules, ``app`` holds the typer
apps and what commands share; each other module is one command group: parse, call one
service, render.

May import: every orchestrator package; ``web`` only in ``serve`` (to serve it).
"""
