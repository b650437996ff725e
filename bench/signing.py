"""What pinned keys cost a push on the device: the agent's ``plan`` of a signed bundle on a root
with a key pinned vs the same on a root without, measured alternately in one run.

    python bench/signing.py [--runs 20] [--json]

Why: a device with pinned keys runs ``ssh-keygen -Y verify`` (a process, plus one probing that
``-Y`` exists) in ``plan`` and again in ``activate``. ``plan`` is the command where nothing else
dominates (no upload, no staging, no smoke test), so the ratio here is the upper bound of what
the check adds to a push's agent time. Each sample is a whole agent process (Python start,
imports, plan), as on a device; samples alternate A/B so drift hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: E402
    Ed25519PrivateKey,
)

from agent.build import build_zipapp  # noqa: E402
from agent.protocol import (  # noqa: E402
    MANIFEST_SCHEMA,
    SIGNATURE_NAMESPACE,
    manifest_digest,
    signed_message,
)
from orchestrator.artifacts import sshsig  # noqa: E402


def agent(pyz: Path, root: Path, command: str, doc: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(pyz), "--root", str(root), command],  # noqa: S603
                          input=json.dumps(doc).encode(), capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"agent {command} failed: {proc.stdout.decode()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        pyz = Path(build_zipapp(base / "edgefleet-agent.pyz").path)
        key = Ed25519PrivateKey.generate()
        manifest = {"schema": MANIFEST_SCHEMA, "name": "m", "version": "1", "files": [
            {"path": "model.onnx", "sha256": "ab" * 32, "size": 1}]}
        digest = manifest_digest(manifest)
        signature = {"key": "release", "sshsig": sshsig.sign(
            key, SIGNATURE_NAMESPACE, signed_message("m", "1", digest))}
        request = {"manifest": manifest, "digest": digest, "signature": signature}
        plain, pinned = base / "plain", base / "pinned"
        agent(pyz, pinned, "trust", {"keys": [
            {"name": "release", "public_key": sshsig.public_line(key.public_key())}]})
        times: dict[str, list[float]] = {"unpinned": [], "pinned": []}
        for _ in range(2):  # warm-up: the agent's bytecode cache, the page cache
            agent(pyz, plain, "plan", request)
            agent(pyz, pinned, "plan", request)
        for i in range(args.runs):
            order = [("unpinned", plain), ("pinned", pinned)]
            for name, root in order if i % 2 == 0 else order[::-1]:
                times[name].append(agent(pyz, root, "plan", request))
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    report = {"runs": args.runs, "median_ms": {k: round(v, 1) for k, v in medians.items()},
              "pinned_over_unpinned": round(medians["pinned"] / medians["unpinned"], 2),
              "added_ms": round(medians["pinned"] - medians["unpinned"], 1)}
    if args.json:
        print(json.dumps(report))
        return
    print(f"agent plan, median of {args.runs} alternating runs (whole process each):")
    print(f"  no keys pinned: {medians['unpinned']:.1f} ms   key pinned (signature verified): "
          f"{medians['pinned']:.1f} ms")
    print(f"  pinned / unpinned = {report['pinned_over_unpinned']:.2f}x "
          f"(+{report['added_ms']:.1f} ms per plan; activate verifies once more)")


if __name__ == "__main__":
    main()
