"""Evaluation runs: push a dataset, run the agent's ``eval`` on every device (bounded fan-out,
one lease per device), score what each device predicted, store it like a benchmark.

Stored (docs/pipeline.md "Eval results"): one ``Run(kind="eval")``, ``params`` = dataset, threads,
warmup, positive class, threshold, profile; one ``Result`` per device x thread count whose
latency columns and raw ``latencies`` are the per-sample INFERENCE times (so ``runs compare``
of two evals works unchanged; trends, the version heatmap, /metrics and change points read
benchmark runs only, and a benchmark is never compared with an eval), with
``detail["preprocessing_ms"]`` (per sample, same order), ``detail["eval"]``
(``evalmetrics.evaluate``: metrics, confusion matrix, sweep, recommendation) and
``detail["samples"]`` (id, label, predicted class, probabilities).

Why metrics are computed here and not on the device: the device only reports what the model
said; one implementation scores every device, so two devices differ only if their models did.
Why agreement is computed on read (``run_agreement``): it is a pure function of the stored
samples, and a result stored later (or deleted) can never leave a stale verdict behind.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.artifacts.blobfetch import blob_store, ensure_local, needed_files
from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.artifacts.bundles import manifest_of
from orchestrator.artifacts.datasets import (
    DatasetError,
    check_labels,
    class_id_names,
    manifest_of_dataset,
    model_labels,
)
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import AgentError, EdgeFleetError
from orchestrator.core.models import Bundle, Dataset, Device, Result, Run
from orchestrator.core.numbers import finite
from orchestrator.fleet.agentclient import AgentSession, disk_free, plan_uploads
from orchestrator.fleet.fanout import Outcome, fan_out
from orchestrator.fleet.leases import leased
from orchestrator.inventory.devices import DeviceReport, record_device_report, to_target
from orchestrator.measure import evalmetrics
from orchestrator.measure.entries import checked_common, checked_entries
from orchestrator.measure.run_lifecycle import (
    close_runs,
    failure_row,
    keeping,
    missing_threads,
    open_runs,
    session_failure,
    unexpected_failure,
)
from orchestrator.measure.runs import result_row
from orchestrator.transport import Target, connect

EventHandler = Callable[[str, dict[str, Any]], None]


@dataclass
class EvalPlan:
    """What every device's results are scored against, checked before anything runs."""

    class_names: list[str]
    positive: int | None
    threshold: float
    manifest: dict[str, Any]  # the dataset's
    # A dataset of class ids (integer labels built without --for): id -> the model's name.
    label_names: dict[str, str] | None = None

    def label_of(self, label: str) -> str:
        """A sample's label as the model names it."""
        return self.label_names.get(label, label) if self.label_names else label


def plan_eval(bundle: Bundle, dataset: Dataset, positive: str | None,
              threshold: float) -> EvalPlan:
    """Refuse early what cannot be scored: labels the model lacks, another sampling rate, an
    unknown positive class, a threshold outside [0, 1]."""
    ref = f"{bundle.name}@{bundle.version}"
    names = model_labels(bundle)
    data = manifest_of_dataset(dataset)
    given = sorted({s["label"] for s in data["samples"]})
    what = f"dataset {dataset.name}@{dataset.version}"
    label_names = class_id_names(given, names, what) if data.get("label_ids") else None
    check_labels(sorted(label_names.values()) if label_names else given, names, what)
    rate = (manifest_of(bundle).get("preprocessing") or {}).get("sampling_rate")
    if dataset.format == "audio" and rate and dataset.sampling_rate != rate:
        raise DatasetError(f"dataset {dataset.name}@{dataset.version} is at "
                           f"{dataset.sampling_rate} Hz, {ref} expects {rate} Hz: rebuild it "
                           f"with `edgefleet dataset build DIR --name {dataset.name} --for {ref}`")
    if not 0.0 <= threshold <= 1.0:
        raise EdgeFleetError(f"--threshold {threshold}: must be within [0, 1]")
    index = None
    if positive is not None:
        if positive not in names:
            raise EdgeFleetError(f"--positive {positive!r}: {ref}'s labels are "
                                 f"{', '.join(names)}")
        index = names.index(positive)
    return EvalPlan(names, index, threshold, data, label_names)


