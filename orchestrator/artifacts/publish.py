"""``edgefleet bundle publish``: back-fill the S3 bucket with the blobs this host stored before
EDGEFLEET_S3_BUCKET was set (issue 14 item 4).

Why a command: with a bucket configured, each blob is uploaded as it is stored (bundle build,
quantize, datasets), and workers fetch from the bucket only. Bundles and datasets built earlier
are not there, and a worker on another host would fail to fetch them; this uploads them from
this host's blob store, each blob once (the bucket is content-addressed by sha256).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session

from orchestrator.artifacts.blobfetch import Needed, needed_files
from orchestrator.artifacts.bundles import list_bundles, manifest_of
from orchestrator.artifacts.datasets import list_datasets, manifest_of_dataset
from orchestrator.core.errors import NotFoundError


def blobs_of(session: Session, refs: Sequence[str] = ()) -> list[Needed]:
    """The blobs of the bundles and datasets ``refs`` name (``N`` or ``N@V``;
    a name alone: its every version); no refs: of every bundle and dataset."""
    if not refs:
        owners = [(f"{b.name}@{b.version}", manifest_of(b)) for b in list_bundles(session)]
        owners += [(f"{d.name}@{d.version}", manifest_of_dataset(d))
                   for d in list_datasets(session)]
    else:
        owners = []
        for ref in refs:
            owners += _owners(session, ref)
    return [blob for owner, manifest in owners for blob in needed_files(manifest, owner)]


def _owners(session: Session, ref: str) -> list[tuple[str, dict]]:
    name, _, version = ref.partition("@")
    found = [(f"{b.name}@{b.version}", manifest_of(b)) for b in list_bundles(session)
             if b.name == name and version in ("", b.version)]
    found += [(f"{d.name}@{d.version}", manifest_of_dataset(d)) for d in list_datasets(session)
              if d.name == name and version in ("", d.version)]
    if not found:
        raise NotFoundError(f"no bundle or dataset {ref!r} (edgefleet bundle list, edgefleet "
                            "dataset list)")
    return found
