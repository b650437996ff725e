"""Rendering for the CLI: rich tables on stdout, progress on stderr, JSON when asked.

Everything user-controlled (device names, labels, paths) goes into tables as ``Text`` so that a
hostile name like ``[red]x`` is shown, not interpreted as markup.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from orchestrator.fleet.fanout import Outcome
from orchestrator.present import progress_words
from orchestrator.present.wording import plural

# Control characters (ESC, BEL, C1, DEL) and bidirectional overrides in text we print.
_UNSEEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with its control characters written out (``\\x1b``): a device's model string,
    an inventory label or an error echoing either can hold ``ESC ]0;...`` (retitle the
    terminal), ``ESC [2J`` (clear it) or a right-to-left override that reorders what follows.
    Newlines and tabs stay."""
    return _UNSEEN.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", text)


class SafeConsole(Console):
    """A Console whose text is passed through ``visible`` as it is written: every table, error
    and progress line, whoever built the ``Text``. One place, rather than at each of the many
    ``Text(...)`` holding device or user strings. Rich adds its own styles after this
    (``Style.render``), and its cursor moves are control segments, left as they are."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            Segment(visible(seg.text), seg.style, seg.control) if seg.control is None else seg
            for seg in buffer)


class StdoutUnwritable(OSError):
    """Standard output itself cannot be written (``> /dev/full``, a full disk under a
    redirect): not the command's file problem, so not reported as one ("free space under
    EDGEFLEET_HOME") nor, with --json, written to that same stdout."""


class GuardedStdout:
    """``sys.stdout`` whose write failures are ``StdoutUnwritable`` (a closed pipe stays
    BrokenPipeError: ``| head`` stopping early is not an error). Everything else is the
    stream's own, looked up on each call (rich asks ``isatty``, ``fileno``, ``encoding``)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _guarded(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StdoutUnwritable(exc.errno, exc.strerror) from None

    def write(self, text: str) -> int:
        return self._guarded(self._stream.write, text)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# Piped output gets a wide fixed width so tables are not squeezed into 80 columns.
stdout = SafeConsole(highlight=False, soft_wrap=False,
                     width=None if sys.stdout.isatty() else 160)
stderr = SafeConsole(stderr=True, highlight=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_text(text: str) -> None:
    """Plain text (Markdown, CSV) on stdout, byte for byte: no rich wrapping or markup (to a
    terminal, control characters written out: ``visible``)."""
    if sys.stdout.isatty():
        text = visible(text)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def plain(value: Any, nested: bool = False) -> str:
    """A value as a person reads it, never a Python repr: lists joined with ", ", mappings as
    "key: value" joined with "; " (a nested one in parentheses), empty ones as "none",
    booleans yes/no, None "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        text = "; ".join(f"{k}: {plain(v, True)}" for k, v in value.items()) or "none"
        return f"({text})" if nested and len(value) > 1 else text
    if isinstance(value, list | tuple):
        return ", ".join(plain(v, True) for v in value) or "none"
    return str(value)


def cell(value: Any) -> Text:
    if value is None or value == "":
        return Text("-", style="dim")
    if isinstance(value, dict) and all(not isinstance(v, dict | list | tuple)
                                       for v in value.values()):
        return Text(", ".join(f"{k}={plain(v)}" for k, v in value.items()))  # labels: k=v
    return Text(plain(value))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    out = Table(title=title, title_justify="left", header_style="bold", box=None,
                pad_edge=False)
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*(value if isinstance(value, Text) else cell(value) for value in row))
    return out


STATE_STYLES = {"failed": "red", "active": "green", "installed": "green", "unchanged": "cyan",
                "rolled-back": "yellow", "missing-deps": "red", "nothing-to-roll-back": "yellow"}


