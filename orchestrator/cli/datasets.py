"""CLI: dataset build/list/show (evaluation datasets, see orchestrator/artifacts/datasets.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.app import JsonOpt, app, handles_errors, settings
from orchestrator.present import output

dataset_app = typer.Typer(no_args_is_help=True, help="Evaluation datasets: build, list, show.")
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("build")
@handles_errors
def dataset_build(
    path: Annotated[Path, typer.Argument(help="A folder of <label>/*.wav files, or an .npz of "
                                              "input tensors plus a 'labels' array.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    version: Annotated[str | None, typer.Option(help="Version (default: next number).")] = None,
    for_bundle: Annotated[str | None, typer.Option(
        "--for", help="N[@V]: resample to this bundle's rate, map labels through its id2label.")]
    = None,
    sampling_rate: Annotated[int | None, typer.Option(
        help="Resample audio to this rate (Hz) instead of the bundle's.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert audio to mono float32 at the model's rate, hash it into the blob store, register
    a new version (nothing new when the samples are unchanged)."""
    from orchestrator.artifacts.bundles import get_bundle
    from orchestrator.artifacts.datasets import build_dataset, dataset_public
    from orchestrator.core.db import session_scope

    cfg = settings()
    with session_scope(cfg) as session:
        bundle = get_bundle(session, for_bundle) if for_bundle else None
        result = build_dataset(session, cfg, path, name, version, bundle, sampling_rate)
        public = dataset_public(result.dataset)
    public["created"] = result.created
    if as_json:
        output.print_json(public)
        return
    _show(public)
    ref = f"{public['name']}@{public['version']}"
    output.stdout.print(f"built {ref}  digest {public['digest']}" if result.created
                        else f"unchanged: {ref} already has exactly these samples")


def _show(public: dict[str, Any]) -> None:
    rate = public["sampling_rate"]
    made_for = public.get("for") or {}
    rows = [("dataset", f"{public['name']}@{public['version']}"), ("digest", public["digest"]),
            ("format", public["format"]), ("sampling rate", f"{rate} Hz" if rate else None),
            ("samples", public["samples"]), ("size", output.human_bytes(public["size_bytes"])),
            ("for", f"{made_for['name']}@{made_for['version']}" if made_for else None),
            ("created", public["created_at"]),
            ("source", (public.get("source") or {}).get("path"))]
    if public.get("label_ids"):
        rows.append(("labels", "class ids (integers): named through the model's id2label when "
                               "evaluated"))
    output.stdout.print(output.table(None, ["", ""], rows))
    output.stdout.print(output.table("labels", ["class", "label", "samples"],
                                     [(i, label, public["per_label"].get(label, 0))
                                      for i, label in enumerate(public["labels"])]))


@dataset_app.command("list")
@handles_errors
def dataset_list(as_json: JsonOpt = False) -> None:
    """Every dataset version."""
    from orchestrator.core import listings

    datasets = listings.datasets()  # sqlite3 alone, when the DB is a current SQLite file
    if datasets is None:
        from orchestrator.artifacts.datasets import list_datasets
        from orchestrator.core.db import session_scope

        with session_scope(settings()) as session:
            datasets = [listings.dataset_public(d) for d in list_datasets(session)]
    if as_json:
        output.print_json(datasets)
        return
    output.stdout.print(output.table(
        None, ["dataset", "format", "rate", "samples", "labels", "size", "digest", "created"],
        [(f"{d['name']}@{d['version']}", d["format"], d["sampling_rate"], d["samples"],
          d["labels"], output.human_bytes(d["size_bytes"]), d["digest"][:16], d["created_at"])
         for d in datasets]))


@dataset_app.command("show")
@handles_errors
def dataset_show(ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")],
                 as_json: JsonOpt = False) -> None:
    """One dataset: format, rate, labels and how many samples each has (--json: every
    sample)."""
    from orchestrator.artifacts.datasets import dataset_public, get_dataset
    from orchestrator.core.db import session_scope

    with session_scope(settings()) as session:
        public = dataset_public(get_dataset(session, ref), samples=as_json)
    if as_json:
        output.print_json(public)
        return
    _show(public)
