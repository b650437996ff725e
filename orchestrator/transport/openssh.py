"""SSH through the system's OpenSSH client (``ssh``), as ansible-core and pyinfra do by default.

Why a second SSH transport: a fresh ``edgefleet push`` spent ~0.25 s importing paramiko and
fabric before its first byte, and paramiko frames every packet in Python; ``ssh`` starts in
milliseconds, encrypts in C, and honours the user's ``~/.ssh/config`` fully (ProxyJump, Port,
IdentityFile, ...). The paramiko transport (``ssh.py``) stays for machines without ``ssh``
and for ``ansible_connection: paramiko``.

What is never left to the user's config: host keys are checked with
``StrictHostKeyChecking=yes`` (an unknown or changed key is refused, never learnt: ``edgefleet
devices trust`` is the one way a key gets in) against exactly the keys the paramiko transport
trusts for the host (``hostkeys.trusted_keys``: the database's, then the legacy file's, then
``~/.ssh/known_hosts``'s, first per key type), written to a private known_hosts file that is
the only one ssh reads (no global file, no KnownHostsCommand, no DNS, under a fixed
HostKeyAlias); ``BatchMode`` (no prompt can hang a fleet operation), no forwarding of agent,
X11 or ports. The key is this worker's (``factory.worker_key``: ``EDGEFLEET_SSH_KEY_FILE``).
Commands are the same quoted lines the other transports send (``base.render_launch``).
The commands of one operation share one SSH connection (``ControlMaster=auto``), which stays
open ``EDGEFLEET_SSH_PERSIST_S`` (90 s) after it, as ansible-core's does (60 s), so the next
command to that device does not pay a login again (``transport/sshpersist.py``); 0: the socket
is the Connection's own and nothing outlives the operation.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from orchestrator.core.errors import HostKeyError, TransportError
from orchestrator.transport.base import (
    ByteProgress,
    Channel,
    Connection,
    OutputLimitError,
    OutputLimits,
    RemotePath,
    Target,
)
from orchestrator.transport.hostkeys import known_hosts_entry
from orchestrator.transport.keyfile import login_refused
from orchestrator.transport.local import LocalChannel
from orchestrator.transport.sshclient import (
    HOST_KEY_ALIAS,
    knows_known_hosts_command,
    poll_kex,
)
from orchestrator.transport.sshpersist import (
    KNOWN_HOSTS_SUFFIX,
    shared_control_path,
    write_known_hosts,
)

PROBE_S = 10.0  # how long a live shared connection may take to run `true` (shared_answers)
SSH_FAILED = 255  # ssh's own exit status for a failure of its own (the remote's is passed on)
PIPE_SIZE = 1 << 20  # our end of ssh's stdin: fewer wake-ups per MiB streamed (agent/session.py)
F_SETPIPE_SZ = 1031
_PUT_CHUNK = 1 << 20
# What ssh says (LogLevel=ERROR) when it, not the remote command, failed; the first match wins.
_CHANGED = "REMOTE HOST IDENTIFICATION HAS CHANGED"
_UNKNOWN = "Host key verification failed"
_CONNECT_ERRORS = ("Connection refused", "Connection timed out", "Could not resolve hostname",
                   "No route to host", "Network is unreachable", "Connection closed by",
                   "Connection reset by", "kex_exchange_identification", "banner exchange")


def _config_value(path: Path) -> str:
    """A file path as one ssh_config argument: double-quoted (spaces), ``%`` doubled (ssh
    expands ``%`` tokens in known_hosts paths); a path with ``"`` cannot be carried."""
    text = str(path)
    if '"' in text or "\n" in text:
        raise TransportError(f"a known_hosts path with '\"' or a newline cannot be given to ssh: "
                             f"{text!r}")
    return '"' + text.replace("%", "%%") + '"'