def outcome_table(title: str, outcomes: Sequence[Outcome], extra: Sequence[str] = ()) -> Table:
    columns = ["device", "state", *extra, "time", "error"]
    rows = []
    for o in outcomes:
        state = Text(o.state, style=STATE_STYLES.get(o.state, ""))
        rows.append([o.device, state, *(o.data.get(key) for key in extra),
                     f"{o.duration_s:.2f}s", o.error])
    return table(title, columns, rows)


def summary_line(outcomes: Sequence[Outcome]) -> str:
    failed = sum(1 for o in outcomes if not o.ok)
    return f"{len(outcomes) - failed} ok, {failed} failed, {plural(len(outcomes), 'device')}"


def devices_table(devices: Sequence[dict[str, Any]]) -> Table:
    """The fleet at a glance, from ``devices.device_public`` dicts."""
    columns = ["device", "address", "groups", "model", "temp °C", "throttled", "bundle",
               "agent", "labels"]
    rows = []
    for d in devices:
        name = d["name"] + (" (sim)" if d["simulated"] else "")
        address = "local" if d["connection"] == "local" else f"{d['address']}:{d['port']}"
        flags = d.get("throttle_flags") or {}
        now, past = flags.get("now", []), flags.get("since_boot", [])
        throttled = None
        if d.get("throttled_hex"):
            words = ", ".join(now) + (f" (since boot: {', '.join(past)})" if past else "")
            throttled = Text(f"{d['throttled_hex']} {words}".strip(),
                             style="red" if now else "yellow" if past else "")
        temp = d.get("temp_c")
        temp_cell = Text(f"{temp:.1f}", style="red" if temp >= 80 else "") if temp else None
        model = (d["pi_model"] or "").removeprefix("Raspberry ") or None
        rows.append([name, address, d["groups"], model, temp_cell, throttled,
                     d["active_bundle"], d["agent_version"], d["labels"]])
    return table(None, columns, rows)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class RichPushProgress:
    """One bar per device: bytes sent, then the device's state."""

    def __init__(self, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("{task.fields[device]}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[state]}"),
            console=stderr,
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichPushProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _task(self, device: str) -> Any:
        if device not in self.tasks:
            self.tasks[device] = self.progress.add_task(
                "", total=None, device=Text(device), state="connecting")
        return self.tasks[device]

    def start(self, device: str, total_bytes: int) -> None:
        self.progress.update(self._task(device), total=total_bytes, completed=0)

    def advance(self, device: str, nbytes: int) -> None:
        self.progress.advance(self._task(device), nbytes)

    def state(self, device: str, state: str) -> None:
        self.progress.update(self._task(device), state=state)


PROGRESS_STEPS = 1000  # a bar's resolution: fractions of a measurement, not raw run counts


class MeasureProgress:
    """One line per device: which thread count, which phase, how many runs (``bench``) or
    samples (``eval``) done; for an eval, the dataset push before that."""

    def __init__(self, enabled: bool = True, kind: str = "bench") -> None:
        self.kind = kind
        self.progress = Progress(
            TextColumn("{task.fields[device]}"), BarColumn(), TextColumn("{task.fields[what]}"),
            console=stderr, disable=not enabled)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> MeasureProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, device: str, event: dict[str, Any]) -> None:
        if event.get("event") not in (self.kind, "dataset"):
            return
        if device not in self.tasks:
            self.tasks[device] = self.progress.add_task("", total=None, device=Text(device),
                                                        what="")
        if event.get("event") == "dataset":
            self.progress.update(self.tasks[device], what="pushing the dataset")
            return
        done = progress_words.fraction(event)
        shown = progress_words.counts(event, progress_words.unit_of(event, self.kind))
        threads = event.get("threads")
        self.progress.update(
            self.tasks[device], total=None if done is None else PROGRESS_STEPS,
            completed=0 if done is None else round(done * PROGRESS_STEPS),
            what=f"{threads} thread{'' if threads == 1 else 's'}, "
                 + (f"process {event['round']}/{event['rounds']}, " if event.get("rounds")
                    else "") + f"{event.get('phase')}"
                 + (f" {shown}" if shown else ""))
