"""A worker's blob fetch from the control plane vs curl, measured side by side in one run.

    python bench/blob_fetch.py [--mb 64] [--repeats 3]

Starts a real ``edgefleet serve`` (an operator token) on loopback with one random blob of
``--mb`` MB in its store, then alternates, ``--repeats`` times: EdgeFleet's fetch
(``blobfetch.ensure_local`` into an empty store: streamed, sha256- and size-verified, fsynced,
renamed) and ``curl -o`` of the same URL with the same token (C, no verification, no fsync),
plus ``sha256sum`` of the file (the hash alone). Loopback has no network limit, so this
measures what the fetch costs per byte on this machine; the ratio, not the MB/s, carries over.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.access.auth import create_token  # noqa: E402
from orchestrator.artifacts.blobfetch import Needed, blob_store, ensure_local  # noqa: E402
from orchestrator.artifacts.blobstore import BlobStore  # noqa: E402
from orchestrator.core.config import Settings  # noqa: E402
from tests.fleet.sshd import free_port  # noqa: E402

SERVE = [sys.executable, "-c", "from orchestrator.cli.main import main; main()", "serve"]


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-fetch-") as tmp:
        base = Path(tmp)
        cp = Settings(home=base / "control-plane")
        source = base / "blob.bin"
        source.write_bytes(os.urandom(args.mb * 1_000_000))
        sha, size = BlobStore(cp.blob_dir).add_file(source)
        create_token(cp, "bench-admin", "admin")
        _, token = create_token(cp, "bench-worker", "operator")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, EDGEFLEET_HOME=str(cp.home))
        env.pop("DATABASE_URL", None)
        server = subprocess.Popen([*SERVE, "--host", "127.0.0.1", "--port", str(port)],  # noqa: S603
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/api/devices", timeout=2,
                                 headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("edgefleet serve did not start")
                time.sleep(0.1)  # poll interval of the deadline loop
            rows: dict[str, list[float]] = {"edgefleet fetch": [], "curl -o": [],
                                            "sha256sum": []}
            for i in range(args.repeats):
                worker = Settings(home=base / f"worker-{i}", control_plane_url=url,
                                  control_plane_token=token)
                rows["edgefleet fetch"].append(timed(lambda w=worker: ensure_local(
                    w, blob_store(w), [Needed(sha, size, "bench blob")])))
                out = base / f"curl-{i}.bin"
                rows["curl -o"].append(timed(lambda o=out: subprocess.run(  # noqa: S603
                    ["curl", "-sf", "-H", f"Authorization: Bearer {token}", "-o", str(o),
                     f"{url}/api/blobs/{sha}"], check=True)))
                rows["sha256sum"].append(timed(lambda o=out: subprocess.run(  # noqa: S603
                    ["sha256sum", str(o)], check=True, capture_output=True)))
                out.unlink()
        finally:
            server.terminate()
            server.wait(10)
    print(f"{args.mb} MB blob over loopback, median of {args.repeats} (alternated)")
    print(f"{'':16} {'median s':>9} {'MB/s':>8} {'vs curl':>8}")
    curl = statistics.median(rows["curl -o"])
    for name, times in rows.items():
        med = statistics.median(times)
        print(f"{name:16} {med:9.3f} {args.mb / med:8.0f} {med / curl:8.2f}")


if __name__ == "__main__":
    main()
