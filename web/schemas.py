"""Response models of the JSON API, so /docs and /openapi.json show what every route returns.

They describe the dicts the service functions already build (``listings.device_public``,
``runs.run_public``, ``jobs.job_public``, ...), field for field and in the same order, so that
declaring them changes no response byte. Rules that keep it so (tests/unit/web/test_api_schema.py
checks them against real responses):

- Timestamps are ``str``, not ``datetime``: the services already format them (``+00:00``;
  pydantic would re-render them with ``Z``).
- Numbers that may be integral are ``Number`` (int or float, kept as given): a ``float`` field
  would turn a device's ``ram_mb: 8000`` into ``8000.0``.
- Keys that only some responses carry (a run's ``results``, an eval result's ``eval``, raw
  ``latencies_ms``) default to None and the routes use ``response_model_exclude_unset``, so a
  key absent from the dict stays absent instead of appearing as ``null``.
- What an agent reports about its hardware (facts, sensors) and what a bundle's manifest or a
  job's kind defines (params, progress, results) is open: typed ``Any``/``dict`` with a
  description rather than guessed, since a guess that is wrong for one device would make the
  whole listing a 500.
- Every model allows extra keys: a key a service adds tomorrow reaches clients (as an untyped
  key) instead of being silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

Number = Annotated[int | float, WithJsonSchema({"type": "number"})]
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Open = Annotated[Any, Field(description="As reported; shape not fixed by the API")]


class Out(BaseModel):
    """Base of every response model: unknown keys pass through, nothing is coerced away."""

    model_config = ConfigDict(extra="allow")


class DevicePublic(Out):
    """``listings.device_public``: no key paths, no environment values."""

    name: str
    address: str
    port: int
    connection: str
    groups: list[str]
    labels: dict[str, Any]
    simulated: bool
    agent_version: str | None
    active_bundle: str | None = Field(description="name@version")
    active_digest: str | None
    last_seen: Timestamp | None
    pi_model: Open = Field(description="Board model string from the agent's facts")
    arch: Open = Field(description="CPU architecture from the agent's facts")
    cores: Open = Field(description="CPU count from the agent's facts")
    ram_mb: Open = Field(description="Total RAM (MB) from the agent's facts")
    onnxruntime: Open = Field(description="onnxruntime version on the device")
    temp_c: Open = Field(description="SoC temperature (degC) at the last facts read")
    throttled_hex: Open = Field(description="vcgencmd get_throttled bits, e.g. '0x0'")
    throttle_flags: Open = Field(description="Decoded throttle flags")
    source: str | None = Field(description="Inventory file:line")


class DeploymentRow(Out):
    """One push or rollback of a device (the ``Deployment`` table row as JSON). Its keys now
    come in this, the table's, order; ``model_dump`` of a loaded row gave them in the order
    SQLAlchemy happened to set the attributes, which varied between processes."""

    device_name: str
    operation: str = Field(description="push | rollback")
    bundle_name: str | None
    bundle_version: str | None
    bundle_digest: str | None
    state: str = Field(description="pending | transferring | verifying | active | unchanged "
                                   "| failed")
    bytes_sent: int
    duration_s: Number | None
    error: str | None
    started_at: Timestamp
    finished_at: Timestamp | None
    job_id: int | None
    id: int


class DeviceDetail(DevicePublic):
    """A device with its full facts and its 20 newest deployments."""

    facts: dict[str, Any]
    deployments: list[DeploymentRow]


class BundlePublic(Out):
    """``listings.bundle_public``; the manifest keys are None when the bundle has none."""

    name: str
    version: str
    digest: str
    size_bytes: int
    precision: str | None
    created_at: Timestamp
    min_onnxruntime: Open
    model: Open
    files: Open
    source: Open
    labels: Open
    preprocessing: Open
    golden: Open
    parent: Open
    quantization: Open
    streaming: Open
    input_shapes: dict[str, list[int]] | None = Field(
        None, description="Shapes benchmarks and golden inputs use: --shape, or assumed")
    shape_defaults: dict[str, list[dict[str, Any]]] | None = Field(
        None, description="Per input, the sizes assumed at build ({dimension, name, size, "
                          "from}): a batch of 1, a preprocessor_config's feature dims")
    input_constants: dict[str, Any] | None = Field(
        None, description="Constant inputs (bundle build --input NAME=VALUE): golden inputs "
                          "and bench's default")
    signed: dict[str, Any] | None = Field(
        None, description="Who signed it ({by, fingerprint, at}: edgefleet bundle sign); None "
                          "when unsigned. Devices with pinned keys refuse unsigned bundles")


class BundleRef(Out):
    name: str
    version: str
    digest: str


class LatencySummary(Out):
    n: int
    mean: Number | None
    std: Number | None
    min: Number | None
    max: Number | None
    p50: Number | None
    p90: Number | None
    p95: Number | None
    p99: Number | None


class ResultTelemetry(Out):
    status: str | None = Field(description="clean | throttled | unknown")
    temp_c_min: Number | None
    temp_c_max: Number | None
    freq_mhz_min: Number | None
    freq_mhz_max: Number | None
    throttled_bits: int | None
    throttle_flags: dict[str, Any]
    samples: list[Any] | None = Field(None, description="Sampler rows; only with ?raw=true")


class EvalPublic(Out):
    """``evalmetrics.eval_public``: an eval result's scores."""

    metrics: dict[str, Any]
    preprocessing_ms: Open
    preprocessing_stats: Open
    samples: list[Any]
    output: Open
    energy: Open


