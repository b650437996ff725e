"""Doing things on many devices at once: bounded fan-out with one outcome per device
(``fanout``), heartbeated device leases, the agent session and blob streaming
(``agentclient``), agent install and facts, push and rollback (``deploy``), verify, telemetry.

May import: ``artifacts``, ``inventory``, ``access``, ``transport``, ``core``, ``agent``'s
wire contract.
"""
