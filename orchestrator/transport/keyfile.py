"""Why a login failed, in words that say what to do: the one message both SSH connectors give.

A login key protected by a passphrase is the common case behind "Permission denied" here:
EdgeFleet never prompts (OpenSSH runs in BatchMode, paramiko is given no passphrase), so the
key is skipped and the device refuses the login. That is said, with the fix (load the key into
ssh-agent, which both connectors use), rather than only "authentication failed".
"""

from __future__ import annotations

import base64
import binascii

from orchestrator.core.errors import TransportError
from orchestrator.transport.base import Target

_OPENSSH_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC = b"openssh-key-v1\0"
_READ_LIMIT = 64 * 1024  # a private key is a few kB: never read a wrong path's big file


def passphrase_protected(path: str) -> bool:
    """Whether the private key file at ``path`` is encrypted (needs a passphrase): the
    OpenSSH format names its cipher ("none" when plain); PEM says ENCRYPTED in its header.
    False when it cannot be read or is not a key we recognise."""
    try:
        with open(path, "rb") as file:
            text = file.read(_READ_LIMIT).decode("ascii", "replace")
    except OSError:
        return False
    if _OPENSSH_BEGIN in text:
        body = text.split(_OPENSSH_BEGIN, 1)[1].split("-----END", 1)[0]
        try:
            blob = base64.b64decode("".join(body.split()))
        except (binascii.Error, ValueError):
            return False
        if not blob.startswith(_OPENSSH_MAGIC):
            return False
        rest = blob[len(_OPENSSH_MAGIC):]
        length = int.from_bytes(rest[:4], "big")
        return rest[4:4 + length] not in (b"none", b"")
    return "ENCRYPTED" in text.split("-----END", 1)[0]


def login_refused(target: Target, where: str, said: str) -> TransportError:
    """The error for a login the device refused (``said``: the connector's own words)."""
    who = target.user or "(default user)"
    message = f"{target.name}: authentication to {where} as {who} failed ({said}); "
    if target.key_file and passphrase_protected(target.key_file):
        message += (f"the key {target.key_file} is protected by a passphrase, which EdgeFleet "
                    f"never asks for: load it into ssh-agent (`ssh-add {target.key_file}`) "
                    "in the environment EdgeFleet runs in, or give this device a key without "
                    "one")
    else:
        message += "check ansible_user and ansible_ssh_private_key_file"
    return TransportError(message)
