"""CLI commands for bundles and deployments: bundle build/list/show, push, rollback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from orchestrator.artifacts import input_defaults
from orchestrator.cli.app import (
    Forks,
    JsonOpt,
    Targets,
    Timeout,
    app,
    bundle_app,
    exit_if_interrupted,
    finish,
    handles_errors,
    settings,
)
from orchestrator.cli.keys import passphrase_for
from orchestrator.cli.quick import MAX_FORKS
from orchestrator.fleet.fanout import Outcome
from orchestrator.present import output


@bundle_app.command("build")
@handles_errors
def bundle_build(
    path: Annotated[str, typer.Argument(
        help="An .onnx file, a folder with one and its side files, or a Hugging Face repo: "
             "hf://OWNER/REPO/SUBFOLDER@REVISION (subfolder and revision optional).")],
    name: Annotated[str, typer.Option("--name", "-n", help="Bundle name.")],
    version: Annotated[str | None, typer.Option(help="Version (default: next number).")] = None,
    model: Annotated[str | None, typer.Option(
        help="Which .onnx in the folder (or Hub subfolder) is the model.")] = None,
    shape: Annotated[list[str], typer.Option(
        help="NAME=1x1024x128: the shape benchmarks use for an input with dynamic dims "
             "(default: 1 for a batch dim, an AST/Whisper preprocessor_config's feature dims).")]
    = [],  # noqa: B006
    input: Annotated[list[str], typer.Option(
        "--input", help="NAME=VALUE: a constant input (e.g. sr=16000) for the golden outputs "
                        "and as bench's default.")] = [],  # noqa: B006
    quantize: Annotated[str | None, typer.Option(
        help="Also build an INT8 variant N@V-int8 (dynamic) or N@V-int8-static (static QDQ, "
             "needs --calibration).", metavar="int8|int8-static")] = None,
    calibration: Annotated[Path | None, typer.Option(
        help="For int8-static: a folder of .npz files, arrays keyed by input name, first axis "
             "= samples.")] = None,
    golden_rtol: Annotated[float | None, typer.Option(
        help="Relative tolerance of the golden-output check (default: by precision).")] = None,
    golden_atol: Annotated[float | None, typer.Option(
        help="Absolute tolerance of the golden-output check (default: by precision).")] = None,
    streaming_profile: Annotated[Path | None, typer.Option(
        help="YAML/JSON streaming profile (window_s, hop_s or overlap, threshold, min_positive, "
             "confirm_windows) stored with the bundle for `runs verdict`.")] = None,
    sign: Annotated[str | None, typer.Option(
        "--sign", help="Sign what is built (and its variant) with this key (edgefleet keys "
                       "create).", metavar="KEY")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Inspect the model, hash every file into the blob store, register a new version (and its
    INT8 variant with --quantize)."""
    from orchestrator.access.audit import local_actor
    from orchestrator.artifacts import signing
    from orchestrator.artifacts.bundles import build_bundle, bundle_public
    from orchestrator.artifacts.hub import fetch, is_hub_spec
    from orchestrator.artifacts.quantize import check_request, make_variant
    from orchestrator.core.db import session_scope
    from orchestrator.present.cliparse import parse_constants, parse_shapes

    check_request(quantize, calibration)
    cfg = settings()
    secret = None
    if sign is not None:  # the key and its passphrase before the build's minutes, not after
        with session_scope(cfg) as session:
            key = signing.get_key(session, sign)
            secret = passphrase_for(key.name, key.encrypted)
            signing.load_private(cfg, key, secret)
    shapes = parse_shapes(shape)
    build_opts: dict[str, Any] = {"golden_rtol": golden_rtol, "golden_atol": golden_atol,
                                  "input_constants": parse_constants(input)}
    if streaming_profile is not None:
        from orchestrator.measure.verdicts import load_profile_file

        build_opts["extra"] = {"streaming": load_profile_file(streaming_profile).to_dict()}
    with session_scope(cfg) as session:
        if is_hub_spec(path):
            snap = fetch(path, model)
            result = build_bundle(session, cfg, snap.folder, name, version, snap.model,
                                  input_shapes=shapes, source=snap.source, files=snap.files,
                                  **build_opts)
        else:
            result = build_bundle(session, cfg, Path(path), name, version, model,
                                  input_shapes=shapes, **build_opts)
        made = ([make_variant(session, cfg, result.bundle, quantize, calibration,
                              golden_rtol=golden_rtol, golden_atol=golden_atol)]
                if quantize else [])
        if sign is not None:  # in the build's transaction: never a build half-signed
            for built in [result.bundle, *(v.bundle for v in made)]:
                if built.signed_by != sign:  # an unchanged rebuild already signed: as it was
                    signing.sign_bundle(session, cfg, built, sign, secret, actor=local_actor())
        public = bundle_public(result.bundle) | {"created": result.created}
        variants = [bundle_public(v.bundle) | {"created": v.created} for v in made]
    notes = [n for n in [result.note, *(v.note for v in made)] if n]
    assumed = [f"assumed {line}" for line in result.assumed]
    if as_json:
        output.print_json({"bundle": public, "variants": variants} if quantize else public)
        return
    _show_bundle(public)
    _built_line(public, result.created)
    for variant in variants:
        output.stdout.print()
        _show_bundle(variant)
        _built_line(variant, variant["created"])
    for note in [*assumed, *notes]:
        output.stderr.print(Text.assemble(("note:", "yellow"), f" {note}"), soft_wrap=True)


