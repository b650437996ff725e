"""Push throughput vs scp, and the cost of a no-op re-push, measured side by side in one run.

    python bench/push.py [--mb 90] [--repeats 3]

Starts a real sshd on loopback (the test harness), builds a ~90 MB ONNX bundle, then alternates:
``scp`` of the model file, and ``edgefleet push`` of the bundle to a device emptied of it (so every
byte travels and is verified on arrival). Prints medians and the ratio; then times re-pushes of the
unchanged bundle (0 model bytes expected). Ratios, not absolute numbers, are what carry over
between machines.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.agents import install_agents  # noqa: E402
from orchestrator.bundles import build_bundle  # noqa: E402
from orchestrator.config import Settings  # noqa: E402
from orchestrator.db import session_scope  # noqa: E402
from orchestrator.demo_model import make_large_model  # noqa: E402
from orchestrator.deploy import push  # noqa: E402
from orchestrator.devices import all_devices, sync_inventory  # noqa: E402
from orchestrator.hostkeys import trust  # noqa: E402
from orchestrator.inventory import load_inventory  # noqa: E402
from tests.fleet.sshd import SshdHost, generate_user_key, write_inventory  # noqa: E402


def empty_device(root: Path) -> None:
    for name in ("blobs", "versions", "incoming", "cache"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in ("current", "state.json"):
        (root / name).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=90.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="edgefleet-bench-push-"))
    key = generate_user_key(base)
    host = SshdHost("bench-pi", base, key)
    try:
        settings = Settings(home=base / "home", database_url=None)
        inventory = write_inventory(base / "inventory.yml", [host])
        trust(host.name, host.address, host.port, settings.known_hosts, 10.0)
        with session_scope(settings) as session:
            sync_inventory(session, load_inventory(inventory))
            devices = all_devices(session)
        _, installed = install_agents(settings, devices)
        assert installed[0].ok, installed[0].error
        model = make_large_model(base / "model" / "model.onnx", args.mb)
        size = model.stat().st_size
        with session_scope(settings) as session:
            bundle = build_bundle(session, settings, model.parent, "big").bundle
        known_hosts = host.write_known_hosts(base / "scp_known_hosts")
        scp_argv = ["scp", "-q", "-o", f"UserKnownHostsFile={known_hosts}",
                    "-o", "StrictHostKeyChecking=yes", "-i", str(key.private_key),
                    "-P", str(host.port), str(model), f"{host.user}@127.0.0.1:{base}/scp-copy"]

        scp_s, push_s = [], []
        for _ in range(args.repeats):
            (base / "scp-copy").unlink(missing_ok=True)
            started = time.perf_counter()
            subprocess.run(scp_argv, check=True)  # noqa: S603
            scp_s.append(time.perf_counter() - started)

            empty_device(host.root)
            started = time.perf_counter()
            outcome = push(settings, bundle, devices)[0]
            push_s.append(time.perf_counter() - started)
            assert outcome.ok and outcome.data["bytes_sent"] == bundle.size_bytes, outcome

        repush_s, repush_bytes = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            outcome = push(settings, bundle, devices)[0]
            repush_s.append(time.perf_counter() - started)
            repush_bytes.append(outcome.data["bytes_sent"])
            assert outcome.state == "unchanged", outcome

        mb = size / 1e6
        scp_med, push_med = statistics.median(scp_s), statistics.median(push_s)
        print(f"model file: {mb:.1f} MB; bundle {bundle.size_bytes / 1e6:.1f} MB; "
              f"{args.repeats} alternating repeats, medians")
        print(f"scp            {scp_med:6.2f} s  {mb / scp_med:7.1f} MB/s")
        print(f"edgefleet push {push_med:6.2f} s  {bundle.size_bytes / 1e6 / push_med:7.1f} MB/s"
              "  (connect, plan, send, verify sha256 on device, activate)")
        ratio = (bundle.size_bytes / push_med) / (size / scp_med)
        print(f"push/scp throughput ratio: {ratio:.2f}x  (goal >= 0.9x)")
        print(f"re-push unchanged: median {statistics.median(repush_s):.3f} s per device, "
              f"bytes sent {repush_bytes}  (goal < 0.5 s, 0 bytes)")
    finally:
        host.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
