"""SSH transport over Fabric/Paramiko.

Fabric's Connection brings ssh_config support; we replace its AutoAddPolicy with a refusing one
and feed it EdgeFleet's known_hosts, so a host key is never accepted silently.
"""

from __future__ import annotations

import select
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import fabric
import paramiko

from orchestrator.errors import HostKeyError, TransportError
from orchestrator.hostkeys import RefuseUnknownHostKey, changed_key_error, load_known
from orchestrator.transport.base import (
    ByteProgress,
    CommandResult,
    Connection,
    LineHandler,
    Target,
    render_command,
    sftp_path,
)

_RECV = 1 << 16
_SFTP_WRITE = 255 * 1024


class SshConnection(Connection):
    def __init__(self, target: Target, known_hosts: Path, timeout: float) -> None:
        super().__init__(target)
        self.timeout = timeout
        connect_kwargs: dict[str, object] = {
            "banner_timeout": timeout,
            "auth_timeout": timeout,
        }
        if target.key_file:
            connect_kwargs.update(key_filename=target.key_file, look_for_keys=False,
                                  allow_agent=False)
        self._fabric = fabric.Connection(
            host=target.address,
            port=target.port,
            user=target.user,
            connect_timeout=max(1, int(timeout)),
            connect_kwargs=connect_kwargs,
        )
        client = self._fabric.client
        client.set_missing_host_key_policy(RefuseUnknownHostKey(target.name))
        trusted = client.get_host_keys()
        for hostname, keys in load_known(known_hosts).items():
            for key_type, key in keys.items():
                trusted.add(hostname, key_type, key)
        self._sftp: paramiko.SFTPClient | None = None
        self._open()

    def _open(self) -> None:
        where = f"{self.target.address}:{self.target.port}"
        try:
            self._fabric.open()
        except HostKeyError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise changed_key_error(self.target.name, where, exc.key, exc.expected_key) from None
        except paramiko.AuthenticationException as exc:
            raise TransportError(
                f"{self.target.name}: authentication to {where} as "
                f"{self.target.user or '(default user)'} failed ({exc}); "
                "check ansible_user and ansible_ssh_private_key_file"
            ) from None
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

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: LineHandler | None = None,
    ) -> CommandResult:
        timeout = timeout or self.timeout
        command = render_command(argv, env)
        try:
            channel = self._transport.open_session(timeout=timeout)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            pending = b""
            deadline = time.monotonic() + timeout
            while True:
                if channel.recv_ready():
                    data = channel.recv(_RECV)
                    out += data
                    if on_line:
                        pending += data
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            on_line(line.decode("utf-8", "replace") + "\n")
                    deadline = time.monotonic() + timeout
                    continue
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(_RECV)
                    deadline = time.monotonic() + timeout
                    continue
                if channel.eof_received and channel.exit_status_ready():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    channel.close()
                    raise TransportError(
                        f"{self.target.name}: no output for {timeout:g}s; command abandoned"
                    )
                if channel.eof_received:  # output done, exit status on its way
                    channel.status_event.wait(remaining)
                else:
                    select.select([channel], [], [], remaining)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(_RECV)
            code = channel.recv_exit_status()
            channel.close()
        except TransportError:
            raise
        except (OSError, paramiko.SSHException) as exc:
            raise TransportError(f"{self.target.name}: command failed to run: {exc}") from None
        if on_line and pending:
            on_line(pending.decode("utf-8", "replace"))
        return CommandResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

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

    def remove(self, remote: str) -> None:
        try:
            self.sftp().remove(sftp_path(remote))
        except FileNotFoundError:
            pass
        except (OSError, paramiko.SSHException):
            pass  # best effort: the agent also clears stale uploads

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self._fabric.close()