def _built_line(public: dict[str, Any], created: bool) -> None:
    ref = f"{public['name']}@{public['version']}"
    ratio = (public.get("quantization") or {}).get("size_ratio")
    size = f" ({output.human_bytes(public['size_bytes'])}, {_ratio_text(ratio)})" if ratio else ""
    if created:
        line = f"built {ref}  digest {public['digest']}{size}"
    elif public.get("parent"):
        parent = public["parent"]
        line = f"unchanged: {ref} was already made from {parent['name']}@{parent['version']}"
    else:
        line = f"unchanged: {ref} already has exactly these files"
    output.stdout.print(Text(line))


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
        ("source", _source_text(public.get("source") or {})),
    ]
    parent, quant = public.get("parent"), public.get("quantization")
    if parent:
        rows.append(("parent", f"{parent['name']}@{parent['version']} ({parent['digest'][:16]}, "
                               f"{output.human_bytes(parent['size_bytes'])})"))
    if quant:
        how = " ".join(str(quant[k]) for k in ("method", "weight_type", "format") if k in quant)
        calib = (quant.get("calibration") or {}).get("samples")
        rows.append(("quantization", f"{how}; {_ratio_text(quant['size_ratio'])}"
                                     + (f"; calibrated on {calib} samples" if calib else "")))
    signed = public.get("signed")
    rows.append(("signed", f"by {signed['by']} ({signed['fingerprint']}) at {signed['at']}"
                 + (f"; {signed['check']}" if signed.get("check") else "")
                 if signed else "no (edgefleet bundle sign N@V --key NAME)"))
    if public.get("golden"):
        rows.append(("golden", f"rtol {public['golden']['rtol']:g}, "
                               f"atol {public['golden']['atol']:g}"))
    for name, shape in (public.get("input_shapes") or {}).items():
        why = input_defaults.describe({name: (public.get("shape_defaults") or {})[name]}) \
            if name in (public.get("shape_defaults") or {}) else []
        rows.append(("input shape", f"{name} {'x'.join(map(str, shape))}"
                     + (f" — assumed {why[0].split(': ', 1)[1]}" if why else " (--shape)")))
    for name, value in (public.get("input_constants") or {}).items():
        rows.append(("input constant", f"{name} = {value} (bench's default)"))
    output.stdout.print(output.table(None, ["", ""], rows))
    io_rows = [(kind, t["name"], t["dtype"], "x".join(str(d) if d is not None else "?"
                                                     for d in t["shape"]) or "scalar")
               for kind in ("inputs", "outputs") for t in model.get(kind, [])]
    output.stdout.print(output.table("signature", ["", "name", "dtype", "shape"], io_rows))
    output.stdout.print(output.table(
        "files", ["path", "size", "sha256"],
        [(f["path"], output.human_bytes(f["size"]), f["sha256"][:16]) for f in public["files"]]))


def _ratio_text(ratio: float) -> str:
    """FP32 model bytes / variant model bytes, said the way round that reads (a model too small
    for its weights to dominate can grow)."""
    return f"model {ratio:.1f}x smaller" if ratio >= 1 else f"model {1 / ratio:.1f}x larger"


def _source_text(source: dict[str, Any]) -> str | None:
    if source.get("type") == "hf":
        sub = f"/{source['subfolder']}" if source.get("subfolder") else ""
        return f"hf://{source['repo']}{sub}@{source['revision']} (commit {source['commit']})"
    return source.get("path")


