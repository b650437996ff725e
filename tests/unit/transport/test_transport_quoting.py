"""The one place remote command lines are built, checked against a real /bin/sh, and the local
transport that runs them."""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from orchestrator.core.errors import TransportError
from orchestrator.transport import RemotePath, Target
from orchestrator.transport.base import quote_token, render_command, render_launch, sftp_path
from orchestrator.transport.local import LocalConnection, write_wait_ms
from tests.waiting import process_gone

HOSTILE = [
    "plain",
    "two words",
    "  leading and trailing  ",
    "it's",
    'say "hi"',
    "$HOME",
    "${PATH}",
    "$(touch pwned)",
    "`touch pwned`",
    "a;touch pwned",
    "a && touch pwned",
    "a | cat",
    "line one\nline two",
    "tab\there",
    "back\\slash",
    "glob*?[ab]",
    "~",
    "~/not-a-remote-path",
    "-n",
    "--",
    "> out.txt",
    "#comment",
    "!history",
    "{a,b}",
    "",
    "ünïcødé ✓",
    "'\"'\"'",
]


def sh(command: str, cwd: Path,
       env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", command], cwd=cwd, capture_output=True, text=True,
                          env=dict(env) if env is not None else None, timeout=10, check=False)


# -- quote_token / render_command -------------------------------------------------------------


def test_every_token_is_quoted() -> None:
    argv = ["python3", "a b", "$(x)", "it's"]
    assert render_command(argv) == " ".join(shlex.quote(t) for t in argv)
    assert render_command(argv) == "python3 'a b' '$(x)' 'it'\"'\"'s'"
    assert [quote_token(t) for t in argv] == [shlex.quote(t) for t in argv]


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        (RemotePath("~/x y"), "\"$HOME\"/'x y'"),
        (RemotePath("~"), '"$HOME"'),
        (RemotePath("~/.edgefleet/agent/edgefleet-agent.pyz"),
         '"$HOME"/.edgefleet/agent/edgefleet-agent.pyz'),
        (RemotePath("~/$(touch pwned)"), "\"$HOME\"/'$(touch pwned)'"),
        (RemotePath("/opt/edge fleet"), "'/opt/edge fleet'"),
        (RemotePath("~user/x"), "'~user/x'"),  # only the user's own home is expanded
        ("~/x y", "'~/x y'"),  # a plain str is never expanded
    ],
)
def test_remote_paths(path: str, rendered: str) -> None:
    assert quote_token(path) == rendered


def test_remote_path_join() -> None:
    joined = RemotePath("~/.edgefleet/").join("agent", "x y")
    assert isinstance(joined, RemotePath) and joined == "~/.edgefleet/agent/x y"
    assert Target("pi", "10.0.0.1").agent_path == "~/.edgefleet/agent/edgefleet-agent.pyz"
    assert isinstance(Target("pi", "10.0.0.1").agent_path, RemotePath)


