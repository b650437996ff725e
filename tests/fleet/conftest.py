"""Fixtures for real-sshd fleet tests.

- ``ssh_user_key`` (session): the ed25519 key pair every test host accepts (:class:`UserKey`).
- ``sshd_factory``: ``make(n=3, **opts) -> list[SshdHost]`` starts ``n`` hosts named
  ``pi1, pi2, ...`` (numbering continues across calls in one test); ``opts`` are
  :class:`SshdHost` keyword options (``odd_root``, ``odd_sim_dir``, ``sim_options``, ``port``,
  ``start``). Every host it made is stopped when the test ends, pass or fail.
- ``write_inventory``: :func:`sshd.write_inventory`, ``(path, hosts, group="pis",
  extra_host_vars=None, group_vars=None) -> Path``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live_server import serve  # noqa: F401 - a real `edgefleet serve`, by name

from .sshd import SshdFactory, SshdHost, UserKey, generate_user_key
from .sshd import write_inventory as _write_inventory


@pytest.fixture(scope="session")
def ssh_user_key(tmp_path_factory: pytest.TempPathFactory) -> UserKey:
    """One ed25519 user key pair for the whole session."""
    return generate_user_key(tmp_path_factory.mktemp("ssh-user-key"))


@pytest.fixture
def sshd_factory(tmp_path: Path, ssh_user_key: UserKey) -> Iterator[SshdFactory]:
    """Factory of started :class:`SshdHost` test hosts; tears all of them down afterwards."""
    hosts: list[SshdHost] = []
    numbers = itertools.count(1)

    def make(n: int = 3, **opts: Any) -> list[SshdHost]:
        start = opts.pop("start", True)
        made = []
        for _ in range(n):
            host = SshdHost(
                f"pi{next(numbers)}", tmp_path / "fleet", ssh_user_key, start=False, **opts
            )
            hosts.append(host)  # registered before starting: a failed start is torn down too
            made.append(host)
            if start:
                host.start()
        return made

    yield make

    errors = []
    for host in reversed(hosts):
        try:
            host.stop()
        except Exception as exc:  # keep stopping the others
            errors.append(f"{host.name}: {exc!r}")
    if errors:
        raise RuntimeError("stopping sshd test hosts failed: " + "; ".join(errors))


@pytest.fixture
def write_inventory() -> Callable[..., Path]:
    """``write_inventory(path, hosts, group="pis", extra_host_vars=None, group_vars=None)``."""
    return _write_inventory
