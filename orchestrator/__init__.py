"""EdgeFleet control plane: inventory, transport, bundles, deployments, CLI and API."""

__version__ = "0.1.0"
