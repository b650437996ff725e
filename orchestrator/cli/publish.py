"""CLI: ``edgefleet bundle publish``, the S3 back-fill (orchestrator/artifacts/publish.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.app import JsonOpt, bundle_app, handles_errors, settings
from orchestrator.present import output


@bundle_app.command("publish")
@handles_errors
def bundle_publish(
    refs: Annotated[list[str] | None, typer.Argument(
        help="Bundles or datasets (N or N@V); none: every one this host has.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload to EDGEFLEET_S3_BUCKET the blobs it lacks (those stored before the bucket was
    set), so workers on other hosts can fetch them; each blob once."""
    from rich.progress import Progress

    from orchestrator.artifacts.blobfetch import publish_to_s3
    from orchestrator.artifacts.publish import blobs_of
    from orchestrator.core.db import session_scope

    cfg = settings()
    with session_scope(cfg) as session:
        blobs = blobs_of(session, refs or ())
    with Progress(console=output.stderr, transient=True, disable=as_json) as progress:
        task = progress.add_task("publishing", total=len({b.sha256 for b in blobs}))
        done = publish_to_s3(cfg, blobs, lambda _blob: progress.advance(task))
    summary = {"bucket": done.where, "uploaded": [b.sha256 for b in done.uploaded],
               "present": [b.sha256 for b in done.present],
               "missing": [{"sha256": b.sha256, "what": b.what} for b in done.missing]}
    if as_json:
        output.print_json(summary)
    else:
        size = sum(b.size for b in done.uploaded)
        output.stdout.print(f"{done.where}: {len(done.uploaded)} blob(s) uploaded "
                            f"({output.human_bytes(size)}), {len(done.present)} already there")
        for blob in done.missing:
            output.stderr.print(f"not on this host, not uploaded: {blob.what} ({blob.sha256})")
    if done.missing:
        raise typer.Exit(1)
