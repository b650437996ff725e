"""The real-sshd fleet fixtures of tests/fleet (``ssh_user_key``, ``sshd_factory``,
``write_inventory``) and a real ``edgefleet serve`` (``serve``, tests/live_server.py), shared
with the fault scenarios."""

from tests.fleet.conftest import (  # noqa: F401 - fixtures are found by name
    ssh_user_key,
    sshd_factory,
    write_inventory,
)
from tests.live_server import serve  # noqa: F401 - a real `edgefleet serve`, by name