def push_dataset(agent: AgentSession, dataset: Dataset, store: BlobStore,
                 manifest: dict[str, Any]) -> int:
    """Plan, send what the device lacks, stage; the bytes sent (0 when already staged)."""
    payload = {"manifest": manifest, "digest": dataset.digest}
    plan = agent.call("dataset_plan", payload)
    if plan.get("already_staged"):
        return 0
    files = {f["sha256"]: f for f in manifest["files"]}
    # a dropped transfer's prefix is kept (plan_uploads)
    uploads = plan_uploads(plan, files, store.path, agent.name)
    total = sum(u.to_send for u in uploads)
    free = disk_free(plan)
    if free is not None and total > free:
        raise EdgeFleetError(f"{agent.name}: not enough disk space for dataset {dataset.name}@"
                             f"{dataset.version}: {total / 1e6:.1f} MB to send, "
                             f"{free / 1e6:.1f} MB free. Nothing was sent.")
    agent.send_blobs(uploads)
    agent.call("dataset_stage", payload)
    return total


def score(entry: dict[str, Any], plan: EvalPlan) -> dict[str, Any]:
    """``detail`` additions for one device x threads entry: metrics, samples, preprocessing."""
    samples = checked_samples(entry.get("samples"), plan)
    names = plan.class_names
    probs = np.asarray([s["probs"] for s in samples], dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise EdgeFleetError(f"the model gave {probs.shape[-1] if probs.ndim == 2 else '?'} "
                             f"scores per sample but has {len(names)} labels ({', '.join(names)})")
    labels = [names.index(s["label"]) for s in samples]
    metrics = evalmetrics.evaluate(labels, probs, names, plan.positive, plan.threshold)
    preds = metrics.pop("predictions")
    return {
        "eval": metrics,
        "preprocessing_ms": [s["pre_ms"] for s in samples],
        "preprocessing_stats": entry.get("preprocessing_ms"),
        "samples": [{"id": s["id"], "label": s["label"], "pred": names[p],
                     "probs": s["probs"]} for s, p in zip(samples, preds, strict=True)],
        "output": entry.get("output"), "energy": entry.get("energy"),
    }


def checked_samples(samples: Any, plan: EvalPlan) -> list[dict[str, Any]]:
    """The device's predictions, one per sample of the dataset, each once, in the dataset's
    order; the label is the dataset's (the device only says what the model answered).

    Why: a device is untrusted, and its sample list was scored as sent: an ``"id": [1]``
    made the run's agreement (a dict keyed by id) fail on every view of the run for good, a
    ``"pre_ms": "x"`` the run page's median, and a device that left samples out or repeated
    one was scored on another dataset than the one named."""
    wanted = [(s["id"], plan.label_of(s["label"])) for s in plan.manifest["samples"]]
    given: dict[str, dict[str, Any]] = {}
    for s in samples if isinstance(samples, list) else []:
        if not isinstance(s, dict) or not isinstance(s.get("id"), str) or s["id"] in given:
            raise EdgeFleetError("the device's predictions are not one object per sample with "
                                 "its id, each once")
        given[s["id"]] = s
    if len(given) != len(wanted) or any(i not in given for i, _ in wanted):
        raise EdgeFleetError(f"the device answered {len(given)} samples, not the dataset's "
                             f"{len(wanted)}")
    out = []
    for sample_id, label in wanted:
        s = given[sample_id]
        probs = s.get("probs")
        checked = [finite(p) for p in probs] if isinstance(probs, list) else [None]
        if None in checked:
            raise EdgeFleetError(f"sample {sample_id[:80]}: the device's scores are not a list "
                                 "of finite numbers")
        out.append({"id": sample_id, "label": label, "probs": checked,
                    "pre_ms": finite(s.get("pre_ms"))})
    return out


def evaluate(settings: Settings, bundle: Bundle, dataset: Dataset, devices: Sequence[Device],
             threads: Sequence[int], positive: str | None, threshold: float, forks: int = 10,
             timeout: float | None = None, on_event: EventHandler | None = None,
             created_by: str | None = None, profile: dict[str, Any] | None = None, *,
             warmup: int = 1, targets: str | None = None, job_id: int | None = None,
             cancelled: Callable[[], bool] | None = None) -> tuple[Run, list[Outcome]]:
    """Evaluate ``bundle`` (already pushed) on ``dataset`` on every device; one Run."""
    plan = plan_eval(bundle, dataset, positive, threshold)
    store = blob_store(settings)
    # A worker that did not load the dataset fetches its blobs first, before any run is open.
    ensure_local(settings, store, needed_files(plan.manifest, f"{dataset.name}@{dataset.version}"))
    with session_scope(settings) as session:
        run = Run(kind="eval", bundle_name=bundle.name, bundle_version=bundle.version,
                  bundle_digest=bundle.digest,
                  targets=targets or ",".join(d.name for d in devices),
                  params={"dataset": {"name": dataset.name, "version": dataset.version,
                                      "digest": dataset.digest, "format": dataset.format,
                                      "samples": dataset.samples},
                          "threads": list(threads), "warmup": warmup,
                          "positive": None if plan.positive is None
                          else plan.class_names[plan.positive],
                          "threshold": threshold, "labels": plan.class_names,
                          "profile": profile},
                  created_by=created_by or getpass.getuser())
        open_runs(session, [run], job_id)
        session.expunge(run)
    simulated = {d.name: d.simulated for d in devices}
    request = {"digest": bundle.digest, "dataset": dataset.digest, "threads": list(threads),
               "warmup": warmup}

    def step(target: Target) -> Outcome:
        started = time.monotonic()
        errors: list[str] = []
        sent = 0
        relay = (lambda e: on_event(target.name, e)) if on_event else None
        measured: list[tuple[dict[str, Any], dict[str, Any]]] = []  # kept if the call fails
        # Each thread count's row, stored as soon as the agent reports it finished: a control
        # plane killed later (SIGKILL, a crash) still leaves it in the DB.
        stored: dict[Any, Result] = {}
        failure: str | None = None
        report = DeviceReport()  # what the device says it runs (and reverted): the DB follows

        def row_of(entry: dict[str, Any], common: dict[str, Any]) -> Result:
            row = result_row(run, target, simulated[target.name], bundle.precision,
                             entry, common)
            if entry.get("ok"):
                try:
                    row.detail = dict(row.detail) | score(entry, plan)
                except (EdgeFleetError, ValueError) as exc:
                    row.ok, row.valid = False, None
                    row.error = f"{target.name}: cannot score the predictions: {exc}"
            return row

        def store_finished() -> None:
            new = {entry.get("threads"): row_of(entry, common) for entry, common in measured
                   if entry.get("threads") not in stored}
            if new:
                with session_scope(settings) as session:
                    session.add_all(new.values())
                stored.update(new)

        keep = keeping(measured, relay, threads)

        def handle(event: dict[str, Any]) -> None:
            keep(event)
            if event.get("event") == "measured":
                store_finished()

        try:
            with leased(settings, target.name, "eval"), \
                    connect(target, settings, timeout) as conn, \
                    AgentSession(conn, timeout=timeout) as agent:
                if relay:
                    relay({"event": "dataset", "phase": "push"})
                sent = push_dataset(agent, dataset, store, plan.manifest)
                data = report.note(agent.call("eval", request, on_event=handle))
            common = checked_common(data)
            measured[:] = [(entry, common) for entry in checked_entries(data, threads)]
        except (AgentError, EdgeFleetError) as exc:
            if isinstance(exc, AgentError):
                report.note(exc.detail)
            failure = session_failure(target.name, exc, cancelled,
                                      f"{bundle.name}@{bundle.version}")
            errors.append(failure)
        except Exception as exc:  # noqa: BLE001 - the finished thread counts must stay
            failure = unexpected_failure(target.name, "eval", exc)
            errors.append(failure)
        store_finished()  # what the result line adds (all an older agent sends)
        if failure is None:
            failure = missing_threads(target.name, threads, stored)
            if failure is not None:
                errors.append(failure)
        for entry, _ in measured:
            row = stored[entry.get("threads")]
            if not row.ok:
                errors.append(f"threads={entry.get('threads')}: {row.error}")
        rows: list[Result] = []
        if failure is not None:
            rows.append(failure_row(run, target.name, failure,
                                    [entry.get("threads") for entry, _ in measured],
                                    simulated[target.name], bundle.precision))
        with session_scope(settings) as session:
            session.add_all(rows)
            record_device_report(session, target.name, report.data)
        outcome = Outcome(target.name, not errors, "failed" if errors else "done",
                          "; ".join(errors) or None,
                          data={"results": len(rows) + len(stored), "dataset_bytes_sent": sent})
        outcome.duration_s = time.monotonic() - started
        return outcome

    outcomes = fan_out([to_target(d) for d in devices], step, forks)
    (stored,) = close_runs(settings, [run], outcomes, bool(cancelled and cancelled()))
    return stored, outcomes
