"""Real ``edgefleet`` CLI processes for fault scenarios (so they can be killed for real), a
deadline poll, and a fleet of sshd test hosts with the agent installed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import Cli
from tests.fleet.sshd import SshdHost, write_inventory

REPO = Path(__file__).resolve().parents[2]
CLI_ARGV = [sys.executable, "-c", "from orchestrator.cli.main import main; main()"]
T = TypeVar("T")


def spawn_cli(home: Path, *args: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``edgefleet ARGS`` as its own process (stdout and stderr to ``log``)."""
    environ = dict(os.environ, EDGEFLEET_HOME=str(home), **env)
    with log.open("ab") as out:
        return subprocess.Popen([*CLI_ARGV, *args], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=environ, cwd=REPO)


def wait_until(condition: Callable[[], T], what: str, timeout: float = 60.0,
               proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> T:
    """Poll ``condition`` until it returns something truthy (returned); fail after
    ``timeout`` naming ``what`` (and if ``proc`` ended first, with its log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace")[-5000:] if log else ""
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)  # the poll interval of a deadline loop, not a wait for an outcome


def setup_fleet(cli: Cli, tmp_path: Path, hosts: list[SshdHost], **host_vars: Any) -> None:
    """Inventory (group ``pis``), trusted host keys, the agent installed on every host."""
    inventory = write_inventory(tmp_path / "inventory.yml", hosts,
                                extra_host_vars=host_vars or None)
    cli("inventory", "sync", inventory, "--json")
    cli("devices", "trust", "pis", "--json")
    installed = cli("agent", "install", "pis", "--json").json
    assert all(o["state"] == "installed" for o in installed), installed


def pushed_host(cli: Cli, sshd_factory: Callable[..., list[SshdHost]],
                tmp_path: Path) -> tuple[SshdHost, str]:
    """One sshd host (group ``pis``, agent installed) already running the small classifier:
    the host and the bundle's reference."""
    (host,) = sshd_factory(1)
    setup_fleet(cli, tmp_path, [host])
    ref = small_bundle(cli, tmp_path)
    cli("push", ref, "pis", "--json")
    return host, ref


def part_files(host: SshdHost) -> list[Path]:
    """Uploads in flight on the device (``incoming/*.part*``)."""
    incoming = host.root / "incoming"
    return sorted(incoming.glob("*.part*")) if incoming.is_dir() else []


def small_bundle(cli: Cli, tmp_path: Path, name: str = "clf") -> str:
    """Build the demo classifier (a few KB, golden outputs included) as ``name@1``."""
    import json

    from orchestrator.demo.model import make_demo_classifier

    folder = tmp_path / f"{name}-model"
    folder.mkdir()
    make_demo_classifier(folder / "model.onnx", seed=0)
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "no", "1": "yes"}}))
    built = cli("bundle", "build", folder, "--name", name, "--json").json
    return f"{built['name']}@{built['version']}"


def processes_under(root: Path) -> list[int]:
    """Pids whose command line names ``root`` (the device's agent and its measurement
    children all run from under their edgefleet_root)."""
    needle = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # exited while we looked
    return found


class Worker:
    """One ``edgefleet worker --json`` process (``host`` set: in a UTS namespace of its own with
    that host name, so the others see a worker on another machine: they cannot check its pid,
    only its heartbeats, exactly as across hosts). Stopped with SIGTERM (SIGKILL if it hangs)
    by ``stop``."""

    def __init__(self, home: Path, log: Path, host: str | None = None, workers: int = 2,
                 **env: str) -> None:
        self.log, self.host = log, host
        environ = dict(os.environ, EDGEFLEET_HOME=str(home), **env)
        argv = [*CLI_ARGV, "worker", "--json", "--workers", str(workers)]
        if host is not None:  # the shell renames its namespace's host, then becomes python
            argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *argv]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=environ, cwd=REPO)

    def wait_running(self, timeout: float = 60.0) -> str:
        """The worker id it printed once it took jobs (host:pid:token)."""
        import json

        def started() -> str | None:
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"running"' in line:
                    return str(json.loads(line)["worker"])
            return None

        return wait_until(started, f"worker {self.log.name} to start", timeout, self.proc,
                          self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Worker]]:
    """``workers(home, host=None, **env) -> Worker``, started and running; all stopped at the
    end of the test, and their logs printed if it failed. ``host`` needs root (a UTS
    namespace): skipped otherwise."""
    started: list[Worker] = []

    def start(home: Path, host: str | None = None, **env: str) -> Worker:
        if host is not None and os.geteuid() != 0:
            pytest.skip("another host name needs a UTS namespace: root (as in CI)")
        worker = Worker(home, tmp_path / f"worker-{len(started) + 1}.log", host, **env)
        started.append(worker)
        worker.wait_running()
        return worker

    yield start
    for worker in started:
        worker.stop()
    if any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
           for when in ("setup", "call")):
        for worker in started:
            print(f"--- {worker.log.name} (exit {worker.proc.returncode}) ---\n"
                  f"{worker.log.read_text(errors='replace')[-20_000:]}")
