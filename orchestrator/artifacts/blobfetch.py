"""Blobs for a worker on another host: its own blob store is a cache, filled on demand.

A job may be claimed by a process whose EDGEFLEET_HOME never saw the bundle being built (issue
14): before a push or an eval streams anything to a device, ``ensure_local`` fetches each blob
the operation needs and this host lacks, from the S3-compatible store when a bucket is
configured, else from the control plane's content-addressed endpoint
(``GET /api/blobs/{sha256}``, an operator token). Either way the bytes are hash- and
size-verified into the local store (``BlobStore.add_verified``): a flipped byte or a cut-short
download is refused and leaves nothing behind, so a blob's name stays its proof of content.

Secrets: the control plane token is read from the settings (environment) only and sent as a
header, never in a URL; no error names it, nor the URL's user or password. Redirects are not
followed (urllib would forward the Authorization header to wherever it is sent). S3 credentials
are boto3's own (environment, ~/.aws, instance role): EdgeFleet never reads, stores or prints
them.

When a bucket is configured, every blob added to a store made by ``blob_store`` (bundle build,
quantize, datasets, golden outputs) is also uploaded to it, so workers find there what the
control plane built; ``publish_to_s3`` (``edgefleet bundle publish``) uploads those stored
before the bucket was set.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from agent.protocol import HASH_CHUNK
from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.core.config import Settings
from orchestrator.core.errors import EdgeFleetError


class BlobFetchError(EdgeFleetError):
    """A blob this host lacks could not be fetched (no source, refused, unreachable)."""


@dataclass(frozen=True)
class Needed:
    """A blob an operation needs here: its hash, its size from the manifest, and what it is
    (``model.onnx of first-crack@1``) for errors."""

    sha256: str
    size: int
    what: str


def needed_files(manifest: dict[str, Any], owner: str) -> list[Needed]:
    """The blobs of a bundle's or dataset's manifest (``owner``: ``first-crack@1``)."""
    return [Needed(f["sha256"], int(f["size"]), f"{f['path']} of {owner}")
            for f in manifest["files"]]


class BlobSource(Protocol):
    where: str

    def fetch(self, store: BlobStore, blob: Needed) -> int: ...


def blob_store(settings: Settings) -> BlobStore:
    """This host's blob store; with a bucket configured, each blob added is uploaded too."""
    mirror = S3Source(settings).publish if settings.s3_bucket else None
    return BlobStore(settings.blob_dir, mirror)


def ensure_local(settings: Settings, store: BlobStore, blobs: Iterable[Needed]) -> int:
    """Fetch every blob of ``blobs`` that ``store`` lacks; the bytes fetched (0 when all are
    here, the control plane's own case). Raises BlobFetchError or BlobIntegrityError naming
    the blob and the source, never a secret."""
    missing: dict[str, Needed] = {}
    for blob in blobs:
        if blob.sha256 not in missing and not store.has(blob.sha256):
            missing[blob.sha256] = blob
    if not missing:
        return 0
    # A download killed mid-way (SIGKILL) left its temp file: idle for two socket timeouts
    # means nobody is writing it any more.
    store.sweep_temps(2 * settings.blob_fetch_timeout_s)
    source = blob_source(settings)
    if source is None:
        first = next(iter(missing.values()))
        raise BlobFetchError(
            f"{len(missing)} blob(s) are not in this host's blob store ({store.root}), e.g. "
            f"{first.what} ({first.sha256}), and no source is configured: set "
            "EDGEFLEET_CONTROL_PLANE_URL and EDGEFLEET_CONTROL_PLANE_TOKEN (an operator "
            "token), or EDGEFLEET_S3_BUCKET (README: Shared state across workers)")
    return sum(source.fetch(store, blob) for blob in missing.values())


def blob_source(settings: Settings) -> BlobSource | None:
    """S3 when a bucket is configured (no load on the control plane), else the control
    plane's endpoint when its URL is, else None."""
    if settings.s3_bucket:
        return S3Source(settings)
    if settings.control_plane_url:
        return HttpSource(settings)
    return None


def served_blob(settings: Settings, sha256: str) -> Path | None:
    """The file ``GET /api/blobs/{sha256}`` sends: this host's copy, or None."""
    store = BlobStore(settings.blob_dir)
    return store.path(sha256) if store.has(sha256) else None


# -- the control plane's endpoint -------------------------------------------------------------


def redacted_origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: no user, password, path or query in an error."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


