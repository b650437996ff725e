"""Push throughput vs scp, and the cost of a no-op re-push, measured side by side in one run.

    python bench/push.py [--mb 90] [--repeats 3] [--link loopback|lan|both]

Starts a real sshd (the test harness), builds a ~90 MB ONNX bundle, then alternates ``scp`` of
the model file with ``edgefleet push`` of the bundle to a device emptied of it (every byte
travels and is verified on arrival), and times re-pushes of the unchanged bundle. Each push's
phases (connect, exec + plan, stream, activate + smoke test + close) are timed from its
progress callbacks, so the gap to scp can be attributed. Two links:

- loopback: 127.0.0.1. No network limit, so this measures CPU per byte (Python's paramiko vs
  OpenSSH's C) and fixed per-push costs, magnified.
- lan: sshd in a network namespace behind a veth pair rate-limited (tc tbf) to 940 Mbit/s each
  way, what a Pi 4/5 gets on gigabit Ethernet. No added latency (netem is not in every kernel;
  on a real LAN ~0.2 ms RTT adds a few ms per request round trip). Needs root (ip netns, tc).

The device's sshd is configured like stock Debian / Raspberry Pi OS: scp's server side
(sftp-server) starts through the user's shell, as the agent does, so both pay the same login
costs. Ratios, not absolute numbers, are what carry over between machines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.artifacts.bundles import build_bundle  # noqa: E402
from orchestrator.core.config import Settings  # noqa: E402
from orchestrator.core.db import session_scope  # noqa: E402
from orchestrator.core.models import Bundle, Device  # noqa: E402
from orchestrator.demo.model import make_large_model  # noqa: E402
from orchestrator.fleet.agents import install_agents  # noqa: E402
from orchestrator.fleet.deploy import push  # noqa: E402
from orchestrator.inventory.devices import all_devices, sync_inventory  # noqa: E402
from orchestrator.inventory.reader import load_inventory  # noqa: E402
from orchestrator.transport.hostkeys import trust  # noqa: E402
from tests.fleet.sshd import SshdHost, UserKey, generate_user_key, write_inventory  # noqa: E402

LAN_RATE = "940mbit"
# Stock Debian / Raspberry Pi OS sshd_config: scp's server side starts through the user's shell
# like every exec does (the test harness's internal-sftp would let scp skip the shell's rc
# files, which on this machine run `pyenv init`, while the agent's exec pays them).
STOCK_SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)  # noqa: S603


@contextlib.contextmanager
def lan_namespace() -> Iterator[tuple[str, str]]:
    """(netns name, device address) behind a shaped veth pair; removed afterwards."""
    ns, outside, inside = f"efbench{os.getpid()}", "efb0", "efb1"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        sh("ip", "link", "set", inside, "netns", ns)
        sh("ip", "addr", "add", "10.201.0.1/24", "dev", outside)
        sh("ip", "link", "set", outside, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", "10.201.0.2/24", "dev", inside)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        for prefix, dev in (((), outside), (("ip", "netns", "exec", ns), inside)):
            sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", LAN_RATE,
               "burst", "512kb", "latency", "50ms")
        yield ns, "10.201.0.2"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)  # noqa: S603 (removes the pair)


def empty_device(root: Path) -> None:
    for name in ("blobs", "versions", "incoming", "cache"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in ("current", "state.json"):
        (root / name).unlink(missing_ok=True)


class PhaseClock:
    """deploy.PushProgress that timestamps each state change: where a push spends its time."""

    PHASES = ("connect", "exec + plan", "stream", "activate + smoke + close")

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def start(self, device: str, total_bytes: int) -> None: ...
    def advance(self, device: str, nbytes: int) -> None: ...

    def state(self, device: str, state: str) -> None:
        self.marks.setdefault(state if state in ("planning", "transferring", "verifying")
                              else "done", time.perf_counter())

    def phases(self, started: float) -> dict[str, float]:
        """Seconds per phase; "connect" includes the lease and the deployment row."""
        edges = [started] + [self.marks[s] for s in ("planning", "transferring", "verifying",
                                                      "done")]
        return {name: b - a for name, a, b in zip(self.PHASES, edges[:-1], edges[1:],
                                                  strict=True)}


def prepare(tag: str, host: SshdHost, key: UserKey, model: Path,
            base: Path) -> tuple[Settings, list[Device], Bundle, list[str]]:
    """A home (``base/home-TAG``) with ``host`` trusted, synced and its agent installed, and a
    bundle ``big`` of ``model``'s folder; plus the scp command line that copies the same file
    to the same host (as the same user, key checked the same way) into ``base/scp-copy``.
    Shared with bench/cli_startup.py."""
    settings = Settings(home=base / f"home-{tag}", database_url=None)
    inventory = write_inventory(base / f"inventory-{tag}.yml", [host])
    trust(host.name, host.address, host.port, settings, 10.0)
    with session_scope(settings) as session:
        sync_inventory(session, load_inventory(inventory))
        devices = all_devices(session)
    _, installed = install_agents(settings, devices)
    assert installed[0].ok, installed[0].error
    with session_scope(settings) as session:
        bundle = build_bundle(session, settings, model.parent, "big").bundle
    known_hosts = host.write_known_hosts(base / f"scp_known_hosts-{tag}")
    scp_argv = ["scp", "-q", "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-i", str(key.private_key),
                "-P", str(host.port), str(model), f"{host.user}@{host.address}:{base}/scp-copy"]
    return settings, devices, bundle, scp_argv


def measure(label: str, host: SshdHost, key: UserKey, model: Path, base: Path,
            repeats: int) -> None:
    tag = label.split()[0]  # file names: the label has spaces
    settings, devices, bundle, scp_argv = prepare(tag, host, key, model, base)

    scp_s, push_s, smoke_s = [], [], []
    phases: dict[str, list[float]] = {name: [] for name in PhaseClock.PHASES}
    for _ in range(repeats):
        (base / "scp-copy").unlink(missing_ok=True)
        started = time.perf_counter()
        subprocess.run(scp_argv, check=True)  # noqa: S603
        scp_s.append(time.perf_counter() - started)

        empty_device(host.root)
        clock = PhaseClock()
        started = time.perf_counter()
        outcome = push(settings, bundle, devices, progress=clock)[0]
        push_s.append(time.perf_counter() - started)
        for name, seconds in clock.phases(started).items():
            phases[name].append(seconds)
        assert outcome.ok and outcome.data["bytes_sent"] == bundle.size_bytes, outcome
        smoke_s.append((outcome.data.get("smoke_detail") or {}).get("ms", 0.0) / 1000.0)

    repush_s, repush_bytes = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        outcome = push(settings, bundle, devices)[0]
        repush_s.append(time.perf_counter() - started)
        repush_bytes.append(outcome.data["bytes_sent"])
        assert outcome.state == "unchanged", outcome

    mb = bundle.size_bytes / 1e6
    scp_med, push_med = statistics.median(scp_s), statistics.median(push_s)
    print(f"\n[{label}] {mb:.1f} MB bundle, {repeats} alternating repeats, medians")
    print(f"  scp            {scp_med:6.2f} s  {mb / scp_med:7.1f} MB/s")
    print(f"  edgefleet push {push_med:6.2f} s  {mb / push_med:7.1f} MB/s"
          "  (connect, plan, stream + sha256 + fsync on device, activate)")
    print(f"  push/scp throughput ratio: {scp_med / push_med:.2f}x  (goal >= 0.9x)")
    print("  push phases, median s: " + ", ".join(
        f"{name} {statistics.median(values):.3f}" for name, values in phases.items()))
    smoke_med = statistics.median(smoke_s)
    if smoke_med:
        print(f"  of which the on-device smoke test (golden outputs, model load + run): "
              f"{smoke_med:.2f} s; push without it {push_med - smoke_med:.2f} s -> "
              f"{scp_med / (push_med - smoke_med):.2f}x of scp (what scp does: no verification)")
    print(f"  re-push unchanged: median {statistics.median(repush_s):.3f} s per device, "
          f"bytes sent {repush_bytes}  (goal < 0.5 s, 0 bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=90.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--link", choices=("loopback", "lan", "both"), default="both")
    parser.add_argument("--pin", action="store_true",
                        help="control plane (and scp) on CPU 0, the device's sshd on CPU 1: "
                        "two machines' worth of CPU instead of one shared pair")
    args = parser.parse_args()
    device_cpus = None
    if args.pin:
        os.sched_setaffinity(0, {0})
        device_cpus = "1"

    base = Path(tempfile.mkdtemp(prefix="edgefleet-bench-push-"))
    try:
        key = generate_user_key(base)
        model = make_large_model(base / "model" / "model.onnx", args.mb)
        if args.link in ("loopback", "both"):
            with SshdHost("bench-loopback", base, key, cpus=device_cpus,
                          sftp_server=STOCK_SFTP_SERVER) as host:
                measure("loopback", host, key, model, base, args.repeats)
        if args.link in ("lan", "both"):
            with lan_namespace() as (ns, address), \
                    SshdHost("bench-lan", base, key, address=address, netns=ns,
                             cpus=device_cpus, sftp_server=STOCK_SFTP_SERVER) as host:
                measure(f"lan {LAN_RATE}", host, key, model, base, args.repeats)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
