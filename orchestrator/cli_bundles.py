"""CLI commands for bundles and deployments: bundle build/list/show, push, rollback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator import output
from orchestrator.cli import (
    Forks,
    JsonOpt,
    Targets,
    Timeout,
    _select,
    app,
    bundle_app,
    finish,
    handles_errors,
    settings,
)
from orchestrator.fleet import Outcome


@bundle_app.command("build")
@handles_errors
def bundle_build(
    path: Annotated[Path, typer.Argument(help="An .onnx file or a folder with one and its side "
                                              "files.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Bundle name.")],
    version: Annotated[str | None, typer.Option(help="Version (default: next number).")] = None,
    model: Annotated[str | None, typer.Option(help="Which .onnx in the folder is the model.")]
    = None,
    shape: Annotated[list[str], typer.Option(
        help="NAME=1x1024x128: the shape benchmarks use for an input with dynamic dims.")]
    = [],  # noqa: B006
    as_json: JsonOpt = False,
) -> None:
    """Inspect the model, hash every file into the blob store, register a new version."""
    from orchestrator.bundles import build_bundle, bundle_public
    from orchestrator.cliparse import parse_shapes
    from orchestrator.db import session_scope

    cfg = settings()
    with session_scope(cfg) as session:
        result = build_bundle(session, cfg, path, name, version, model,
                              input_shapes=parse_shapes(shape))
        public = bundle_public(result.bundle)
    public["created"] = result.created
    if as_json:
        output.print_json(public)
        return
    _show_bundle(public)
    ref = f"{public['name']}@{public['version']}"
    if result.created:
        output.stdout.print(f"built {ref}  digest {public['digest']}")
    else:
        output.stdout.print(f"unchanged: {ref} already has exactly these files")


def _show_bundle(public: dict[str, Any]) -> None:
    model = public["model"] or {}
    rows = [
        ("bundle", f"{public['name']}@{public['version']}"),
        ("digest", public["digest"]),
        ("size", output.human_bytes(public["size_bytes"])),
        ("precision", public["precision"]),
        ("model", f"{model.get('path')} (opset {model.get('opset')}, "
                  f"IR {model.get('ir_version')})"),
        ("needs", f"onnxruntime >= {public['min_onnxruntime']}"),
        ("created", public["created_at"]),
        ("source", (public.get("source") or {}).get("path")),
    ]
    output.stdout.print(output.table(None, ["", ""], rows))
    io_rows = [(kind, t["name"], t["dtype"], "x".join(str(d) if d is not None else "?"
                                                     for d in t["shape"]) or "scalar")
               for kind in ("inputs", "outputs") for t in model.get(kind, [])]
    output.stdout.print(output.table("signature", ["", "name", "dtype", "shape"], io_rows))
    output.stdout.print(output.table(
        "files", ["path", "size", "sha256"],
        [(f["path"], output.human_bytes(f["size"]), f["sha256"][:16]) for f in public["files"]]))


@bundle_app.command("list")
@handles_errors
def bundle_list(as_json: JsonOpt = False) -> None:
    """Every bundle version."""
    from orchestrator.bundles import bundle_public, list_bundles
    from orchestrator.db import session_scope

    with session_scope(settings()) as session:
        bundles = [bundle_public(b) for b in list_bundles(session)]
    if as_json:
        output.print_json(bundles)
        return
    output.stdout.print(output.table(
        None, ["bundle", "precision", "size", "opset", "digest", "created"],
        [(f"{b['name']}@{b['version']}", b["precision"], output.human_bytes(b["size_bytes"]),
          (b["model"] or {}).get("opset"), b["digest"][:16], b["created_at"]) for b in bundles]))


@bundle_app.command("show")
@handles_errors
def bundle_show(ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")],
                as_json: JsonOpt = False) -> None:
    """A bundle's manifest: files, signature, requirements."""
    from orchestrator.bundles import bundle_public, get_bundle
    from orchestrator.db import session_scope

    with session_scope(settings()) as session:
        public = bundle_public(get_bundle(session, ref))
    if as_json:
        output.print_json(public)
    else:
        _show_bundle(public)


def _push_payload(o: Outcome) -> dict[str, Any]:
    return {"device": o.device, "state": o.state, "bytes_sent": o.data.get("bytes_sent", 0),
            "duration_s": round(o.duration_s, 3), "error": o.error,
            "smoke": o.data.get("smoke_detail")}


@app.command("push")
@handles_errors
def push_cmd(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (default: latest)")],
    targets: Targets,
    forks: Forks = 10,
    timeout: Timeout = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a bundle's missing blobs, verify every file on the device, activate atomically."""
    from orchestrator import jobs
    from orchestrator.bundles import get_bundle
    from orchestrator.db import session_scope
    from orchestrator.deploy import push
    from orchestrator.job_exec import push_summary

    cfg = settings()
    with session_scope(cfg) as session:
        bundle = get_bundle(session, ref)
    devices = _select(targets)
    name = f"{bundle.name}@{bundle.version}"
    with jobs.track(cfg, "push", {"bundle": name, "forks": forks, "timeout": timeout},
                    targets) as job, output.RichPushProgress(enabled=not as_json) as progress:
        outcomes = push(cfg, bundle, devices, forks, timeout, job.push_progress(progress))
        done = push_summary(name, outcomes)
        job.finish(done.state, done.result, done.error)
    for o in outcomes:
        o.data["sent"] = output.human_bytes(o.data.get("bytes_sent", 0))
    finish(outcomes, f"push {bundle.name}@{bundle.version} ({bundle.digest[:12]})", as_json,
           extra=("sent", "smoke"), payload=_push_payload)


@app.command("rollback")
@handles_errors
def rollback_cmd(targets: Targets, forks: Forks = 10, timeout: Timeout = None,
                 as_json: JsonOpt = False) -> None:
    """Swap each device back to the bundle it ran before."""
    from orchestrator.deploy import rollback

    outcomes = rollback(settings(), _select(targets), forks, timeout)
    finish(outcomes, "rollback", as_json, extra=("active",))
