"""Fixtures for the emulated arm64 Pis (issue 16).

- ``arm_hosts`` (module): ``{"bookworm": ArmHost, "bullseye": ArmHost}``, both started (their
  rootfs built first, in parallel, if the cache lacks it) and stopped after the module; the
  test fails if any process of theirs outlives the stop.

Without root, qemu-user's binfmt_misc entry or debootstrap the tests are skipped with the
reason, unless ``EDGEFLEET_ARM_REQUIRED=1`` (scripts/test.sh sets it, so CI cannot skip them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fleet.conftest import ssh_user_key  # noqa: F401 - the session's user key, by name
from tests.fleet.sshd import UserKey

from .device import ArmHost, namespace_members
from .rootfs import SUITES, arm_ready, ensure_rootfs


def require_arm() -> None:
    reason = arm_ready()
    if reason is None:
        return
    if os.environ.get("EDGEFLEET_ARM_REQUIRED") == "1":
        pytest.fail(f"EDGEFLEET_ARM_REQUIRED=1 but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def arm_hosts(tmp_path_factory: pytest.TempPathFactory,
              ssh_user_key: UserKey) -> Iterator[dict[str, ArmHost]]:  # noqa: F811
    require_arm()
    with ThreadPoolExecutor(len(SUITES)) as pool:  # a cold cache builds both at once
        list(pool.map(ensure_rootfs, SUITES))
    base: Path = tmp_path_factory.mktemp("arm")
    hosts: dict[str, ArmHost] = {}
    try:
        for suite in SUITES:  # started from this (pytest's main) thread: see tests/fleet/sshd.py
            hosts[suite] = ArmHost(f"pi-{suite}", suite, base, ssh_user_key)
        yield hosts
    finally:
        namespaces = [h.pid_namespace for h in hosts.values() if h.pid_namespace]
        for host in hosts.values():
            host.stop()
        leaked = {ns: namespace_members(ns) for ns in namespaces}
        assert not any(leaked.values()), f"processes outlived the emulated devices: {leaked}"
