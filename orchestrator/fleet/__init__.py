"""Doing things on many devices at once: bounded fan-out with one outcome per device
(``fanout``), heartbeated device leases, the agent session and blob streaming
(``agentclient``), agent install and facts, push and rollback (``deploy``), verify, telemetry,
host-key trust, and what raises an alert (``alerts``: offline, newly throttled, failed job,
regression).

May import: ``artifacts``, ``inventory``, ``access``, ``notify``, ``transport``, ``core``,
``agent``'s wire contract.
"""