class ResultPublic(Out):
    """``runs.result_public``: one device x thread count of a run."""

    run_id: int
    device: str
    simulated: bool
    bundle: BundleRef
    precision: str | None
    threads: int | None
    ok: bool
    error: str | None
    latency_ms: LatencySummary | None
    cpu_p50_ms: Number | None = Field(
        description="Median process CPU time per timed run (ms): what change-point detection "
                    "reads, as it is steadier than wall time on a shared machine; null for "
                    "results from agents that did not report it")
    load_ms: Number | None
    first_inference_ms: Number | None
    peak_rss_mb: Number | None
    steady_rss_mb: Number | None
    model_size_mb: Number | None
    telemetry: ResultTelemetry
    valid: bool | None
    flags: list[str]
    reasons: list[str]
    inputs: Open
    round_sizes: Open
    energy: Open
    eval: EvalPublic | None = Field(None, description="Eval runs only")
    latencies_ms: list[Number] | None = Field(None, description="Only with ?raw=true")


class RunPublic(Out):
    """``runs.run_public`` without results (the run list)."""

    id: int
    kind: str = Field(description="bench | eval")
    state: str = Field(description="running | succeeded | partial | failed | interrupted "
                                   "(cancelled, or its process died: results finished "
                                   "before that are kept, and it gets no verdict)")
    state_reason: str | None = Field(description="Why an interrupted run stopped (its job's "
                                                 "error); null otherwise")
    job_id: int | None = Field(description="The job that made the run")
    bundle: BundleRef
    targets: str
    params: dict[str, Any]
    created_by: str
    created_at: Timestamp
    finished_at: Timestamp | None


class RunDetail(RunPublic):
    """A run with its results; eval runs add the cross-device ``agreement``."""

    results: list[ResultPublic]
    agreement: dict[str, Any] | None = Field(None, description="Eval runs only")


class CompareRow(Out):
    """``pairing.compare_runs``: B against A for one (device, threads), or why not compared."""

    device: str
    threads: int | None
    simulated: bool
    bundle_a: str | None
    bundle_b: str | None
    p50_a: Number | None
    p50_b: Number | None
    ratio: Number | None
    ci_low: Number | None
    ci_high: Number | None
    p_value: Number | None
    verdict: str | None
    excluded: str | None
    note: str | None
    n_a: int | None
    n_b: int | None