def test_hostile_tokens_survive_a_real_shell(tmp_path: Path) -> None:
    result = sh(render_command(["printf", "%s\\n", *HOSTILE]), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(t + "\n" for t in HOSTILE)
    assert sorted(os.listdir(tmp_path)) == []  # no `touch pwned`, no `> out.txt`


def test_each_hostile_token_alone(tmp_path: Path) -> None:
    for token in HOSTILE:
        result = sh(render_command(["printf", "[%s]", token]), tmp_path)
        assert result.stdout == f"[{token}]", token
    assert os.listdir(tmp_path) == []


def test_remote_paths_expand_home_and_nothing_else(tmp_path: Path) -> None:
    home = tmp_path / "the 'home' $dir"
    home.mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    paths = [RemotePath("~/x y"), RemotePath("~"), RemotePath("~/$(touch pwned)`id`;a"),
             RemotePath("~/a\nb"), RemotePath("/abs/~/x")]
    result = sh(render_command(["printf", "%s\\n", *paths]), work,
                env={"HOME": str(home), "PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == [
        f"{home}/x y", str(home), f"{home}/$(touch pwned)`id`;a", f"{home}/a", "b", "/abs/~/x"]
    assert os.listdir(work) == []


def sh_launch(argv: list[str], env: Mapping[str, str] | None, cwd: Path,
              stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    launch = render_launch(argv, env)
    return subprocess.run(["/bin/sh", "-c", launch.command], cwd=cwd, capture_output=True,
                          input=launch.stdin_first + stdin, timeout=10, check=False)


def test_env_values_survive_a_real_shell(tmp_path: Path) -> None:
    env = {f"V{i}": value for i, value in enumerate(HOSTILE)}
    script = "".join(f'printf "%s\\n" "${name}"; ' for name in env)
    result = sh_launch(["sh", "-c", script], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "".join(v + "\n" for v in env.values())
    assert os.listdir(tmp_path) == []


def test_env_values_never_reach_the_command_line(tmp_path: Path) -> None:
    """The command line is world-readable (ps); the values travel on stdin, and what the
    command reads from stdin after them is its own, byte for byte; ``nl`` is not exported."""
    env = {"TOKEN": "s3cr3t-token", "MULTI": "a\nb"}
    launch = render_launch(["cat"], env)
    assert "s3cr3t" not in launch.command and "a\nb" not in launch.command
    assert b"s3cr3t-token" in launch.stdin_first and launch.stdin_first.count(b"\n") == 1
    # One line: a csh-family login shell cannot parse a newline inside quotes.
    assert "\n" not in launch.command and "s3cr3t" not in repr(launch)
    payload = bytes(range(256)) * 64 + b"no newline at the end"
    result = sh_launch(["cat"], env, tmp_path, payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
    shown = sh_launch(["sh", "-c", 'printf "%s|%s|%s" "$TOKEN" "$MULTI" "${nl-unset}"; env'],
                      env, tmp_path)
    assert shown.stdout.startswith(b"s3cr3t-token|a\nb|unset")
    assert b"edgefleet_env" not in shown.stdout


def test_a_command_without_its_environment_line_refuses_to_start(tmp_path: Path) -> None:
    command = render_launch(["touch", "ran"], {"A": "1"}).command
    result = subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, input=b"",
                            capture_output=True, timeout=10, check=False)
    assert result.returncode == 125
    assert b"no environment line on stdin" in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name", ["1A", "A-B", "A B", "A=B", "", "A;B", "$(x)", "A.B", "Ä", "A\nB", "²"])
def test_bad_env_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="environment variable name .* is (not valid|empty)"):
        render_launch(["true"], {name: "1"})


@pytest.mark.parametrize("name", ["OPTIND", "UID", "RANDOM", "_", "edgefleet_env"])
def test_names_the_shell_keeps_are_refused(name: str, tmp_path: Path) -> None:
    """Through ``eval`` the device's sh refuses them (dash: OPTIND=x; bash as sh: UID is
    read-only, and says the value on stderr) or replaces them (RANDOM): refused here."""
    with pytest.raises(ValueError, match=f"'{name}' is one the device's shell keeps"):
        render_launch(["true"], {name: "1"})


@pytest.mark.parametrize("shell", ["dash", "bash", "busybox"])
def test_env_survives_each_device_shell(shell: str, tmp_path: Path) -> None:
    """The reader runs under whatever ``sh`` the device has (Debian: dash; some: bash or
    busybox ash); values with newlines, quotes and ``$`` arrive exactly, and so does the
    input that follows the line, byte for byte."""
    import shutil

    path = shutil.which(shell)
    assert path, f"{shell} is not installed (scripts/test.sh installs it)"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to(path)
    if shell == "busybox":
        (bin_dir / "sh").unlink()
        (bin_dir / "sh").write_text(f'#!/bin/dash\nexec {path} sh "$@"\n')
        (bin_dir / "sh").chmod(0o755)
    env = {"A": "x\ny\n", "B": "it's $HOME `id`", "C": "\n"}
    launch = render_launch(["sh", "-c", 'printf "%s|%s|%s|" "$A" "$B" "$C"; cat'], env)
    payload = bytes(range(256)) * 8
    result = subprocess.run([path, "-c", launch.command] if shell != "busybox"
                            else [path, "sh", "-c", launch.command],
                            input=launch.stdin_first + payload, capture_output=True,
                            env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=10,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"x\ny\n|it's $HOME `id`|\n|" + payload


@pytest.mark.parametrize("name", ["A", "_A", "a_b", "nl", "OMP_NUM_THREADS", "X9"])
def test_good_env_names(name: str, tmp_path: Path) -> None:
    result = sh_launch(["sh", "-c", f'printf %s "${name}"'], {name: "v a l"}, tmp_path)
    assert result.stdout == b"v a l"


@pytest.mark.parametrize("env", [{"X": "1"}, None, {}])
def test_program_with_equals_sign_is_refused(env: dict[str, str] | None) -> None:
    # shlex.quote leaves "A=B" bare: the shell would read it as an assignment and run the
    # next token instead (`A=B true` runs `true`).
    with pytest.raises(ValueError, match="program path 'A=B' contains '='"):
        render_launch(["A=B", "true"], env)
    # Later tokens may contain '=': they are arguments wherever they stand.
    assert render_launch(["printf", "A=B"], env).command.endswith("printf A=B")


def test_sftp_paths() -> None:
    assert sftp_path("~") == "."
    assert sftp_path("~/a b") == "a b"
    assert sftp_path("/abs") == "/abs"


# -- LocalConnection.run ----------------------------------------------------------------------


@pytest.fixture
def local() -> LocalConnection:
    return LocalConnection(Target("this-box", "localhost", connection="local"))


def test_run_stdin(local: LocalConnection) -> None:
    result = local.run(["cat"], stdin=b"hello\nworld\n")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hello\nworld\n", "")


def test_run_large_stdout_and_stderr_together(local: LocalConnection) -> None:
    # 2 MB on each stream, interleaved: far more than a pipe buffer, so both must be drained.
    script = ('i=0; while [ $i -lt 300 ]; do printf "%07000d\\n" $i; printf "%07000d\\n" $i >&2; '
              'i=$((i+1)); done')
    result = local.run(["sh", "-c", script], stdin=b"unused\n", timeout=20)
    expected = "".join(f"{i:07000d}\n" for i in range(300))
    assert result.exit_code == 0 and result.stdout == expected
    # stderr is kept as its last 64 KiB (OutputLimits.stderr_keep), saying what was dropped.
    keep = 64 * 1024
    header = (f"[stderr truncated: the first {len(expected) - keep} bytes were dropped, "
              "the last 64 KiB follow]\n")
    assert result.stderr == header + expected[-keep:]


@pytest.mark.timeout(10)  # a deadlock fails here, not at the 300 s default
def test_run_large_stdin_echoed_back_does_not_deadlock(local: LocalConnection) -> None:
    data = b"".join(b"%07d" % i * 1000 + b"\n" for i in range(300))  # 2.1 MB
    result = local.run(["cat"], stdin=data, timeout=20)
    assert result.exit_code == 0 and result.stdout.encode() == data


@pytest.mark.timeout(10)
def test_run_command_that_ignores_its_stdin(local: LocalConnection) -> None:
    result = local.run(["sh", "-c", "echo done; exit 4"], stdin=b"x" * 2_000_000)
    assert (result.exit_code, result.stdout) == (4, "done\n")


def test_run_env_and_hostile_args(local: LocalConnection) -> None:
    env = {"GREETING": "hi $(touch pwned) 'there'", "EMPTY": ""}
    result = local.run(["sh", "-c", 'printf "%s|%s|%s" "$GREETING" "$EMPTY" "$1"', "sh",
                        "a;b `c`"], env=env)
    assert result.stdout == "hi $(touch pwned) 'there'||a;b `c`"


def test_run_nonzero_exit_is_a_result_not_an_error(local: LocalConnection) -> None:
    result = local.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert local.run(["false"]).exit_code == 1
    assert local.run(["/nonexistent/program"]).exit_code == 127


def test_on_line_streams_while_the_command_runs(local: LocalConnection, tmp_path: Path) -> None:
    """The command blocks until the handler answers its first line, so this only passes if
    lines are delivered as they come, not at the end."""
    fifo = tmp_path / "answer"
    os.mkfifo(fifo)
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line == "question\n":
            with open(fifo, "w") as answer:
                answer.write("42\n")

    script = 'echo question; read x < "$1"; echo "got $x"; printf "no newline"'
    result = local.run(["sh", "-c", script, "sh", str(fifo)], on_line=on_line, timeout=10)
    assert result.exit_code == 0
    assert seen == ["question\n", "got 42\n", "no newline"]
    assert result.stdout == "".join(seen)




@pytest.mark.parametrize(
    "argv",
    [["sleep", "5"], ["sh", "-c", "echo started; sleep 5; echo never"]],
    ids=["sleep", "sh-grandchild"],
)
def test_silence_timeout_kills_the_command(local: LocalConnection, tmp_path: Path,
                                           argv: Sequence[str]) -> None:
    pidfile = tmp_path / "pid"
    wrapped = ["sh", "-c", 'echo $$ > "$1"; shift; exec "$@"', "sh", str(pidfile), *argv]
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"^this-box: no output for 0.5s; command killed"):
        local.run(wrapped, timeout=0.5)
    assert time.monotonic() - started < 3  # not the 5 s the command wanted
    assert process_gone(int(pidfile.read_text()), 5)


def test_silence_timeout_kills_background_children_too(local: LocalConnection,
                                                       tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(TransportError, match="no output"):
        local.run(["sh", "-c", 'sleep 30 & echo $! > "$1"; wait', "sh", str(pidfile)],
                  timeout=0.5)
    assert time.monotonic() - started < 3
    assert process_gone(int(pidfile.read_text()), 5)


def test_timeout_bounds_silence_not_total_time(local: LocalConnection) -> None:
    # 4 lines 0.3 s apart: 1.2 s in all, never 1 s of silence.
    script = "for i in 1 2 3 4; do echo $i; sleep 0.3; done"
    result = local.run(["sh", "-c", script], timeout=1.0)
    assert (result.exit_code, result.stdout) == (0, "1\n2\n3\n4\n")


def test_a_partial_line_then_silence_still_times_out(local: LocalConnection) -> None:
    """Bytes without a newline are not a line: the silence timeout still ends the wait."""
    started = time.monotonic()
    with pytest.raises(TransportError, match="no output for 0.5s"):
        local.run(["sh", "-c", 'printf "half a line"; sleep 5'], timeout=0.5)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("timeout", [1e9, float("inf")], ids=["31-years", "inf"])
def test_a_timeout_too_long_for_poll_is_still_a_timeout(local: LocalConnection,
                                                         timeout: float) -> None:
    """poll() takes at most ~24.8 days in ms: a longer silence timeout waits in slices, and an
    infinite one is none; neither breaks a read."""
    result = local.run(["sh", "-c", "echo one; sleep 0.2; echo two"], timeout=timeout)
    assert (result.exit_code, result.stdout) == (0, "one\ntwo\n")


def test_reading_lines_starts_no_thread_per_line(local: LocalConnection,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A telemetry poll prints ~90 lines; the silence timeout used to be a Timer thread per
    line (half the control plane's CPU per poll). Now the only thread is stderr's drain."""
    import threading

    started: list[str] = []
    real_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(type(self).__name__)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    result = local.run(["sh", "-c", "i=0; while [ $i -lt 500 ]; do echo line $i; "
                        "i=$((i+1)); done"], timeout=10)
    assert result.stdout.count("\n") == 500
    assert started == ["Thread"], started  # the stderr drain: no Timer, no stdin feeder


def test_runs_are_independent_across_threads(local: LocalConnection) -> None:
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = local.run(["sh", "-c", 'printf "%s" "$N"'], env={"N": str(i)}).stdout

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: str(i) for i in range(8)}


def test_local_put(local: LocalConnection, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * (1 << 20) + 5))
    chunks: list[int] = []
    assert local.put(src, "~/copy of src.bin", on_bytes=chunks.append) == src.stat().st_size
    assert (tmp_path / "copy of src.bin").read_bytes() == src.read_bytes()
    assert sum(chunks) == src.stat().st_size and len(chunks) == 4
    with pytest.raises(TransportError, match=r"^this-box: writing ~/no/such/dir failed"):
        local.put(src, "~/no/such/dir")


@pytest.mark.timeout(20)
def test_a_command_that_reads_none_of_its_input_is_killed_after_the_timeout(
        local: LocalConnection) -> None:
    """A write to a command that never reads would block forever; after ``timeout`` seconds
    without progress the command is killed and the write fails naming why."""
    channel = local.start(["sleep", "60"], timeout=1.0)
    with pytest.raises(TransportError, match=r"read none of its input for 1s; command killed"):
        channel.write(b"x" * 4_000_000)  # far beyond the 64 KiB pipe
    code, _ = channel.finish()
    assert code == -9
    reader = local.start(["sh", "-c", "cat > /dev/null; echo read"], timeout=1.0)
    for _ in range(40):  # a reader keeps every write under the timeout
        reader.write(b"y" * 256 * 1024)
    reader.close_input()
    assert reader.readline() == "read\n"


@pytest.mark.timeout(20)
def test_a_write_without_a_silence_timeout_waits_for_a_slow_reader(
        local: LocalConnection) -> None:
    """No timeout (None, 0, infinity: a benchmark's session) means a write waits as long as
    the command takes, in poll (no timer thread per write), and never overflows poll."""
    assert [write_wait_ms(t) for t in (None, 0, math.inf, 1.0, 1e12)] == [
        None, None, None, 1000, 86_400_000]
    reader = local.start(["sh", "-c", "sleep 1; cat > /dev/null; echo read"], timeout=math.inf)
    reader.write(b"z" * 2_000_000)  # blocks until the reader wakes after a second
    reader.close_input()
    assert reader.readline() == "read\n"
    assert reader.finish()[0] == 0
