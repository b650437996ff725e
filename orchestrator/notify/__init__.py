"""Telling people outside EdgeFleet: signed webhook delivery, retried in the background
(``webhooks``; one signed POST and the receiver's check, ``wire``). What raises an alert is
decided where the facts are (``fleet.alerts``).

May import: ``core``.
"""