class ChangePointPublic(Out):
    """``regressions.change_point_public``: where one series moves to another level."""

    device: str
    bundle: str = Field(description="Bundle name (its versions follow one another)")
    precision: str | None
    threads: int | None
    run_id: int = Field(description="The first run of the new level")
    version: str = Field(description="The bundle version that run measured")
    at: Timestamp
    previous_run_id: int = Field(description="The last run before the change")
    previous_version: str
    direction: str = Field(description="slower (a regression) | faster")
    before_ms: Number = Field(description="Median p50 of the segment before")
    after_ms: Number = Field(description="Median p50 of the segment from run_id on")
    ratio: Number = Field(description="after_ms / before_ms: above 1 is slower")
    ci_low: Number | None = Field(description="Bootstrap 95% CI of the ratio")
    ci_high: Number | None
    p_value: Number = Field(description="The detector's test of the two segments")
    points_before: int
    points_after: int
    metric: str = Field(description="cpu: the series of CPU-time p50s (every point had one) | "
                                    "wall: wall-clock p50s; before_ms/after_ms are of it")


class DetectorPublic(Out):
    method: str
    max_pvalue: Number
    min_magnitude: Number = Field(description="The least shift of the segments' means kept, "
                                              "as a share (0.04: 4%)")
    min_points: int = Field(description="Points each segment needs")
    windows: list[int] = Field(description="Otava's window widths, one candidate pass each")


class RegressionsPublic(Out):
    """``regressions.regressions_public``: every change point of the benchmark series read
    (device x bundle name x precision x threads, valid p50s only), newest first."""

    change_points: list[ChangePointPublic]
    regressions: int = Field(description="How many of them are slower")
    series: int = Field(description="Series with at least one valid point")
    valid_points: int
    detector: DetectorPublic


class JobPublic(Out):
    """``jobs.job_public``."""

    id: int
    kind: str = Field(description="push | bench | eval | rollback | verify | telemetry")
    state: str = Field(description="queued | running | succeeded | failed | cancelled | "
                                   "interrupted")
    params: dict[str, Any]
    targets: str
    origin: str = Field(description="server | cli | schedule")
    created_by: str
    progress: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    run_id: int | None
    schedule_id: int | None
    cancel_requested: bool
    created_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    worker: str | None = Field(description="host:pid of the process that ran it (None: not "
                                            "started yet)")


class SchedulePublic(Out):
    """``schedules.schedule_public``."""

    id: int
    kind: str
    params: dict[str, Any]
    targets: str
    cron: str | None
    run_at: Timestamp | None
    next_run_at: Timestamp | None
    enabled: bool
    created_by: str
    created_at: Timestamp | None
    last_job_id: int | None


class InventorySyncOut(Out):
    """``SyncReport.as_dict`` plus whether it was applied (False for a dry run)."""

    added: list[str]
    changed: dict[str, dict[str, list[Any]]] = Field(
        description="device -> field -> [old, new] (environment values redacted)")
    removed: list[str]
    unchanged: list[str]
    applied: bool


class AuditEventPublic(Out):
    """``audit.event_public``."""

    id: int
    at: Timestamp | None
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class AlertPublic(Out):
    """``alerts.alert_public``: an alert and how its webhook delivery went (no URL, no
    secret: neither is stored)."""

    id: int
    kind: str = Field(description="regression | device_offline | device_throttled | "
                                  "job_failed")
    subject: str = Field(description="The device, job:<id>, or the series of a change point")
    summary: str
    state: str = Field(description="pending | delivered | failed | off (no webhook for the "
                                   "kind)")
    attempts: int
    last_error: str | None
    created_at: Timestamp | None
    delivered_at: Timestamp | None
    payload: dict[str, Any] = Field(description="The JSON body POSTed (README: Alerts)")
