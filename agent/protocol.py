"""Wire protocol between the control plane and the agent, shared by both sides.

Why here: the agent must stand alone on the device, so the one package both sides may import is
the agent's. Keep this module stdlib-only and Python 3.9 compatible.

Every line the agent writes on stdout is one JSON object with ``"v": PROTOCOL_VERSION`` and a
``"type"``:

- ``{"v":1,"type":"progress","event":"hashing","path":"model.onnx","done":123,"total":456}``
  — zero or more, free-form beyond ``event``;
- ``{"v":1,"type":"result","ok":true,"command":"facts","data":{...}}`` — exactly one, last;
- ``{"v":1,"type":"result","ok":false,"command":"activate","error":{"code":"verify_failed",
  "message":"...","path":"model.onnx"}}`` — a failure, also exactly one, last.

The process exits 0 when ``ok`` is true, 1 otherwise. Input, when a command needs any, is one JSON
document on stdin. Nothing else is written on stdout; diagnostics go to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import sys
from typing import IO, Any, Dict, Iterable, List

PROTOCOL_VERSION = 1
MANIFEST_SCHEMA = "edgefleet.bundle/v1"
AGENT_FILENAME = "edgefleet-agent.pyz"
HASH_CHUNK = 1 << 20

# Error codes the control plane acts on (anything else is shown as-is).
E_BAD_INPUT = "bad_input"
E_DIGEST_MISMATCH = "digest_mismatch"
E_VERIFY_FAILED = "verify_failed"
E_MISSING_BLOB = "missing_blob"
E_UNSAFE_PATH = "unsafe_path"
E_NO_SPACE = "no_space"
E_NOTHING_TO_ROLL_BACK = "nothing_to_roll_back"
E_MISSING_DEPENDENCY = "missing_dependency"
E_SMOKE_FAILED = "smoke_failed"  # activation rolled back: golden outputs differ / model won't load
E_NOTHING_ACTIVE = "nothing_active"
E_INTERNAL = "internal"
# A device with pinned keys refused a bundle (agent.signatures): ``reason`` says which check.
E_SIGNATURE_REFUSED = "signature_refused"

# Bundle signatures (SSHSIG, OpenSSH's PROTOCOL.sshsig): the namespace both sides sign and
# verify under, so a signature made for anything else (a git commit, a file) never counts.
SIGNATURE_NAMESPACE = "edgefleet-bundle"
SIGNATURE_SCHEMA = "edgefleet.bundle-signature/v1"
KEY_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a manifest whose sha256 is the bundle digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def manifest_digest(manifest: Dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def signed_message(name: str, version: str, digest: str) -> bytes:
    """The bytes a bundle signature covers: the manifest digest (hence every file) with the
    bundle's name and version, so a signed v3 cannot be replayed as v5 or as another bundle.
    The device builds them itself from the manifest it received, never from what the control
    plane says the digest is."""
    return canonical_json({"schema": SIGNATURE_SCHEMA, "name": name, "version": version,
                           "digest": digest})


def is_key_name(value: Any) -> bool:
    """A signing key's name: also its principal in the device's allowed_signers file, so
    only characters that file's syntax and a shell leave alone."""
    return (isinstance(value, str) and 0 < len(value) <= 64 and value[0] not in ".-"
            and all(c in KEY_NAME_CHARS for c in value))


def check_relative_path(path: str) -> str:
    """Return the normalised bundle-relative path or raise ValueError saying why it is unsafe.

    Both sides call this: the control plane when building, the agent before writing anything.
    """
    if not isinstance(path, str) or not path:
        raise ValueError("empty path")
    if "\\" in path or "\x00" in path:
        raise ValueError("path %r contains a backslash or NUL" % (path,))
    if path.startswith("/"):
        raise ValueError("path %r is absolute" % (path,))
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("path %r contains an empty, '.' or '..' component" % (path,))
    normal = posixpath.normpath(path)
    if normal != path:
        raise ValueError("path %r is not in normal form" % (path,))
    return normal


def is_sha256(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 64
        and all(c in "0123456789abcdef" for c in value)
    )


def manifest_files(manifest: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The manifest's file entries, validated: safe unique paths, sha256 hex, int sizes."""
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise ValueError("manifest has no files")
    seen = set()
    for entry in files:
        path = check_relative_path(entry.get("path", ""))
        if path in seen:
            raise ValueError("manifest lists %r twice" % (path,))
        seen.add(path)
        if not is_sha256(entry.get("sha256")):
            raise ValueError("manifest entry %r has no valid sha256" % (path,))
        if not isinstance(entry.get("size"), int) or entry["size"] < 0:
            raise ValueError("manifest entry %r has no valid size" % (path,))
    return files


def event(kind: str, **fields: Any) -> Dict[str, Any]:
    return dict({"v": PROTOCOL_VERSION, "type": "progress", "event": kind}, **fields)


def result_ok(command: str, data: Dict[str, Any]) -> Dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": "result", "ok": True, "command": command, "data": data}


def result_error(command: str, code: str, message: str, **extra: Any) -> Dict[str, Any]:
    error = dict({"code": code, "message": message}, **extra)
    return {"v": PROTOCOL_VERSION, "type": "result", "ok": False, "command": command,
            "error": error}


def _not_a_number(name: str) -> None:
    """NaN, Infinity and -Infinity are not JSON (RFC 8259), though Python's json writes and
    reads them: read as null (unknown), so a device's odd number is never stored as one."""
    return None


def parse_lines(lines: Iterable[str], first: int = 1) -> List[Dict[str, Any]]:
    """Parse agent stdout; non-JSON lines raise ValueError naming the line (``first`` is the
    number of the first one, for readers that parse a line at a time)."""
    out = []
    for number, line in enumerate(lines, first):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line, parse_constant=_not_a_number)
        except ValueError:
            raise ValueError("agent stdout line %d is not JSON: %.200s" % (number, line)) from None
        if not isinstance(obj, dict) or obj.get("v") != PROTOCOL_VERSION:
            raise ValueError(
                "agent stdout line %d speaks protocol %r, expected %d"
                % (number, obj.get("v") if isinstance(obj, dict) else None, PROTOCOL_VERSION)
            )
        out.append(obj)
    return out


def private_stdout() -> IO[str]:
    """A stream on the real stdout for protocol lines; fd 1 and sys.stdout now go to stderr.

    Here because every agent process that speaks the protocol (the CLI, the smoke-test and
    measurement children) needs it: a native library writing to fd 1 or a stray print must not
    break the stream the control plane parses.
    """
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", encoding="utf-8", newline="\n")