@bundle_app.command("list")
@handles_errors
def bundle_list(as_json: JsonOpt = False) -> None:
    """Every bundle version."""
    from orchestrator.core import listings

    bundles = listings.bundles()  # sqlite3 alone, when the DB is a current SQLite file
    if bundles is None:
        from orchestrator.artifacts.bundles import list_bundles
        from orchestrator.core.db import session_scope

        with session_scope(settings()) as session:
            bundles = [listings.bundle_public(b) for b in list_bundles(session)]
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
    from orchestrator.artifacts.bundles import bundle_public, get_bundle
    from orchestrator.artifacts.signing import signature_status
    from orchestrator.core.db import session_scope

    with session_scope(settings()) as session:
        bundle = get_bundle(session, ref)
        public = bundle_public(bundle)
        status = signature_status(session, bundle)
    if status is not None:  # checked here too: a signature that no longer fits is shown so
        public["signed"] = dict(public["signed"] or {}, valid=status["valid"],
                                problem=status["problem"])
        public["signed"]["check"] = ("signature valid" if status["valid"] else
                                     f"signature INVALID: {status['problem']}")
    if as_json:
        output.print_json(public)
    else:
        _show_bundle(public)


@bundle_app.command("sign")
@handles_errors
def bundle_sign(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (or NAME: its latest)")],
    key: Annotated[str, typer.Option("--key", help="The signing key (edgefleet keys list).")],
    as_json: JsonOpt = False,
) -> None:
    """Sign a bundle: its name, version and manifest digest (hence every file). Signing again
    (with a new key during a rotation) replaces the signature."""
    from orchestrator.access.audit import local_actor
    from orchestrator.artifacts import signing
    from orchestrator.artifacts.bundles import bundle_public, get_bundle
    from orchestrator.core.db import session_scope

    cfg = settings()
    with session_scope(cfg) as session:
        found = signing.get_key(session, key)
        secret = passphrase_for(found.name, found.encrypted)
        bundle = signing.sign_bundle(session, cfg, get_bundle(session, ref), key, secret,
                                     actor=local_actor())
        public = bundle_public(bundle)
    if as_json:
        output.print_json({"bundle": f"{public['name']}@{public['version']}",
                           "digest": public["digest"], "signed": public["signed"]})
        return
    signed = public["signed"]
    output.stdout.print(Text(f"signed {public['name']}@{public['version']} "
                             f"({public['digest'][:16]}) with {signed['by']} "
                             f"({signed['fingerprint']})"))


def _push_payload(o: Outcome) -> dict[str, Any]:
    """``resumed_bytes``: what a dropped transfer had left on the device and was not sent
    again; ``recovered``: what the device repaired first (agent.journal), in its words."""
    return {"device": o.device, "state": o.state, "bytes_sent": o.data.get("bytes_sent", 0),
            "resumed_bytes": o.data.get("resumed_bytes", 0),
            "duration_s": round(o.duration_s, 3), "error": o.error,
            "smoke": o.data.get("smoke_detail"), "recovered": o.data.get("recovered", [])}


RolloutOpts = tuple[str | None, str | None, str | None, bool, bool]


def _rollout_param(opts: RolloutOpts) -> dict[str, Any] | None:
    """The push job's ``rollout`` parameter from the command's options (None: a plain push,
    every device at once). Checked with the job's other params (``jobs.params``)."""
    canary, batch, max_fail, health_bench, rollback_on_fail = opts
    if canary is None and batch is None and max_fail is None and not health_bench \
            and not rollback_on_fail:
        return None
    return {"canary": canary, "batch": batch, "max_fail": max_fail,
            "health_bench": health_bench, "rollback_on_fail": rollback_on_fail}


def _show_rollout(done: Any, as_json: bool, interrupted: bool) -> None:
    """A staged push's outcome: its batches, then every device (``--json``: one object)."""
    view = done.result["rollout"]
    rows = {r["device"]: r for r in done.result["devices"]}
    devices = [_push_payload(o) | {k: rows[o.device][k] for k in
                                   ("batch", "health", "rolled_back_to")}
               for o in done.outcomes]
    if as_json:
        output.print_json({
            "bundle": done.result["bundle"], "digest": done.result["digest"],
            "state": done.state, "error": done.error, "halted_at": view["halted_at"],
            "options": view["options"], "batches": view["batches"], "devices": devices,
            "rolled_back": view["rolled_back"], "health_runs": view["health_runs"]})
    else:
        output.stdout.print(output.table(
            f"rollout of {done.result['bundle']}", ["batch", "devices", "state", "note"],
            [("canary" if b["kind"] == "canary" else str(b["index"]), ", ".join(b["devices"]),
              Text(b["state"], style=output.STATE_STYLES.get(b["state"], "")), b["note"])
             for b in view["batches"]]))
        for o in done.outcomes:
            o.data["sent"] = output.human_bytes(o.data.get("bytes_sent", 0))
            o.data["batch"] = rows[o.device]["batch"]
        output.stdout.print(output.outcome_table("devices", done.outcomes,
                                                 ("batch", "sent", "smoke")))
        if view["rolled_back"]:
            back = ", ".join(f"{r['device']} {r['state']}" for r in view["rolled_back"])
            output.stdout.print(Text(f"rollback-on-fail: {back}"))
        if done.error:
            output.stderr.print(Text(done.error), soft_wrap=True)
    exit_if_interrupted(interrupted)
    if done.state != "succeeded":
        raise typer.Exit(1)


