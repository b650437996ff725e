"""The real-sshd fleet fixtures of tests/fleet (``ssh_user_key``, ``sshd_factory``,
``write_inventory``), shared with the fault scenarios."""

from tests.fleet.conftest import (  # noqa: F401 - fixtures are found by name
    ssh_user_key,
    sshd_factory,
    write_inventory,
)