class OpenSshChannel(LocalChannel):
    """One ``ssh ... -- command`` process: bounded reads, the stderr tail and the silence
    timeout are the local channel's; what is new is telling ssh's own failures (host key,
    authentication, unreachable) from the remote command's, by ssh's exit status 255 and its
    message, and saying them the way the paramiko transport does."""

    def __init__(self, conn: OpenSshConnection, argv: Sequence[str], timeout: float | None,
                 limits: OutputLimits) -> None:
        self.conn = conn
        super().__init__(conn.target.name, "", timeout, limits, argv=argv)
        self.start_s = conn.login_s
        with contextlib.suppress(OSError, ValueError, AttributeError):
            import fcntl

            fcntl.fcntl(self._stdin, F_SETPIPE_SZ, PIPE_SIZE)

    def _input_refused(self) -> None:
        self._raise_ssh_failure()  # ssh exited: host key, auth, network

    def write_file(self, path: Path, offset: int, on_bytes: ByteProgress | None = None,
                   chunk: int = 256 * 1024) -> None:
        """The kernel copies the file into ssh's stdin (``sendfile``): no pass through Python's
        buffers, and the GIL is free meanwhile, so a push that starts streaming while its
        process still imports (``fleet.early``) is not slowed to the import's pace."""
        poller = select.poll()
        poller.register(self._stdin, select.POLLOUT)
        with open(path, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            while offset < size:
                try:
                    sent = os.sendfile(self._stdin, src.fileno(), offset, size - offset)
                except BlockingIOError:
                    if not poller.poll(self.write_wait_ms()):
                        self._kill()
                        raise TransportError(f"{self.name}: the remote command read none of its "
                                             f"input for {self._allowed():g}s; command "
                                             "abandoned") from None
                    continue
                except OSError as exc:
                    self._raise_ssh_failure()
                    raise TransportError(f"{self.name}: the remote command stopped reading its "
                                         f"input ({exc})") from None
                if sent == 0:  # the file shrank under us: the agent's hash check will say so
                    break
                offset += sent
                if on_bytes:
                    on_bytes(sent)

    def finish(self) -> tuple[int, str]:
        code, stderr = super().finish()
        stderr = _MUX_NOTICE.sub("", stderr)
        if code == SSH_FAILED:
            self.conn.raise_ssh_failure(stderr)
        return code, stderr

    def _fail(self, error: OutputLimitError) -> None:
        """Past an output limit: kill this ``ssh`` and, over a persistent connection, end that
        connection too. Why: killing a multiplexed client closes the session's stdin and
        stdout but not its stderr, so a device flooding stderr would go on, and the master on
        reading it (tests/faults/test_flooding_device.py). The next command logs in afresh."""
        super()._fail(error)
        self.conn.end_shared()

    def _kill(self) -> None:
        """Silent (or not reading) for ``timeout``: kill this ``ssh``; end the shared
        connection too only when it no longer carries a new session (a dead link: the next
        command then logs in afresh at once). Why ask first: a hung command on a live
        connection is no reason to end the other operations' sessions over it (a bench
        streaming results while a poll hangs); and a silent command floods nothing. Other
        aborts (a discarded early session, an agent's error) kill only this ``ssh``."""
        super()._kill()
        if not self.conn.shared_answers():
            self.conn.end_shared()

    def _raise_ssh_failure(self) -> None:
        """After a failed write: if ssh itself gave up, raise what it said."""
        try:
            code = self.proc.wait(timeout=self.timeout or 30.0)
        except subprocess.TimeoutExpired:
            return
        self._stderr_thread.join(timeout=self.timeout or 30.0)
        if code == SSH_FAILED:
            self.conn.raise_ssh_failure(_MUX_NOTICE.sub("", self._stderr.text()))


class OpenSshConnection(Connection):
    """A device reached through the ``ssh`` binary; each command is an ``ssh`` process,
    multiplexed over one SSH connection: a persistent one (``sshpersist``), which the first
    command of an idle device starts in the background, or else the first command's own."""

    def __init__(self, target: Target, trusted: Mapping[str, str], timeout: float,
                 limits: OutputLimits | None = None, ssh: str = "ssh",
                 poll: bool = False, persist_s: int = 0, login_s: float | None = None) -> None:
        """``trusted``: {key type: base64}, every key the host may present
        (``hostkeys.trusted_keys``); none: any key is refused as unknown. ``poll``: a
        telemetry poll (``poll_kex``). ``persist_s``: how long the SSH connection stays
        open after this one's last command (``sshpersist``); 0: it closes with it.
        ``login_s``: how long a login may take (ssh's ConnectTimeout, and each command's
        allowance before its first output, ``Channel.start_s``); default ``timeout``."""
        super().__init__(target, limits)
        self.kex = poll_kex(ssh, target.address) if poll else None
        self.trusted = dict(trusted)
        self.timeout = timeout
        self.login_s = timeout if login_s is None else login_s
        self.ssh = ssh
        self.persist_s = persist_s
        self.shared_path = shared_control_path(
            ssh, target, self.trusted, self.kex) if persist_s > 0 else None
        # Private (0700): the per-operation control socket (no persistence) is a door into the
        # authenticated connection, and the known_hosts file beside it decides which host it
        # may be. A persistent connection's known_hosts lives beside its socket instead, as
        # long as it may (ssh may read it again when it re-keys): its content is exactly what
        # the socket's name digests, so every connection writing it writes the same bytes.
        self._control_dir = tempfile.mkdtemp(prefix="ef-ssh-")
        self.known_hosts = (Path(self.shared_path + KNOWN_HOSTS_SUFFIX) if self.shared_path
                            else Path(self._control_dir) / "known_hosts")
        try:
            write_known_hosts(self.known_hosts, [f"{HOST_KEY_ALIAS} {key_type} {b64}\n"
                                                 for key_type, b64 in self.trusted.items()])
        except OSError as exc:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            raise TransportError(f"{target.name}: cannot write the known_hosts file "
                                 f"{self.known_hosts}: {exc}") from None
        self._hide_known_hosts_command = knows_known_hosts_command(ssh)
        self._channels: list[OpenSshChannel] = []
        self._closed = False

    def ssh_argv(self, command: str) -> list[str]:
        """``ssh`` with EdgeFleet's non-negotiable options, then the user's config for the
        rest; ``-p``/``-l``/``-i`` only when the inventory says so (a port left at 22 lets
        ``~/.ssh/config``'s Port apply)."""
        t = self.target
        argv = [self.ssh, "-T", "-e", "none",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={_config_value(self.known_hosts)}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias={HOST_KEY_ALIAS}",
                "-o", "CheckHostIP=no", "-o", "VerifyHostKeyDNS=no", "-o", "UpdateHostKeys=no",
                "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes",
                "-o", "PermitLocalCommand=no", "-o", "LogLevel=ERROR",
                "-o", f"ConnectTimeout={max(1, math.ceil(self.login_s))}",
                "-o", "ControlMaster=auto"]
        if self.shared_path is not None:  # a dead link is noticed within ~30 s, not never
            argv += ["-o", f"ControlPersist={self.persist_s}",
                     "-o", f"ControlPath={self.shared_path}",
                     "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"]
        else:
            argv += ["-o", "ControlPersist=no", "-o", f"ControlPath={self._control_dir}/%C"]
        if self._hide_known_hosts_command:
            argv += ["-o", "KnownHostsCommand=none"]
        if self.kex:
            argv += ["-o", f"KexAlgorithms={self.kex}"]
        if t.port != 22:
            argv += ["-p", str(t.port)]
        if t.user:
            argv += ["-l", t.user]
        if t.key_file:
            argv += ["-i", t.key_file, "-o", "IdentitiesOnly=yes"]
        return [*argv, "--", t.address, command]

    def launch(self, command: str, timeout: float | None) -> Channel:
        if self._closed:
            raise TransportError(f"{self.target.name}: connection closed")
        try:
            channel = OpenSshChannel(self, self.ssh_argv(command),
                                     timeout or self.timeout, self.limits)
        except OSError as exc:
            raise TransportError(f"{self.target.name}: cannot run {self.ssh}: {exc}") from None
        self._channels.append(channel)
        return channel

    def put(self, local: Path, remote: str, on_bytes: ByteProgress | None = None) -> int:
        """Stream the file into ``cat``; the size the device then reports must match."""
        script = 'cat > "$1" && wc -c < "$1"'
        channel = self.start(["sh", "-c", script, "sh", RemotePath(remote)])
        sent = 0
        try:
            with open(local, "rb") as src:
                while chunk := src.read(_PUT_CHUNK):
                    channel.write(chunk)
                    sent += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
            channel.close_input()
            size = channel.readline().strip()
            code, stderr = channel.finish()
        except BaseException:
            channel.abort()
            raise
        if code != 0 or size != str(sent):
            raise TransportError(f"{self.target.name}: writing {remote} failed (exit {code}, "
                                 f"{size or 'no size'} of {sent} bytes): {stderr.strip()[-300:]}")
        return sent

    def raise_ssh_failure(self, stderr: str) -> None:
        """Raise what ssh's message (exit 255) means, in EdgeFleet's words; nothing if it was
        not ssh's own failure (a remote command may exit 255 too)."""
        t = self.target
        where = f"{t.address}:{t.port}"
        if _CHANGED in stderr:
            raise self._changed_key(stderr)
        if _UNKNOWN in stderr:
            raise self._unknown_key(stderr)
        if "Permission denied" in stderr:
            raise login_refused(t, where, _last_line(stderr))
        if any(text in stderr for text in _CONNECT_ERRORS):
            raise TransportError(f"{t.name}: cannot connect to {where}: {_last_line(stderr)}")
        if self.shared_path and not stderr.strip() and not os.path.lexists(self.shared_path):
            # A multiplexed session whose connection ended under it says nothing (LogLevel
            # ERROR): without this it passes for the remote command exiting 255.
            raise TransportError(
                f"{t.name}: the SSH connection to {where} ended during the command (the link "
                "dropped, or a silent or flooding command on this device had it closed); run "
                "it again")

    def _offered(self) -> tuple[object | None, object | None]:
        """(the key the host offers now, the one we trust for it), the first asked again
        through paramiko: ssh names neither fingerprint for an unknown key, nor the trusted one
        for a changed key, and the user must compare them. Only on this error path."""
        from orchestrator.transport.hostkeys import fetch_host_key, key_from

        t = self.target
        try:
            offered = fetch_host_key(t.address, t.port, self.timeout)
        except Exception:  # noqa: BLE001 - the refusal stands; only the detail is missing
            return None, None
        b64 = self.trusted.get(offered.get_name())
        try:
            expected = key_from(offered.get_name(), b64) if b64 else None
        except Exception:  # noqa: BLE001
            expected = None
        return offered, expected

    def _changed_key(self, stderr: str) -> HostKeyError:
        from orchestrator.transport.hostkeys import changed_key_error

        offered, expected = self._offered()
        where = known_hosts_entry(self.target.address, self.target.port)
        if offered is not None and expected is not None and offered != expected:
            return changed_key_error(self.target.name, where, offered,  # type: ignore[arg-type]
                                     expected)  # type: ignore[arg-type]
        return HostKeyError(
            f"{self.target.name}: HOST KEY CHANGED for {where} (ssh: {_ssh_said(stderr)}). "
            "Nothing was sent. If the device was reinstalled, verify the new key and run "
            f"`edgefleet devices trust {self.target.name} --replace`")

    def _unknown_key(self, stderr: str) -> HostKeyError:
        from orchestrator.transport.hostkeys import unknown_key_error

        offered, _ = self._offered()
        t = self.target
        if offered is not None:
            return unknown_key_error(t.name, t.address, offered)  # type: ignore[arg-type]
        return HostKeyError(
            f"{t.name}: host key of {t.address} is not trusted ({_ssh_said(stderr)}). Check it "
            "against the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then run "
            f"`edgefleet devices trust {t.name}`")

    def shared_answers(self, within: float = PROBE_S) -> bool:
        """Whether the shared connection runs a new session (``true``) within ``within`` s (not
        the command's silence timeout, which may be short: a busy live link must not pass
        for dead).
        ``ProxyCommand=false`` keeps the probe from logging in by itself when the connection
        is gone (only a session that is not multiplexed would use it)."""
        if self.shared_path is None:
            return False
        argv = self.ssh_argv("true")
        argv[argv.index("ControlMaster=auto")] = "ControlMaster=no"
        argv[argv.index("--"):argv.index("--")] = ["-o", "ProxyCommand=false"]
        try:
            return subprocess.run(  # noqa: S603 - our own argv
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, timeout=within,
                check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def end_shared(self) -> None:
        """End the persistent connection (``ssh -O exit``: every session over it), if any."""
        if self.shared_path is None:
            return
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(  # noqa: S603 - our own argv
                [self.ssh, "-F", "/dev/null", "-o", f"ControlPath={self.shared_path}",
                 "-O", "exit", HOST_KEY_ALIAS], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)

    def abort(self) -> None:
        """Kill every ssh process of this connection (each in its own process group)."""
        for channel in list(self._channels):
            if channel.proc.poll() is None:
                channel.abort()

    def close(self) -> None:
        """Stop what still runs (a finished operation has nothing left), then remove the
        control socket's directory."""
        self._closed = True
        self.abort()
        for channel in self._channels:
            with contextlib.suppress(subprocess.TimeoutExpired):
                channel.proc.wait(timeout=self.timeout)
            for stream in (channel.proc.stdin, channel.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            channel.release()  # an aborted session's stderr may be held open by the master
        shutil.rmtree(self._control_dir, ignore_errors=True)


# What a losing ``ssh`` says when another process bound the shared socket first: it then runs
# on a connection of its own, which is no failure of the command's.
_MUX_NOTICE = re.compile(r"^ControlSocket .* already exists, disabling multiplexing\r?\n?",
                         re.MULTILINE)


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _ssh_said(stderr: str) -> str:
    """ssh's host-key lines without the warning banner's decoration."""
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and not set(line.strip()) <= {"@"} and "@ " not in line]
    return " ".join(lines)[-400:] or "no message"
