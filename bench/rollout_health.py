"""How often a rollout's ``--health-bench`` fails a device that did not get slower, and how often
it catches one that did — for the method it uses and for the one it replaced, side by side in one
run on this machine.

    python bench/rollout_health.py [--rounds 10]

One local simulated Pi (the real agent, real onnxruntime; only sensors simulated). Three
versions of one bundle name: A, a 4 MiB MatMul model; A2, the same size with other random weights
(the same work: a new version that is *not* slower); B, twice A's rows (twice the multiply-adds).
Each round pushes A, then A2, then B, and after each of A2 and B judges the device both ways:

- **separate runs** (what ``--health-bench`` did first): one benchmark of the new version
  (1 thread, 3 warmup + 30 timed runs), judged against the previous version's last benchmark,
  taken right after that version was pushed, by the gate's test (``measure.gate.check``:
  significantly slower — Mann-Whitney U p < 0.05 and the bootstrap 95% CI above 1 — *and* by
  more than 5%);
- **interleaved** (``measure.health.health_bench``, what a rollout runs now): the new version and
  the one it replaced, alternately in 5 rounds of 6 timed runs each, the same gate on the round
  medians.

A2 judged "unhealthy" is a false alarm; B judged "unhealthy" is a detection.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from orchestrator.artifacts.bundles import build_bundle, get_bundle  # noqa: E402
from orchestrator.core.config import Settings  # noqa: E402
from orchestrator.core.db import session_scope  # noqa: E402
from orchestrator.demo.model import make_large_model  # noqa: E402
from orchestrator.demo.simulate import create_simulated_device  # noqa: E402
from orchestrator.fleet.agents import install_agents  # noqa: E402
from orchestrator.fleet.deploy import push  # noqa: E402
from orchestrator.inventory.devices import all_devices, sync_inventory  # noqa: E402
from orchestrator.inventory.reader import load_inventory  # noqa: E402
from orchestrator.measure import gate, runs  # noqa: E402
from orchestrator.measure.health import HEALTH_PARAMS, health_bench  # noqa: E402

ROWS_A = 16384  # 4 MiB of float32 weights x 64 columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-health-") as tmp:
        base = Path(tmp)
        settings = Settings(home=base / "home", database_url=None)
        sim = create_simulated_device(base / "hw")
        inventory = base / "inventory.yml"
        inventory.write_text(yaml.safe_dump(
            {"all": {"hosts": {"pi": sim.local_host_vars(base / "root")}}}))
        with session_scope(settings) as session:
            sync_inventory(session, load_inventory(inventory))
            devices = all_devices(session)
        install_agents(settings, devices)
        refs = {}
        for label, megabytes, rows, seed in (("A", 4, ROWS_A, 0), ("A2", 4, ROWS_A, 1),
                                             ("B", 8, 2 * ROWS_A, 0)):
            folder = base / label
            folder.mkdir()
            make_large_model(folder / "model.onnx", megabytes, seed=seed)
            with session_scope(settings) as session:
                bundle = build_bundle(session, settings, folder, "health",
                                      input_shapes={"x": [1, rows]}).bundle
                refs[label] = f"{bundle.name}@{bundle.version}"

        def bundle_of(label: str):  # noqa: ANN202 - a detached Bundle row
            with session_scope(settings) as session:
                found = get_bundle(session, refs[label])
                session.expunge(found)
                return found

        def separate(label: str, previous_run: int, previous: str) -> tuple[int, bool, float]:
            """Benchmark ``label`` alone; the gate against ``previous_run``."""
            done, _ = runs.bench(settings, [bundle_of(label)], devices, HEALTH_PARAMS, "pi", 1,
                                 None, created_by="bench")
            run_id = done[0].id
            checked = gate.check(settings, previous_run, run_id, previous,
                                 gate.DEFAULT_MAX_REGRESSION)
            (row,) = checked["comparison"]
            return run_id, not checked["gate"]["failed"], row["ratio"]

        def interleaved(label: str) -> tuple[bool, float | None]:
            previous = {"A2": "A", "B": "A2"}[label]
            prior = bundle_of(previous)
            _, verdicts = health_bench(
                settings, bundle_of(label),
                [(devices[0], {"name": prior.name, "digest": prior.digest})], "pi", 1, None,
                job_id=None, created_by="bench")
            return verdicts["pi"].ok, verdicts["pi"].ratio

        results: dict[tuple[str, str], list[tuple[bool, float | None]]] = {}
        started = time.monotonic()
        for round_index in range(args.rounds):
            line = []
            assert all(o.ok for o in push(settings, bundle_of("A"), devices))
            done, _ = runs.bench(settings, [bundle_of("A")], devices, HEALTH_PARAMS, "pi", 1,
                                 None, created_by="bench")
            last, last_label = done[0].id, refs["A"]
            for label in ("A2", "B"):
                assert all(o.ok for o in push(settings, bundle_of(label), devices))
                run_id, ok_sep, ratio_sep = separate(label, last, last_label)
                ok_int, ratio_int = interleaved(label)
                results.setdefault((label, "separate"), []).append((ok_sep, ratio_sep))
                results.setdefault((label, "interleaved"), []).append((ok_int, ratio_int))
                last, last_label = run_id, refs[label]
                line.append(f"{label}: separate {ratio_sep:.2f} {'ok' if ok_sep else 'UNHEALTHY'}"
                            f", interleaved {ratio_int or 0:.2f} "
                            f"{'ok' if ok_int else 'UNHEALTHY'}")
            print(f"round {round_index + 1}: " + "; ".join(line), flush=True)
        took = time.monotonic() - started

    def summary(rows: list[tuple[bool, float | None]]) -> str:
        flagged = sum(1 for ok, _ in rows if not ok)
        values = sorted(r for _, r in rows if r is not None)
        spread = (f"ratio median {statistics.median(values):.2f}, range "
                  f"{values[0]:.2f}-{values[-1]:.2f}") if values else "no ratios"
        return f"{flagged} of {len(rows)} unhealthy; {spread}"

    print()
    for method in ("separate", "interleaved"):
        print(f"{method:>11}: same work (A2 after A): {summary(results[('A2', method)])}")
        print(f"{'':>11}  2x the work (B after A2): {summary(results[('B', method)])}")
    print(f"{args.rounds} rounds in {took:.0f} s")


if __name__ == "__main__":
    main()
