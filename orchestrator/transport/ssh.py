"""SSH transport over Fabric/Paramiko.

Fabric's Connection brings ssh_config support; we replace its AutoAddPolicy with a refusing one
and feed it EdgeFleet's trusted keys (orchestrator.transport.hostkeys: the database's, then the
known_hosts files), so a host key is never accepted silently.
"""

from __future__ import annotations

import contextlib
import math
import select
import time
from pathlib import Path
from typing import Any

import fabric
import paramiko

from orchestrator.core.errors import HostKeyError, TransportError
from orchestrator.transport.base import (
    ByteProgress,
    Channel,
    Connection,
    LineBuffer,
    OutputLimitError,
    OutputLimits,
    OutputMeter,
    StderrTail,
    Target,
    sftp_path,
)
from orchestrator.transport.hostkeys import changed_key_error, fingerprint, unknown_key_error
from orchestrator.transport.keyfile import login_refused

_RECV = 1 << 16
_SFTP_WRITE = 255 * 1024


def gcm_first_transport(*args: Any, **kwargs: Any) -> paramiko.Transport:
    """A Transport that prefers AES-GCM: paramiko's default AES-CTR + HMAC costs a separate MAC
    pass per packet in Python, and measured ~25% slower on bulk pushes (bench/push.py). The
    other ciphers stay allowed for servers without GCM."""
    transport = paramiko.Transport(*args, **kwargs)
    options = transport.get_security_options()
    gcm = [c for c in options.ciphers if "-gcm@" in c]
    options.ciphers = tuple(gcm + [c for c in options.ciphers if c not in gcm])
    return transport


class RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Replaces Fabric's AutoAddPolicy: an unknown key is an error naming the device."""

    def __init__(self, device: str) -> None:
        self.device = device

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise unknown_key_error(self.device, hostname, key)


class RefuseUnknownJumpHost(paramiko.MissingHostKeyPolicy):
    """A ProxyJump host's unknown key: an error saying where its key must be trusted."""

    def __init__(self, device: str, jump: str) -> None:
        self.device, self.jump = device, jump

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise HostKeyError(
            f"{self.device}: the host key of its jump host {self.jump} ({hostname}, ProxyJump "
            f"in ~/.ssh/config) is not in ~/.ssh/known_hosts ({key.get_name()} "
            f"{fingerprint(key)}); nothing was sent. Check it against the jump host, then add "
            f"it (`ssh {self.jump}` once, accepting it), or use the OpenSSH connector")


def _refuse_unknown_jump_hosts(connection: fabric.Connection, device: str) -> None:
    """The jump hosts of a ``ProxyJump`` in ~/.ssh/config, which Fabric builds itself with
    its AutoAddPolicy and no known keys (a fake bastion was accepted and handed the login):
    checked against the user's ~/.ssh/known_hosts, an unknown key refused, as OpenSSH's own
    jump connection does under BatchMode."""
    hop = connection.gateway
    while isinstance(hop, fabric.Connection):
        hop.client.set_missing_host_key_policy(RefuseUnknownJumpHost(device, hop.original_host))
        # None readable: every key of the jump host is then unknown, and refused.
        with contextlib.suppress(OSError, paramiko.SSHException):
            hop.client.load_system_host_keys()
        hop = hop.gateway


def _unopened_jump(connection: fabric.Connection) -> bool:
    """Whether a ProxyJump hop of ``connection`` is not connected: the failure was that
    hop's (Fabric opens the hops first, each before the next), not the device's."""
    hop = connection.gateway
    while isinstance(hop, fabric.Connection):
        if not hop.is_connected:
            return True
        hop = hop.gateway
    return False


def _wait_readable(channel: paramiko.Channel, timeout: float) -> None:
    """Until ``channel`` has something to read, at most ``timeout`` s. poll, not select:
    select refuses descriptors >= 1024, which a control plane talking to hundreds of devices
    at once (a socket and a pipe per channel) soon has."""
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    poller.poll(max(0.0, timeout) * 1000)


