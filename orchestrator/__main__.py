"""``python -m orchestrator`` = the ``edgefleet`` command."""

from orchestrator.cli.main import main

main()
