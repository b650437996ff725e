"""Pinned signing keys: a device with keys pinned runs only bundles one of them signed.

Why the device checks, not the control plane: the threat is a control plane whose DB or blob
store was written by someone else (a tampered manifest, a signature copied onto another bundle,
an old signed version pushed again). Only a check made where the model runs, against keys put
there beforehand, stops that. Verification is OpenSSH's own ``ssh-keygen -Y verify`` (SSHSIG,
OpenSSH >= 8.1): it is on every device that runs sshd, and the agent stays stdlib + numpy +
onnxruntime.

Layout, next to (not inside) the bundle store's blobs and versions, so no bundle can write it::

    trust/allowed_signers   one ``NAME namespaces="edgefleet-bundle" ssh-ed25519 KEY`` a key
    trust/floor.json        per bundle name, the version last committed (rollback protection)
    trust/signatures/<digest>.json   the signature each version in the history arrived with:
                            a rollback under pinned keys goes only to a version one of them
                            signed (checked again, against the keys pinned at that moment)

A device without ``trust/allowed_signers`` behaves as before: nothing is checked. What pinning
does not protect against is said in the README's security section: whoever holds the device's
SSH login can rewrite these files too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from agent.fsutil import AgentError, atomic_write_bytes, atomic_write_json, read_json
from agent.protocol import (
    E_BAD_INPUT,
    E_SIGNATURE_REFUSED,
    SIGNATURE_NAMESPACE,
    is_key_name,
    is_sha256,
    signed_message,
)

TRUST_DIR = "trust"
ALLOWED_SIGNERS = "allowed_signers"
FLOOR = "floor.json"
SIGNATURES = "signatures"
KEY_RE = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+={0,2}")
MAX_SIGNATURE_BYTES = 16384
VERIFY_TIMEOUT_S = 30.0
_VERSION_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


def trust_dir(store: Any) -> str:
    return os.path.join(store.root, TRUST_DIR)


def _allowed_path(store: Any) -> str:
    return os.path.join(trust_dir(store), ALLOWED_SIGNERS)


def pinned(store: Any) -> List[Tuple[str, str]]:
    """(name, "ssh-ed25519 KEY") of every pinned key, in file order; [] when none is."""
    return pinned_at(store.root)


def pinned_at(root: str) -> List[Tuple[str, str]]:
    """``pinned`` for an agent root (``facts`` has no Store)."""
    try:
        with open(os.path.join(root, TRUST_DIR, ALLOWED_SIGNERS), "r",
                  encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    keys = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[0] and not line.startswith("#"):
            keys.append((fields[0], "%s %s" % (fields[2], fields[3])))
    return keys


def ssh_keygen() -> Optional[str]:
    """The ssh-keygen to verify with: ``EDGEFLEET_SSH_KEYGEN`` (a device whose OpenSSH is not
    on PATH), else PATH, else /usr/bin's."""
    given = os.environ.get("EDGEFLEET_SSH_KEYGEN")
    if given:
        return given
    found = shutil.which("ssh-keygen")
    if found:
        return found
    return "/usr/bin/ssh-keygen" if os.path.exists("/usr/bin/ssh-keygen") else None


def _run_keygen(argv: List[str], stdin: bytes) -> Tuple[int, str]:
    try:
        proc = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE,  # noqa: S603 - no shell
                              stderr=subprocess.PIPE, timeout=VERIFY_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()
    return proc.returncode, text


def _keygen_or_refuse(ref: str) -> str:
    keygen = ssh_keygen()
    if keygen is None:
        raise AgentError(E_SIGNATURE_REFUSED, "%s refused: keys are pinned on this device but "
                         "ssh-keygen (OpenSSH >= 8.1) is not installed, so no signature can be "
                         "verified" % ref, reason="no_verifier")
    return keygen


def _no_sshsig(keygen: str, code: int, text: str) -> Optional[str]:
    """Why ``keygen``'s answer means it cannot verify SSHSIG at all, else None. An OpenSSH
    older than 8.1 answers ``-Y`` with "unknown option" (or "illegal option") and its usage."""
    if code == 127 or any(words in text for words in (
            "unknown option", "illegal option", "Unsupported operation")):
        return "%s cannot verify SSHSIG signatures (OpenSSH >= 8.1 needed): %s" % (
            keygen, text[-300:])
    return None


def keygen_supports_verify(keygen: str) -> Optional[str]:
    """None when ``ssh-keygen -Y verify`` exists, else why not (asked before pinning)."""
    code, text = _run_keygen([keygen, "-Y", "verify"], b"")
    return _no_sshsig(keygen, code, text)