class SshChannel(Channel):
    """One exec'd command on a paramiko channel; stdout is read in lines, stderr's tail kept.

    Memory stays bounded while reading: the LineBuffer holds at most one line's limit plus one
    receive, and paramiko itself buffers at most the channel window (the sender waits)."""

    def __init__(self, name: str, channel: paramiko.Channel, timeout: float,
                 limits: OutputLimits | None = None, start_s: float = 0.0) -> None:
        self.name = name
        self.start_s = start_s  # the device's shell start (the login is over: connect's)
        self.channel = channel
        self.timeout = timeout
        self.limits = limits or OutputLimits()
        self.meter = OutputMeter(name, self.limits)
        self._lines = LineBuffer(self.meter)
        self._err = StderrTail(self.limits.stderr_keep)
        self._eof = False

    def _take_stderr(self) -> None:
        data = self.channel.recv_stderr(_RECV)
        self._err.add(data)
        self.meter.add(len(data))

    def write(self, data: bytes) -> None:
        """Send all of ``data``; waiting more than ``timeout`` seconds for the remote command to
        take any of it (its window stays full) raises instead of blocking us forever."""
        allowed = self.silence_allowed(self.timeout)
        self.channel.settimeout(allowed)  # sendall's wait for window; reads use select
        try:
            self.channel.sendall(data)
        except TimeoutError:
            raise TransportError(f"{self.name}: the remote command read none of its input for "
                                 f"{allowed:g}s; command abandoned") from None
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"{self.name}: the remote command stopped reading its input "
                                 f"({exc or 'channel closed'})") from None

    def _fill(self) -> None:
        """Wait for more output (stdout or stderr) or EOF, at most ``timeout`` seconds."""
        channel = self.channel
        deadline = time.monotonic() + self.silence_allowed(self.timeout)
        while True:
            if channel.recv_stderr_ready():
                self._take_stderr()
                continue
            if channel.recv_ready():
                data = channel.recv(_RECV)
                if data:
                    self.heard_now()
                    self._lines.feed(data)
                else:
                    self._eof = True
                return
            if channel.eof_received or channel.closed:
                self._eof = True
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(
                    f"{self.name}: {self.silence_message(self.timeout)}; command abandoned")
            _wait_readable(channel, remaining)

    def readline(self) -> str:
        try:
            while (line := self._lines.next_line(self._eof)) is None:
                self._fill()
            return line
        except OutputLimitError:
            self.abort()  # closing the channel makes sshd close the command's pipes
            raise
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"{self.name}: reading output failed: {exc}") from None

    def close_input(self) -> None:
        with contextlib.suppress(OSError, paramiko.SSHException):
            self.channel.shutdown_write()

    def finish(self) -> tuple[int, str]:
        self.started()
        self.close_input()
        while self.readline():
            pass
        if not self.channel.status_event.wait(self.timeout):
            self.abort()
            raise TransportError(f"{self.name}: command did not exit within {self.timeout:g}s")
        try:
            while self.channel.recv_stderr_ready():
                self._take_stderr()
        except OutputLimitError:
            self.abort()
            raise
        code = self.channel.recv_exit_status()
        self.channel.close()
        return code, self._err.text()

    def abort(self) -> None:
        self.started()
        self.channel.close()


DEFAULT_SSH_PORT = 22


def ssh_destination(address: str, port: int) -> tuple[str, int]:
    """Where a connection to ``address``:``port`` really goes under the user's
    ``~/.ssh/config``: its ``HostName``, and its ``Port`` unless the inventory gave a port
    other than the default 22. What Fabric connects to, so ``devices trust`` records the key
    under the same name and port that the connection will look it up by."""
    path = Path.home() / ".ssh" / "config"
    if not path.is_file():
        return address, port
    try:
        found = paramiko.SSHConfig.from_path(str(path)).lookup(address)
    except (OSError, ValueError, paramiko.SSHException):
        return address, port
    if port == DEFAULT_SSH_PORT and str(found.get("port", "")).isdigit():
        port = int(found["port"])
    return str(found.get("hostname") or address), port