@app.command("push")
@handles_errors
def push_cmd(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (default: latest)")],
    targets: Targets,
    forks: Forks = 10,
    timeout: Timeout = None,
    canary: Annotated[str | None, typer.Option(
        help="Rollout: push these devices (a target pattern) first, alone; any failure "
             "stops the rollout there.")] = None,
    batch: Annotated[str | None, typer.Option(
        help="Rollout: then the other targets in inventory order, N devices or PCT% of them "
             "at a time.", metavar="N|PCT%")] = None,
    max_fail: Annotated[str | None, typer.Option(
        help="Rollout: halt when more than PCT% of a batch fails (default 0: any failure); "
             "the remaining devices are not started.", metavar="PCT")] = None,
    health_bench: Annotated[bool, typer.Option(
        "--health-bench", help="Rollout: after each batch, bench each updated device on the "
                               "new and the replaced version of the bundle alternately (1 "
                               "thread); significantly slower by > 5% counts as failed.")
    ] = False,
    rollback_on_fail: Annotated[bool, typer.Option(
        "--rollback-on-fail", help="Rollout: when it halts, roll the devices it updated back "
                                   "to their previous version.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send a bundle's missing blobs, verify every file on the device, activate atomically;
    staged (canary, batches, halt) with any of the rollout options."""
    from orchestrator.fleet import early

    cfg = settings()
    staged = _rollout_param((canary, batch, max_fail, health_bench, rollback_on_fail))
    # Before the ORM is even imported: the devices' sessions open and the blobs stream while
    # the job, its audit event and the leases are recorded below (fleet.early says what may
    # and may not happen before that). Not for a rollout: its batches, not the first `forks`
    # devices, decide who is pushed first, and a canary must be alone.
    # A --forks the job will refuse starts nothing early (quick.parse_push's bound; --timeout
    # was refused by typer already): `push fc all --forks 5000` had its early sessions plan and
    # stream to the devices while the job refused, and the race decided what was left there.
    if staged is None and 1 <= forks <= MAX_FORKS:
        early.start(cfg, ref, targets, forks, timeout)
    try:
        from orchestrator.artifacts.bundles import get_bundle
        from orchestrator.core.db import session_scope
        from orchestrator.jobs import tracker

        with session_scope(cfg) as session:
            bundle = get_bundle(session, ref)
            name, digest = f"{bundle.name}@{bundle.version}", bundle.digest
        params: dict[str, Any] = {"bundle": name, "forks": forks, "timeout": timeout}
        if staged is not None:
            params["rollout"] = staged
        with tracker.track(cfg, "push", params, targets) as job, \
                output.RichPushProgress(enabled=not as_json) as progress:
            done = job.run(push_view=progress)
    finally:
        early.discard_all()  # what no device step adopted (the command failed before)
    if staged is not None:
        _show_rollout(done, as_json, job.interrupted)
        return
    for o in done.outcomes:
        o.data["sent"] = output.human_bytes(o.data.get("bytes_sent", 0))
    finish(done.outcomes, f"push {name} ({digest[:12]})", as_json,
           extra=("sent", "smoke"), payload=_push_payload, interrupted=job.interrupted)


@app.command("rollback")
@handles_errors
def rollback_cmd(targets: Targets, forks: Forks = 10, timeout: Timeout = None,
                 as_json: JsonOpt = False) -> None:
    """Swap each device back to the bundle it ran before."""
    from orchestrator.jobs import tracker

    cfg = settings()
    with tracker.track(cfg, "rollback", {"forks": forks, "timeout": timeout}, targets) as job:
        done = job.run()
    finish(done.outcomes, "rollback", as_json, extra=("active",), interrupted=job.interrupted)
