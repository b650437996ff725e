"""``facts``: what the control plane needs to know about a device before trusting it with a model.

Why numpy/onnxruntime are imported inside functions and every failure becomes null: ``facts`` is
the first command run on a fresh Pi, usually before anything is installed, and it is how the
user learns *what* is missing (``import_errors`` carries the reason, e.g. a missing
libopenblas). It must never create ROOT either: it only looks.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import re
import socket
import sys
from typing import Any, Dict, Optional

import agent
from agent.fsutil import disk_free_bytes
from agent.protocol import PROTOCOL_VERSION
from agent.sensors import is_simulated, snapshot, sysfs_root

Errors = Optional[Dict[str, str]]


def _try_import(name: str, errors: Errors) -> Any:
    """The module, or None with the reason recorded (a broken install raises more than
    ImportError, e.g. OSError for a missing shared library)."""
    try:
        return importlib.import_module(name)
    except Exception as exc:
        if errors is not None:
            errors[name] = "%s: %s" % (type(exc).__name__, exc)
        return None


def numpy_version(errors: Errors = None) -> Optional[str]:
    numpy = _try_import("numpy", errors)
    return str(numpy.__version__) if numpy is not None else None


def onnxruntime_info(errors: Errors = None) -> Optional[Dict[str, Any]]:
    """{version, providers} of an importable onnxruntime, else None."""
    ort = _try_import("onnxruntime", errors)
    if ort is None:
        return None
    try:
        providers = [str(p) for p in ort.get_available_providers()]
    except Exception as exc:
        if errors is not None:
            errors["onnxruntime"] = "get_available_providers: %s" % exc
        providers = []
    return {"version": str(getattr(ort, "__version__", None)), "providers": providers}


_DIST_INFO = re.compile(r"^onnxruntime(?:[_-][A-Za-z0-9_]+)?-([^-]+)\.dist-info$")


def onnxruntime_version_fast() -> Optional[str]:
    """The version ``import onnxruntime`` would load, read from the dist-info next to the
    package found on sys.path, without importing it: the import costs ~0.4 s here and seconds on
    a Pi, on every push. Falls back to importing when the metadata is absent or ambiguous."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin.endswith("__init__.py"):
        site_dir = os.path.dirname(os.path.dirname(spec.origin))
        try:
            versions = [m.group(1) for m in map(_DIST_INFO.match, os.listdir(site_dir)) if m]
        except OSError:
            versions = []
        if len(versions) == 1:
            return versions[0]
    runtime = onnxruntime_info()
    return runtime["version"] if runtime else None


def read_pi_model(sysfs: str) -> Optional[str]:
    """The device-tree model string ("Raspberry Pi 4 Model B Rev 1.4"), NUL-terminated on disk."""
    for path in (os.path.join(sysfs, "firmware", "devicetree", "base", "model"),
                 "/proc/device-tree/model"):
        try:
            with open(path, "rb") as handle:
                raw = handle.read(512)
        except OSError:
            continue
        text = raw.rstrip(b"\x00").decode("utf-8", "replace").strip()
        if text:
            return text
    return None


def parse_meminfo_mb(text: str, key: str = "MemTotal") -> Optional[int]:
    """A /proc/meminfo field (kB) in MB: MemTotal, MemAvailable, ..."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            fields = line.split()
            try:
                return int(fields[1]) // 1024  # kB
            except (IndexError, ValueError):
                return None
    return None


def parse_os_release(text: str) -> Optional[str]:
    """PRETTY_NAME from /etc/os-release (shell-style, optionally quoted)."""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            value = line.split("=", 1)[1].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            return value or None
    return None


def read_text(path: str) -> Optional[str]:
    """A small /proc or /etc file as text, or None when it cannot be read: facts and telemetry
    report what the device has, and a missing file (another OS, a container) is not an error."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _active(root: str) -> Dict[str, Any]:
    """The active bundle without creating ROOT, after the journal's repair of a change a dead
    process left pending (agent.journal; reported as ``recovered``); a broken state.json is
    reported, not fatal."""
    from agent.journal import occupied, occupied_message, repair_if_idle
    from agent.store import Store

    store = Store(root, lambda _event: None)
    problem = repair_if_idle(store)
    data: Dict[str, Any] = {"active": None}
    if os.path.isdir(root) and occupied(store):
        data["current_error"] = occupied_message(store)
    recovered = store.take_recovered()
    if recovered:
        data["recovered"] = recovered
    try:
        if problem is not None:
            raise ValueError(problem)
        data["active"] = store.active() if os.path.isdir(root) else None
    except Exception as exc:
        data["state_error"] = str(exc)
    return data


def facts(root: str) -> Dict[str, Any]:
    sysfs = sysfs_root()
    meminfo = read_text("/proc/meminfo")
    os_release = read_text("/etc/os-release")
    import_errors: Dict[str, str] = {}
    data: Dict[str, Any] = {
        "agent_version": agent.__version__,
        "protocol": PROTOCOL_VERSION,
        "root": root,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "numpy": numpy_version(import_errors),
        "onnxruntime": onnxruntime_info(import_errors),
        "pi_model": read_pi_model(sysfs),
        "arch": platform.machine() or None,
        "cores": os.cpu_count(),
        "ram_mb": parse_meminfo_mb(meminfo) if meminfo is not None else None,
        "os": parse_os_release(os_release) if os_release is not None else None,
        "kernel": platform.release() or None,
        "hostname": socket.gethostname(),
        "disk_free_bytes": disk_free_bytes(root),
        "simulated": is_simulated(),
        "sensors": snapshot(sysfs=sysfs),
    }
    data["import_errors"] = import_errors
    from agent.signatures import pinned_at

    # The signing keys this device runs bundles of (agent.signatures); [] = any bundle.
    data["pinned_keys"] = [name for name, _ in pinned_at(root)]
    data.update(_active(root))
    return data