class SshConnection(Connection):
    def __init__(self, target: Target, known: paramiko.HostKeys, timeout: float,
                 limits: OutputLimits | None = None, login_s: float | None = None) -> None:
        """``login_s``: how long the login may take (connect, banner, authentication: each),
        and each command's allowance before its first output (``Channel.start_s``); default
        ``timeout``."""
        super().__init__(target, limits)
        self.timeout = timeout
        self.login_s = login_s = timeout if login_s is None else login_s
        connect_kwargs: dict[str, object] = {
            "banner_timeout": login_s,
            "auth_timeout": login_s,
            "transport_factory": gcm_first_transport,
        }
        if target.key_file:
            connect_kwargs.update(key_filename=target.key_file, look_for_keys=False,
                                  allow_agent=False)
        # Port 22 is what the inventory fills in when ansible_port is not given: passed on, it
        # would override a ``Port`` in ~/.ssh/config (HostName, User and IdentityFile there
        # were honoured, Port not). None lets Fabric take the ssh_config's Port, else 22.
        self._fabric = fabric.Connection(
            host=target.address,
            port=None if target.port == DEFAULT_SSH_PORT else target.port,
            user=target.user,
            connect_timeout=max(1, math.ceil(login_s)),
            connect_kwargs=connect_kwargs,
        )
        client = self._fabric.client
        client.set_missing_host_key_policy(RefuseUnknownHostKey(target.name))
        trusted = client.get_host_keys()
        for hostname, keys in known.items():
            for key_type, key in keys.items():
                trusted.add(hostname, key_type, key)
        _refuse_unknown_jump_hosts(self._fabric, target.name)
        self._sftp: paramiko.SFTPClient | None = None
        self._open()

    def _open(self) -> None:
        where = f"{self.target.address}:{self._fabric.port}"
        try:
            self._fabric.open()
        except HostKeyError:
            raise
        except paramiko.BadHostKeyException as exc:
            if _unopened_jump(self._fabric):
                raise HostKeyError(  # a ProxyJump host's key: the user's known_hosts, not ours
                    f"{self.target.name}: HOST KEY CHANGED for its jump host {exc.hostname} "
                    f"(ProxyJump in ~/.ssh/config): it offered {exc.key.get_name()} "
                    f"{fingerprint(exc.key)}, ~/.ssh/known_hosts has "
                    f"{fingerprint(exc.expected_key)}. Nothing was sent. If the jump host was "
                    "reinstalled, check its new key and replace its line in ~/.ssh/known_hosts"
                ) from None
            raise changed_key_error(self.target.name, where, exc.key, exc.expected_key) from None
        except paramiko.AuthenticationException as exc:
            raise login_refused(self.target, where, str(exc)) from None
        except (TimeoutError, OSError, paramiko.SSHException) as exc:
            raise TransportError(
                f"{self.target.name}: cannot connect to {where}: {exc or type(exc).__name__}"
            ) from None

    @property
    def _transport(self) -> paramiko.Transport:
        transport = self._fabric.client.get_transport()
        if transport is None or not transport.is_active():
            raise TransportError(f"{self.target.name}: connection lost")
        return transport

    def launch(self, command: str, timeout: float | None) -> Channel:
        timeout = timeout or self.timeout
        try:
            channel = self._transport.open_session(timeout=timeout)
            channel.exec_command(command)
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"{self.target.name}: command failed to start: {exc}") from None
        return SshChannel(self.target.name, channel, timeout, self.limits, self.login_s)

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self._fabric.client.open_sftp()
        return self._sftp

    def put(self, local: Path, remote: str, on_bytes: ByteProgress | None = None) -> int:
        """Pipelined SFTP writes of ~255 KiB: paramiko's ``putfo`` writes 32 KiB requests that
        each spill into two SSH packets and halve throughput; OpenSSH's sftp-server accepts
        messages up to 256 KiB."""
        sent = 0
        try:
            with open(local, "rb") as src, self.sftp().open(sftp_path(remote), "wb") as out:
                out.set_pipelined(True)
                while chunk := src.read(_SFTP_WRITE):
                    out.write(chunk)
                    sent += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
            size = self.sftp().stat(sftp_path(remote)).st_size
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"{self.target.name}: writing {remote} failed: {exc}") from None
        if size != sent:
            raise TransportError(
                f"{self.target.name}: {remote} has {size} bytes on the device, {sent} were sent"
            )
        return sent

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self._fabric.close()
