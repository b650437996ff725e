"""Errors users see. Each says what went wrong, names the thing, and, where it can, what to do."""

from __future__ import annotations


class EdgeFleetError(Exception):
    """Base for errors shown to users without a traceback."""


class BundleError(EdgeFleetError):
    pass


class NotFoundError(EdgeFleetError):
    pass


class TransportError(EdgeFleetError):
    """Anything that went wrong talking to one device."""


class HostKeyError(TransportError):
    pass


class AgentError(TransportError):
    """The agent answered with an error result (``code`` from agent.protocol)."""

    def __init__(self, message: str, code: str = "", detail: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail or {}


class SigningError(EdgeFleetError):
    """A signing key or a bundle signature: a bad name, a missing or unsafe key file, a wrong
    passphrase."""
