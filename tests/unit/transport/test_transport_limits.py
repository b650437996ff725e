"""OutputLimits: what one command may send us, checked while reading (the flooding-device
scenarios over real sshd are in tests/faults/test_flooding_device.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.config import Settings
from orchestrator.core.errors import TransportError
from orchestrator.transport import Target, connect
from orchestrator.transport.base import (
    MAX_LINE_BYTES,
    MAX_OUTPUT_BYTES,
    LineBuffer,
    MiB,
    OutputLimitError,
    OutputLimits,
    OutputMeter,
    StderrTail,
    format_size,
)
from orchestrator.transport.local import LocalConnection
from tests.waiting import process_gone

TARGET = Target("box", "localhost", connection="local")


def buffer(max_line: int, max_output: int = MAX_OUTPUT_BYTES) -> LineBuffer:
    return LineBuffer(OutputMeter("box", OutputLimits(max_line=max_line, max_output=max_output)))


def test_a_line_of_exactly_the_limit_passes_one_byte_more_does_not() -> None:
    lines = buffer(8)
    lines.feed(b"1234567\n" + b"abc")
    assert lines.next_line(eof=False) == "1234567\n"
    assert lines.next_line(eof=False) is None  # "abc" waits for its newline
    lines.feed(b"defgh\n")
    with pytest.raises(OutputLimitError, match=r"^box: the device sent a line longer than 8 "
                       r"bytes without a newline; command abandoned"):
        lines.next_line(eof=False)


def test_a_newline_less_stream_fails_once_past_the_limit_not_at_its_end() -> None:
    lines = buffer(10)
    lines.feed(b"x" * 10)
    assert lines.next_line(eof=False) is None
    lines.feed(b"x")
    with pytest.raises(OutputLimitError, match="longer than 10 bytes"):
        lines.next_line(eof=False)


def test_lines_split_across_chunks_and_the_rest_at_eof() -> None:
    lines = buffer(100)
    for chunk in (b"one\ntw", b"o\n", b"\nthree"):
        lines.feed(chunk)
    got = []
    while (line := lines.next_line(eof=True)) != "":
        got.append(line)
    assert got == ["one\n", "two\n", "\n", "three"]


def test_the_total_counts_every_byte_fed() -> None:
    lines = buffer(100, max_output=10)
    lines.feed(b"1234\n")
    lines.feed(b"6789\n")  # 10 bytes: at the limit, not past it
    with pytest.raises(OutputLimitError, match=r"^box: the device sent more than 10 bytes of "
                       r"output \(stdout and stderr\) for one command; command abandoned"):
        lines.feed(b"x")


def test_stderr_keeps_its_tail_and_says_what_was_dropped() -> None:
    tail = StderrTail(keep=5)
    tail.add(b"abc")
    assert tail.text() == "abc"
    tail.add(b"defgh")
    assert tail.text() == ("[stderr truncated: the first 3 bytes were dropped, the last "
                           "5 bytes follow]\ndefgh")


def test_sizes_and_settings() -> None:
    assert [format_size(n) for n in (100, 64 * 1024, 64 * MiB, MiB // 2 * 3)] == [
        "100 bytes", "64 KiB", "64 MiB", "1.5 MiB"]
    assert OutputLimits.from_mb(None, None) == OutputLimits()
    assert OutputLimits().max_line == MAX_LINE_BYTES
    assert OutputLimits.from_mb(0.5, 16) == OutputLimits(max_line=MiB // 2, max_output=16 * MiB)


def test_connect_takes_the_limits_from_settings(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_MAX_LINE_MB", "2")
    monkeypatch.setenv("EDGEFLEET_MAX_OUTPUT_MB", "24")
    conn = connect(TARGET, Settings(home=tmp_path))
    assert (conn.limits.max_line, conn.limits.max_output) == (2 * MiB, 24 * MiB)
    monkeypatch.setenv("EDGEFLEET_MAX_LINE_MB", "0")
    with pytest.raises(ValueError, match="max_line_mb"):
        Settings(home=tmp_path)


# -- the local transport, for real ------------------------------------------------------------



SMALL = OutputLimits(max_line=MiB, max_output=4 * MiB, stderr_keep=1024)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("flood", "error"), [
    # 1 GiB without a newline; nothing reads it all.
    ("head -c 1073741824 /dev/zero", r"a line longer than 1 MiB without a newline"),
    # 1 GiB of short lines, then of stderr: the per-command total stops both.
    ("yes flood | head -c 1073741824", r"more than 4 MiB of output"),
    ("head -c 1073741824 /dev/zero >&2", r"more than 4 MiB of output"),
], ids=["no-newline", "lines", "stderr"])
def test_a_local_flood_is_stopped_and_killed(tmp_path: Path, flood: str, error: str) -> None:
    pidfile = tmp_path / "pid"
    conn = LocalConnection(TARGET, SMALL)
    with pytest.raises(OutputLimitError, match=rf"^box: the device sent {error}"):
        conn.run(["sh", "-c", f'echo $$ > "$1"; {flood}; echo never', "sh", str(pidfile)])
    assert process_gone(int(pidfile.read_text()), 10)
    assert issubclass(OutputLimitError, TransportError)  # a device's failure, as any other


def test_stderr_under_the_total_is_kept_as_its_tail() -> None:
    conn = LocalConnection(TARGET, SMALL)
    result = conn.run(["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x >&2; "
                       "echo last words >&2; echo out"])
    assert (result.exit_code, result.stdout) == (0, "out\n")
    dropped = 3000000 + len("last words\n") - 1024
    assert result.stderr == (f"[stderr truncated: the first {dropped} bytes were dropped, "
                             "the last 1 KiB follow]\n" + "x" * (1024 - 11) + "last words\n")


def test_many_short_lines_are_all_kept_or_only_streamed() -> None:
    conn = LocalConnection(TARGET)
    script = "i=0; while [ $i -lt 10000 ]; do echo $i; i=$((i+1)); done"
    expected = "".join(f"{i}\n" for i in range(10000))
    assert conn.run(["sh", "-c", script]).stdout == expected  # across several joins
    seen: list[str] = []
    result = conn.run(["sh", "-c", script], on_line=seen.append, keep_stdout=False)
    assert (result.stdout, "".join(seen)) == ("", expected)
