"""One Connection interface, two implementations (ssh, local), chosen per device.

Everything above this package speaks in argv tokens; quoting happens here, once, with shlex.
"""

from orchestrator.transport.base import CommandResult, Connection, RemotePath, Target
from orchestrator.transport.factory import abort_all, abort_device, adopt, connect, under_lease

__all__ = ["CommandResult", "Connection", "RemotePath", "Target", "abort_all", "abort_device",
           "adopt", "connect", "under_lease"]
