"""A control plane with more than 1024 open descriptors (a server talking to hundreds of
devices has a socket and a pipe per channel) still reads its devices' output.

The fault, for real: this process opens 1100 extra descriptors, then runs commands and a
telemetry poll over a real sshd. ``select.select`` raised "filedescriptor out of range" there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.config import Settings
from orchestrator.transport import connect
from orchestrator.transport.base import Target
from tests.conftest import Cli

from .procs import setup_fleet

EXTRA = 1100


@pytest.fixture
def crowded() -> Iterator[int]:
    """Open EXTRA descriptors (duplicates of /dev/null); yields the highest one."""
    null = os.open(os.devnull, os.O_RDONLY)
    fds = [os.dup(null) for _ in range(EXTRA)]
    try:
        yield max(fds)
    finally:
        for fd in [*fds, null]:
            os.close(fd)


def test_device_output_is_read_past_descriptor_1024(cli: Cli, home: Path, sshd_factory,
                                                    tmp_path: Path, crowded: int) -> None:
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    assert crowded > 1024
    target = Target(host.name, host.address, host.port, key_file=str(host.key_file))
    with connect(target, Settings(home=home), timeout=10) as conn:
        result = conn.run(["sh", "-c", "sleep 0.2; echo late"])
    assert (result.exit_code, result.stdout) == (0, "late\n")
    (polled,) = cli("telemetry", "pis", "--json").json
    assert polled["ok"], polled
