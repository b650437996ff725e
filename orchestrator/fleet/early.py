"""A CLI push that starts its device work while its own process is still starting (issue 12).

Why: ``edgefleet push`` of a 90 MB model spent ~0.9 s of a fresh process (interpreter,
SQLAlchemy/SQLModel/pydantic, the models, the job row) before its first byte left, while scp
of the same file was done in ~0.7 s. Only the standard library is needed to know what to send
and where: the bundle's manifest and the devices' rows (``core.listings``, when the DB is a
current SQLite file). So ``start`` opens each device's agent session, asks its ``plan`` and
streams the missing blobs from a thread, and the command imports the ORM, records its job (with
its audit event), its Deployment rows and takes the device leases meanwhile. The one push path
(``deploy.push``) then *adopts* the session (``claim``): it waits for the stream it would have
sent itself and goes on to ``activate`` as always.

What may happen before the job is recorded and the lease is held, and why that is honest:
opening a session, the ``plan`` (read-only but for repairing what a dead process left pending
and pruning what no version in the device's history needs, both under the agent's root lock, as
for any caller; the plan's own blobs are kept), and blobs written into the
agent's own ``incoming/*.part`` files, each verified by sha256 before it is kept. Nothing the
device runs changes: activation, the smoke test and everything recorded wait for the lease and
the job, as before. A device with a live lease (another operation is on it) is not started
early; one whose lease is taken in the meantime has the session aborted when ``deploy.push``
finds it busy (its parts stay for the next push to resume). A bundle the ORM resolves
differently (a different digest or signature) or a command that fails before adopting aborts
the sessions.

What never starts early (``deploy.push`` does it all, as for the server): a bundle with a blob
this host's store lacks (a worker that did not build it fetches it first, verified,
``artifacts.blobfetch``), and a staged rollout (``push --canary/--batch/...``: its batches
decide which devices go first). What is the same as on the ordinary path: the host keys
checked (the database's rows for the device, read here with sqlite3, then the known_hosts
files: ``transport.hostkeys``), ``EDGEFLEET_SSH_KEY_FILE``, and the bundle's signature in the
``plan`` request (a device with pinned keys checks it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.artifacts.blobstore import BlobStore
from orchestrator.artifacts.onnxinfo import version_tuple
from orchestrator.core import listings
from orchestrator.core.errors import EdgeFleetError
from orchestrator.fleet.agentclient import AgentSession, BlobUpload, disk_free, plan_uploads
from orchestrator.transport import Connection, Target, connect

if TYPE_CHECKING:
    from orchestrator.core.config import Settings
    from orchestrator.core.envsettings import EnvSettings

log = logging.getLogger(__name__)


def check_runtime(target: Target, plan: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
    """Refuse, before a byte is sent, a device whose onnxruntime cannot load the bundle."""
    ref = f"{manifest['name']}@{manifest['version']}"
    need = manifest.get("min_onnxruntime") or "0"
    have = plan.get("onnxruntime")
    if not have:
        raise EdgeFleetError(
            f"{target.name}: onnxruntime is not importable on the device; "
            f"run `edgefleet agent install {target.name} --with-deps`"
        )
    if version_tuple(have) < version_tuple(need):
        model = manifest.get("model", {})
        raise EdgeFleetError(
            f"{target.name}: has onnxruntime {have} but {ref} needs onnxruntime >= {need} "
            f"(opset {model.get('opset')}, IR {model.get('ir_version')}); upgrade onnxruntime "
            "on the device or export the model with a lower opset. Nothing was sent."
        )


@dataclass
class Planned:
    """What a device's ``plan`` answered and what must be sent, checked: the runtime can load
    the bundle, the device has the disk space."""

    plan: dict[str, Any]
    uploads: list[BlobUpload] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(u.to_send for u in self.uploads)

    @property
    def resumed(self) -> int:
        return sum(u.offset for u in self.uploads)


def plan_push(session: AgentSession, target: Target, manifest: Mapping[str, Any], digest: str,
              blobs: BlobStore, note: Callable[[dict[str, Any]], Any] | None = None,
              signature: Mapping[str, str] | None = None) -> Planned:
    """Ask the agent's plan and check it (``deploy.push_over`` and ``EarlyPush`` alike);
    ``note`` sees the plan's result first (a DeviceReport), even when a check refuses it.
    ``signature`` (``listings.push_signature``): a device with pinned keys refuses the plan of
    a bundle none of them signed (agent.signatures)."""
    payload: dict[str, Any] = {"manifest": manifest, "digest": digest}
    if signature is not None:
        payload["signature"] = dict(signature)
    plan = session.call("plan", payload)
    if note is not None:
        note(plan)
    check_runtime(target, plan, manifest)
    if plan.get("already_active"):
        return Planned(plan)
    files = {f["sha256"]: f for f in manifest["files"]}
    planned = Planned(plan, plan_uploads(plan, files, blobs.path, target.name))
    free = disk_free(plan)
    if free is not None and planned.total > free:
        raise EdgeFleetError(
            f"{target.name}: not enough disk space: {planned.total / 1e6:.1f} MB to send, "
            f"{free / 1e6:.1f} MB free under {target.root}. Free space on the device "
            "(old bundles are pruned after each activation). Nothing was sent."
        )
    return planned


class EarlyPush:
    """One device's session, planned and streaming from a thread of its own, until
    ``deploy.push`` adopts it (``wait_planned``, ``wait_sent``) or discards it."""

    def __init__(self, settings: Settings | EnvSettings, target: Target, manifest: dict[str, Any],
                 digest: str, timeout: float | None,
                 signature: dict[str, str] | None = None) -> None:
        self.target, self.manifest, self.digest = target, manifest, digest
        self.signature = signature
        self.conn: Connection | None = None
        self.session: AgentSession | None = None
        self.planned: Planned | None = None
        self.plan_result: dict[str, Any] | None = None  # the plan's answer, even if refused
        self.error: BaseException | None = None
        self.sent = 0
        self._settings, self._timeout = settings, timeout
        self._connected = threading.Event()
        self._planned = threading.Event()
        self._changed = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=f"early-push-{target.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.conn = connect(self.target, self._settings, self._timeout)
            self._connected.set()
            self.session = AgentSession(self.conn, timeout=self._timeout)
            self.planned = plan_push(self.session, self.target, self.manifest, self.digest,
                                     BlobStore(self._settings.blob_dir), self._note,
                                     self.signature)
            self._planned.set()
            if self.planned.uploads:
                self.session.send_blobs(self.planned.uploads, on_bytes=self._advance)
        except BaseException as exc:  # handed to the adopting step, raised there
            self.error = exc
        finally:  # the error, if any, is set before anyone waiting is woken
            self._connected.set()
            self._planned.set()
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def _note(self, plan: dict[str, Any]) -> None:
        self.plan_result = plan

    def _advance(self, nbytes: int) -> None:
        with self._changed:
            self.sent += nbytes
            self._changed.notify_all()

    def connection(self) -> Connection:
        """Its connection, once open; raises what opening it raised."""
        self._connected.wait()
        if self.conn is None:
            assert self.error is not None
            raise self.error
        return self.conn

    def wait_planned(self) -> Planned:
        """The checked plan; raises what opening the session or the plan raised."""
        self._planned.wait()
        if self.planned is None:
            assert self.error is not None
            raise self.error
        return self.planned

    def wait_sent(self, on_bytes: Callable[[int], None]) -> None:
        """Until the stream has ended, passing on what was sent (what was sent before this
        was called at once); raises what the stream raised (the agent's result says why)."""
        told = 0
        while True:
            with self._changed:
                while self.sent == told and not self._done:
                    self._changed.wait()
                sent, done = self.sent, self._done
            if sent > told:
                on_bytes(sent - told)
                told = sent
            if done and told == self.sent:
                break
        if self.error is not None:
            raise self.error

    def discard(self) -> None:
        """Stop it (nothing was adopted, or the push failed before using it)."""
        if self.conn is not None:
            self.conn.cancel()
        self._thread.join()
        if self.conn is not None:
            self.conn.close()


_started: dict[tuple[str, str], EarlyPush] = {}
_lock = threading.Lock()
_attempted = False  # start() ran in this command (cli.quick's, then push_cmd's: once)


def claim(device: str, digest: str,
          signature: Mapping[str, str] | None = None) -> EarlyPush | None:
    """The early push of ``digest`` to ``device`` for ``deploy.push`` to adopt (once). One
    whose plan carried another signature (the bundle was signed meanwhile) is discarded and
    None returned: the push plans again with the signature the ORM read."""
    with _lock:
        early = _started.pop((device, digest), None)
    if early is not None and early.signature != (dict(signature) if signature else None):
        early.discard()
        return None
    return early


def discard_all() -> None:
    """Abort what was started and not adopted (the command failed before, or ended)."""
    global _attempted
    with _lock:
        left = list(_started.values())
        _started.clear()
        _attempted = False
    for early in left:
        early.discard()


def start(settings: Settings | EnvSettings, ref: str, pattern: str, forks: int,
          timeout: float | None) -> int:
    """Start the push of ``ref`` to the first ``forks`` devices ``pattern`` selects, when the
    DB can be read with the standard library; returns how many were started (0: none could
    be, or this command started them already, and ``deploy.push`` simply does all the work,
    as it does for the server)."""
    global _attempted
    with _lock:
        if _attempted:
            return 0
        _attempted = True
    try:
        rows = listings.push_rows(pattern)
    except EdgeFleetError:
        return 0  # the ORM path says what is wrong, in its words
    if rows is None:
        return 0
    devices, bundles, leases = rows
    bundle = _resolve(bundles, ref)
    if bundle is None:
        return 0
    manifest = listings.manifest_of(bundle)
    store = BlobStore(settings.blob_dir)
    if not all(store.has(f["sha256"]) for f in manifest["files"]):
        return 0  # this host must fetch blobs first (artifacts.blobfetch): deploy.push does
    signature = listings.push_signature(bundle)
    now = datetime.now(UTC)
    busy = {lease.device_name for lease in leases if lease.expires_at > now}
    started = 0
    for device in devices[:max(1, forks)]:
        if device.name in busy:
            continue  # another operation holds it: deploy.push says so, nothing is sent
        early = EarlyPush(settings, Target.of_device(device), manifest, bundle.digest, timeout,
                          signature)
        with _lock:
            _started[(device.name, bundle.digest)] = early
        started += 1
    return started


def _resolve(bundles: list[Any], ref: str) -> Any | None:
    """The bundle row ``ref`` names, by the rules of ``bundles.get_bundle`` (no version: the
    newest build that is not a variant); None if none. A wrong guess costs only work: the
    adopting step compares digests."""
    name, at, version = ref.partition("@")
    if at and not version:
        return None  # "fc@" is refused (refs.parse_ref): nothing may start for it
    named = [b for b in bundles if b.name == name]
    if version:
        return next((b for b in named if b.version == version), None)
    plain = [b for b in named if "parent" not in listings.manifest_of(b)] or named
    if not plain:
        return None
    return max(plain, key=lambda b: (b.created_at, version_tuple(b.version), b.id or 0))