@cache
def no_redirect_opener() -> Any:
    """urllib's opener with redirects refused: following one would send the token to another
    address. Built at first use: urllib.request imports http.client, email and ssl (~0.05 s,
    0.15 s on a loaded 2-core machine), which a push from a host that has its blobs never
    needs, and ``artifacts.bundles`` (every bundle command) imports this module."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(NoRedirect)


class HttpSource:
    """``GET {control_plane_url}/api/blobs/{sha256}`` with the worker's token, streamed."""

    def __init__(self, settings: Settings) -> None:
        assert settings.control_plane_url
        self.base = settings.control_plane_url.rstrip("/")
        self.where = f"the control plane {redacted_origin(self.base)}"
        if settings.control_plane_token is None:
            raise BlobFetchError(f"EDGEFLEET_CONTROL_PLANE_TOKEN is not set: {self.where} "
                                 "serves blobs to an operator token only")
        self._token = settings.control_plane_token.get_secret_value()
        self.timeout = settings.blob_fetch_timeout_s

    def fetch(self, store: BlobStore, blob: Needed) -> int:
        import http.client
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.base}/api/blobs/{blob.sha256}",
                                         headers={"Authorization": f"Bearer {self._token}"})
        try:
            with no_redirect_opener().open(request, timeout=self.timeout) as response:
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) != blob.size:
                    raise BlobFetchError(
                        f"{blob.what}: {self.where} sends {declared} bytes for blob "
                        f"{blob.sha256}, the manifest says {blob.size}; refused, nothing kept")
                chunks = iter(lambda: response.read(HASH_CHUNK), b"")
                return store.add_verified(blob.sha256, blob.size, chunks, self.where)
        except urllib.error.HTTPError as exc:
            raise BlobFetchError(f"{blob.what}: {self._refusal(exc.code, blob)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc or type(exc).__name__
            raise BlobFetchError(f"{blob.what}: cannot fetch blob {blob.sha256} from "
                                 f"{self.where}: {reason}") from None

    def _refusal(self, code: int, blob: Needed) -> str:
        if code in (401, 403):
            return (f"{self.where} refused this worker's token (HTTP {code}): set "
                    "EDGEFLEET_CONTROL_PLANE_TOKEN to a valid operator token")
        if code == 404:
            return f"{self.where} has no blob {blob.sha256} either (HTTP 404)"
        if 300 <= code < 400:
            return (f"{self.where} answered with a redirect (HTTP {code}), which is not "
                    "followed (it would carry the token); set EDGEFLEET_CONTROL_PLANE_URL to "
                    "the address that serves the API")
        return f"{self.where} answered HTTP {code} for blob {blob.sha256}"


# -- S3-compatible stores ---------------------------------------------------------------------

_clients: dict[tuple[str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


def _s3_client(settings: Settings) -> Any:
    """One boto3 client per endpoint and region (thread-safe; creating one costs ~50 ms).
    boto3 is imported here only: an optional dependency (``edgefleet[s3]``)."""
    key = (settings.s3_endpoint_url, settings.s3_region)
    with _clients_lock:
        if key not in _clients:
            try:
                import boto3
            except ModuleNotFoundError:
                raise BlobFetchError("EDGEFLEET_S3_BUCKET is set but boto3 is not installed: "
                                     "pip install 'edgefleet[s3]'") from None
            _clients[key] = boto3.session.Session().client(
                "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
        return _clients[key]


class S3Source:
    """Blobs as objects ``{s3_prefix}{sha256}`` in ``s3_bucket``."""

    def __init__(self, settings: Settings) -> None:
        assert settings.s3_bucket
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.where = f"s3://{self.bucket}/{self.prefix}"

    def _failed(self, exc: Exception, sha256: str, doing: str) -> BlobFetchError:
        """botocore's errors name the operation, bucket and code, never the credentials; the
        code alone is kept for a ClientError (NoSuchKey, AccessDenied...)."""
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "?")
            return BlobFetchError(f"{doing} blob {sha256} at {self.where}: {code}")
        return BlobFetchError(f"{doing} blob {sha256} at {self.where}: "
                              f"{type(exc).__name__}: {exc}")

    def fetch(self, store: BlobStore, blob: Needed) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = _s3_client(self.settings).get_object(
                Bucket=self.bucket, Key=self.prefix + blob.sha256)["Body"]
            with body:
                return store.add_verified(blob.sha256, blob.size,
                                          body.iter_chunks(HASH_CHUNK), self.where)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed(exc, blob.sha256, f"{blob.what}: cannot fetch") from None

    def publish(self, sha256: str, path: Path) -> bool:
        """Upload blob ``sha256`` unless the bucket has it (content-addressed: same name,
        same bytes); whether it was uploaded."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = _s3_client(self.settings)
        key = self.prefix + sha256
        try:
            try:
                client.head_object(Bucket=self.bucket, Key=key)
                return False
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey",
                                                                     "NotFound"):
                    raise
            client.upload_file(str(path), self.bucket, key)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed(exc, sha256, "cannot upload") from None
        return True


@dataclass
class Published:
    """What ``publish_to_s3`` did with each blob it was given (each sha once)."""

    where: str
    uploaded: list[Needed] = field(default_factory=list)
    present: list[Needed] = field(default_factory=list)  # the bucket had it already
    missing: list[Needed] = field(default_factory=list)  # not in this host's store


def publish_to_s3(settings: Settings, blobs: Iterable[Needed],
                  on_blob: Callable[[Needed], None] | None = None) -> Published:
    """Back-fill the bucket: upload every blob of ``blobs`` that it lacks from this host's
    store. Blobs are uploaded as they are stored only once EDGEFLEET_S3_BUCKET is set, so the
    ones built before (or on a host without it) are not in the bucket until this runs;
    content-addressed, so running it again uploads nothing twice. ``on_blob`` is told of
    each blob when it is done (progress)."""
    if not settings.s3_bucket:
        raise EdgeFleetError("EDGEFLEET_S3_BUCKET is not set: nothing to publish to (README: "
                             "Shared state across workers)")
    source, store = S3Source(settings), BlobStore(settings.blob_dir)
    done = Published(source.where)
    seen: set[str] = set()
    for blob in blobs:
        if blob.sha256 in seen:
            continue
        seen.add(blob.sha256)
        if not store.has(blob.sha256):
            done.missing.append(blob)
        elif source.publish(blob.sha256, store.path(blob.sha256)):
            done.uploaded.append(blob)
        else:
            done.present.append(blob)
        if on_blob is not None:
            on_blob(blob)
    return done