def verify_signature(store: Any, key: str, message: bytes, armored: str,
                     keygen: Optional[str] = None) -> Optional[str]:
    """None if ``armored`` is a valid signature of ``message`` by the pinned key ``key`` in our
    namespace, else ssh-keygen's words for why not."""
    keygen = keygen or _keygen_or_refuse("the bundle")
    fd, path = tempfile.mkstemp(prefix=".sig-", dir=trust_dir(store))
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(armored)
        code, text = _run_keygen([keygen, "-Y", "verify", "-f", _allowed_path(store), "-I", key,
                                  "-n", SIGNATURE_NAMESPACE, "-s", path], message)
    finally:
        os.unlink(path)
    problem = _no_sshsig(keygen, code, text)  # no probe beforehand: one process per check
    if problem is not None:
        raise _refuse("no_verifier", "cannot verify the signature: %s" % problem)
    return None if code == 0 else (text[-300:] or "ssh-keygen exit %d" % code)


def version_key(version: Any) -> Optional[Tuple[int, ...]]:
    """The leading dotted number of a version ("5", "1-int8" -> (1,), "2.1"), or None: a
    version without one is not ordered, so rollback protection cannot apply to it."""
    match = _VERSION_RE.match(str(version))
    return tuple(int(p) for p in match.group(0).split(".")) if match else None


def _floor(store: Any) -> Dict[str, str]:
    try:
        doc = read_json(os.path.join(trust_dir(store), FLOOR))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def _signature_path(store: Any, digest: Any) -> Optional[str]:
    """Where the signature a version arrived with is kept; None for a digest that is not one
    (state.json is a file on the device: its values never become paths unchecked)."""
    if not is_sha256(digest):
        return None
    return os.path.join(trust_dir(store), SIGNATURES, digest + ".json")


def remember(store: Any, digest: str, signature: Optional[Dict[str, str]]) -> None:
    """Keep the signature ``digest`` arrived with, so a later rollback to it can be checked
    against the keys pinned then (even if none were pinned when it arrived)."""
    path = _signature_path(store, digest)
    if signature is None or path is None:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_json(path, signature)


def record_committed(store: Any, entry: Optional[Dict[str, Any]], history: List[Dict[str, Any]],
                     signature: Optional[Dict[str, str]] = None) -> None:
    """After a committed activation or rollback: keep the new version's signature (and drop
    those of versions no longer in the history); with keys pinned, the version now committed
    for its name is the floor later pushes of that name may not go below (a rollback lowers
    it: it asked to)."""
    if entry is None:
        return
    remember(store, str(entry.get("digest")), signature)
    folder = os.path.join(trust_dir(store), SIGNATURES)
    if os.path.isdir(folder):
        kept = set(str(e.get("digest")) + ".json" for e in history)
        for name in os.listdir(folder):
            if name not in kept:
                os.unlink(os.path.join(folder, name))
    if not pinned(store) or entry.get("name") is None:
        return
    floor = _floor(store)
    floor[str(entry["name"])] = str(entry.get("version"))
    atomic_write_json(os.path.join(trust_dir(store), FLOOR), floor)


def rollback_problem(store: Any, entry: Dict[str, Any]) -> Optional[str]:
    """Why a device with pinned keys may not roll back to ``entry`` (None: it may, or nothing
    is pinned): a rollback skips older *versions* on request, never the signature check."""
    keys = pinned(store)
    if not keys:
        return None
    path = _signature_path(store, entry.get("digest"))
    try:
        doc = read_json(path) if path is not None else None
        signature = parse_signature(doc)
    except (OSError, ValueError, AgentError):
        signature = None
    if signature is None:
        return ("not signed (it arrived unsigned, or before keys were pinned); pinned: %s"
                % ", ".join(name for name, _ in keys))
    if signature["key"] not in [name for name, _ in keys]:
        return "signed by %r, which is no longer pinned" % signature["key"]
    keygen = ssh_keygen()
    if keygen is None:
        return "no ssh-keygen to verify its signature with"
    message = signed_message(str(entry.get("name")), str(entry.get("version")),
                             str(entry.get("digest")))
    why = verify_signature(store, signature["key"], message, signature["sshsig"])
    return None if why is None else "its signature does not verify: %s" % why


def _refuse(reason: str, message: str, **extra: Any) -> AgentError:
    return AgentError(E_SIGNATURE_REFUSED, message, reason=reason, **extra)


