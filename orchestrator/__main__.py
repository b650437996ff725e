"""``python -m orchestrator`` = the ``edgefleet`` command."""

from orchestrator.cli import main

main()