def check(store: Any, request: Any, active: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Refuse ``request`` unless a pinned key signed it and it is not older than the version
    committed for its name; None (nothing checked) when no key is pinned. Called by ``plan``
    (nothing is sent for a bundle that would be refused) and again by ``activate``, under the
    root lock, before anything is staged."""
    keys = pinned(store)
    if not keys:
        return None
    names = [name for name, _ in keys]
    ref = "%s@%s" % (request.name, request.version)
    stays = ("%s@%s stays active" % (active.get("name"), active.get("version"))
             if active else "nothing was active and nothing is")
    pins = "pinned: %s" % ", ".join(names)
    signature = request.signature
    if signature is None:
        raise _refuse("unsigned", "%s refused: it is not signed, and this device runs only "
                      "bundles signed by a pinned key (%s); %s. Sign it: edgefleet bundle sign "
                      "%s --key NAME" % (ref, pins, stays, ref), pinned=names)
    key = signature["key"]
    if key not in names:
        raise _refuse("untrusted_key", "%s refused: it is signed by key %r, which is not pinned "
                      "on this device (%s); %s" % (ref, key, pins, stays), key=key,
                      pinned=names)
    keygen = _keygen_or_refuse(ref)
    message = signed_message(str(request.name), str(request.version), request.digest)
    try:
        why = verify_signature(store, key, message, signature["sshsig"], keygen)
    except AgentError as exc:
        raise _refuse("no_verifier", "%s refused: %s; %s" % (ref, exc.message, stays)) from None
    if why is not None:
        raise _refuse("bad_signature", "%s refused: its signature does not verify against the "
                      "pinned key %r (the manifest, name or version changed after it was "
                      "signed, or another key made it): %s; %s" % (ref, key, why, stays),
                      key=key, detail=why)
    # The floor file, or the active version of the same name if that is higher (a crash
    # between a commit and the floor's update leaves the floor behind, never ahead).
    floors = [_floor(store).get(str(request.name))]
    if active is not None and active.get("name") == request.name:
        floors.append(str(active.get("version")))
    ordered = [f for f in floors if f is not None and version_key(f) is not None]
    floor = max(ordered, key=version_key) if ordered else None
    new, old = version_key(request.version), version_key(floor)
    if new is not None and old is not None and new < old:
        raise _refuse("older_version", "%s refused: it is older than %s@%s, the version "
                      "committed on this device (rollback protection: only `edgefleet "
                      "rollback` goes back); %s" % (ref, request.name, floor, stays),
                      committed=floor)
    return {"key": key}


def parse_signature(doc: Any) -> Optional[Dict[str, str]]:
    """The request's ``signature`` ({"key", "sshsig"}) validated, or None when there is none."""
    if doc is None:
        return None
    if (not isinstance(doc, dict) or not is_key_name(doc.get("key"))
            or not isinstance(doc.get("sshsig"), str) or not doc["sshsig"].isascii()
            or len(doc["sshsig"]) > MAX_SIGNATURE_BYTES
            or "-----BEGIN SSH SIGNATURE-----" not in doc["sshsig"]):
        raise AgentError(E_BAD_INPUT, 'signature must be {"key": NAME, "sshsig": "-----BEGIN '
                         'SSH SIGNATURE-----..."}')
    return {"key": doc["key"], "sshsig": doc["sshsig"]}


def set_trust(store: Any, doc: Any) -> Dict[str, Any]:
    """``trust``: pin exactly ``{"keys": [{"name", "public_key"}]}`` ([] unpins every key).
    Pinning is refused where no ssh-keygen can verify: every push would fail later."""
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise AgentError(E_BAD_INPUT, 'trust needs {"keys": [{"name", "public_key"}]}')
    lines = []
    for key in keys:
        if not isinstance(key, dict) or not is_key_name(key.get("name")):
            raise AgentError(E_BAD_INPUT, "trust: each key needs a valid name")
        public = " ".join(str(key.get("public_key", "")).split()[:2])
        if not KEY_RE.fullmatch(public):
            raise AgentError(E_BAD_INPUT, "trust: key %s is not an ssh-ed25519 public key"
                             % key["name"])
        lines.append('%s namespaces="%s" %s\n' % (key["name"], SIGNATURE_NAMESPACE, public))
    path = _allowed_path(store)
    if not lines:
        if os.path.exists(path):
            os.unlink(path)
        return {"pinned": [], "trust_file": None}
    keygen = ssh_keygen()
    problem = "ssh-keygen is not installed" if keygen is None else keygen_supports_verify(keygen)
    if problem is not None:
        raise AgentError(E_SIGNATURE_REFUSED, "cannot pin keys on this device: %s; nothing "
                         "was changed" % problem, reason="no_verifier")
    os.makedirs(trust_dir(store), exist_ok=True)
    atomic_write_bytes(path, "".join(lines).encode("ascii"))
    return {"pinned": [k["name"] for k in keys], "trust_file": path}
