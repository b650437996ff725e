"""Build (once, cached, locked) the arm64 Debian root filesystems the emulated Pis run on.

Why a cache outside the clone: ``debootstrap`` of an arm64 rootfs runs its second stage under
qemu-user and takes minutes; the result depends only on the suite, the Debian packages and the
pinned numpy/onnxruntime wheels, so it is built once per machine and keyed by exactly those
(``EDGEFLEET_ARM_CACHE``, default ``/var/cache/edgefleet-arm``). Several test processes may ask
for it at once: the build holds an ``flock`` per key and publishes the finished tree by rename,
so nobody ever sees half a rootfs.

What goes in (issue 16): ``debootstrap --arch=arm64 --variant=minbase`` with python3, venv,
openssh-server and ca-certificates, from the Debian mirror this machine's apt sources name (never
a hard-coded one). The numpy/onnxruntime wheels (and their dependencies) are downloaded on the
host with the host's own pip configuration (same index as everything else here) into a wheelhouse
inside the rootfs, and the rootfs's ``/etc/pip.conf`` points pip at it: ``edgefleet agent install
--with-deps`` then runs the real ``python -m venv`` + ``pip install`` on the device, offline and
with the recorded versions. Bullseye's onnxruntime 1.19.2 aborts at import under qemu when its
cpuinfo finds no CPU list, so that rootfs gets ``/sys/devices/system/cpu/{possible,present}``
(the host's /sys is never mounted there: onnxruntime would parse the x86 topology and crash).

Run ``python -m tests.arm.rootfs [SUITE...]`` to build ahead of the tests (scripts/test.sh does,
both suites in parallel).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

RECIPE = 1  # bump when the build steps change: it is part of the cache key
DEBIAN_PACKAGES = ("python3", "python3-venv", "openssh-server", "ca-certificates")
WHEELHOUSE = "/var/cache/edgefleet-wheels"  # inside the rootfs
BINFMT = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class Suite:
    """A Debian suite as a Pi runs it: its Python and the newest wheels that support it."""

    name: str
    python: str  # major.minor of the suite's python3
    requirements: tuple[str, ...]
    cpu_list_files: bool  # bullseye's onnxruntime needs /sys/devices/system/cpu/{possible,present}

    @property
    def python_tag(self) -> str:
        return self.python.replace(".", "")


SUITES = {
    # Raspberry Pi OS bookworm: Python 3.11, the current wheels.
    "bookworm": Suite("bookworm", "3.11", ("numpy==2.4.6", "onnxruntime==1.32.0"), False),
    # Raspberry Pi OS bullseye (many Pi 4s): Python 3.9.2; numpy 2.0.2 and onnxruntime 1.19.2
    # are the newest releases with cp39 aarch64 wheels (pip download --python-version 39).
    "bullseye": Suite("bullseye", "3.9", ("numpy==2.0.2", "onnxruntime==1.19.2"), True),
}


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEFLEET_ARM_CACHE", "/var/cache/edgefleet-arm"))


def suite_key(suite: Suite) -> str:
    """What the rootfs depends on, hashed: recipe, suite, Debian packages, pinned wheels."""
    text = json.dumps([RECIPE, suite.name, "arm64", DEBIAN_PACKAGES, suite.requirements])
    return f"{suite.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def debian_mirror(sources: tuple[Path, ...] = (Path("/etc/apt/sources.list"),
                                               Path("/etc/apt/sources.list.d"))) -> str:
    """The Debian archive this machine's apt uses (deb822 ``.sources`` or one-line ``.list``):
    the first URI ending in ``/debian`` (not ``debian-security``)."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix in (".sources", ".list"))
        elif source.is_file():
            files.append(source)
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            uris = re.findall(r"(?:^URIs:|^deb(?:\s+\[[^]]*\])?)\s+(\S+(?:\s+\S+)*)", line)
            for group in uris:
                for uri in group.split():
                    if re.match(r"https?://\S+/debian/?$", uri):
                        return uri.rstrip("/")
    raise RuntimeError("no Debian mirror (a URI ending in /debian) in this machine's apt sources")


def arm_ready() -> str | None:
    """Why arm64 binaries cannot run here (None when they can): qemu-user via binfmt_misc."""
    if not shutil.which("debootstrap"):
        return "debootstrap is not installed (apt-get install debootstrap)"
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        return ("aarch64 is not registered in binfmt_misc (apt-get install qemu-user-static "
                "binfmt-support; mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc)")
    text = entry.read_text()
    if not text.startswith("enabled"):
        return "binfmt_misc's qemu-aarch64 entry is disabled (update-binfmts --enable qemu-aarch64)"
    if "F" not in (re.search(r"flags: (\S*)", text) or ["", ""])[1]:
        return "qemu-aarch64 is registered without the F flag: it would not run inside a chroot"
    if os.geteuid() != 0:
        return "building and entering the arm64 chroots needs root"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{argv[0]} failed (exit {done.returncode}); log {log}:\n{tail}")


def _download_wheels(suite: Suite, dest: Path, log: Path) -> list[str]:
    """The pinned wheels and their dependencies for aarch64 / this suite's Python, fetched on
    the host with the host's pip configuration; returns the wheel file names."""
    dest.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
          "--implementation", "cp", "--python-version", suite.python_tag,
          "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_27_aarch64",
          "--platform", "manylinux_2_17_aarch64", "--platform", "manylinux2014_aarch64",
          "--platform", "linux_aarch64", "-d", str(dest), *suite.requirements], log)
    return sorted(p.name for p in dest.glob("*.whl"))


def _build(suite: Suite, final: Path) -> None:
    work = final.with_name(f".build-{final.name}-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = final.with_name(f"{final.name}.log")
    log.write_text("")
    rootfs = work / "rootfs"
    started = time.monotonic()
    mirror = debian_mirror()
    _run(["debootstrap", "--arch=arm64", "--variant=minbase",
          f"--include={','.join(DEBIAN_PACKAGES)}", suite.name, str(rootfs), mirror], log)
    wheels = _download_wheels(suite, rootfs / WHEELHOUSE.lstrip("/"), log)
    (rootfs / "etc/pip.conf").write_text(
        "# EdgeFleet's emulated Pi: pip installs from the wheelhouse built with this rootfs\n"
        f"[global]\nno-index = true\nfind-links = {WHEELHOUSE}\n"
        "disable-pip-version-check = true\n"
    )
    if suite.cpu_list_files:
        cpu = rootfs / "sys/devices/system/cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present"):
            (cpu / name).write_text("0-1\n")
    # sshd's privilege separation directory; the host keys are per device (not in the image).
    (rootfs / "run/sshd").mkdir(parents=True, exist_ok=True)
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    info = {"suite": suite.name, "mirror": mirror, "debian_packages": list(DEBIAN_PACKAGES),
            "requirements": list(suite.requirements), "wheels": wheels,
            "build_seconds": round(time.monotonic() - started, 1)}
    (work / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    os.replace(work, final)


def ensure_rootfs(suite_name: str) -> Path:
    """The cached rootfs of ``suite_name`` (built now if missing), under the key's lock."""
    suite = SUITES[suite_name]
    if reason := arm_ready():
        raise RuntimeError(reason)
    final = cache_dir() / suite_key(suite)
    if (final / "build.json").exists():
        return final / "rootfs"
    with _locked(cache_dir() / f"{final.name}.lock"):
        if not (final / "build.json").exists():
            _build(suite, final)
    return final / "rootfs"


# exceptiongroup and tomli by name: pip download evaluates pytest's `python_version < "3.11"`
# markers with the host's Python, not --python-version's.
PY39_TEST_REQUIREMENTS = ("pytest==8.3.5", "exceptiongroup==1.3.0", "tomli==2.2.1")


def py39_test_wheels() -> Path:
    """pytest and its dependencies as wheels for bullseye's Python 3.9 (cached, locked): what
    tests/arm/test_py39_agent.py installs on the device to run the agent's unit tests there."""
    dest = cache_dir() / f"py39-test-wheels-{PY39_TEST_REQUIREMENTS[0]}"
    if (dest / ".complete").exists():
        return dest
    with _locked(cache_dir() / f"{dest.name}.lock"):
        if not (dest / ".complete").exists():
            shutil.rmtree(dest, ignore_errors=True)
            suite = Suite("py39-tests", "3.9", PY39_TEST_REQUIREMENTS, False)
            _download_wheels(suite, dest, cache_dir() / f"{dest.name}.log")
            (dest / ".complete").write_text("")
    return dest


def build_info(rootfs: Path) -> dict[str, object]:
    return json.loads((rootfs.parent / "build.json").read_text())


def main(argv: list[str]) -> int:
    names = argv or sorted(SUITES)
    with ThreadPoolExecutor(len(names)) as pool:
        for name, path in zip(names, pool.map(ensure_rootfs, names), strict=True):
            print(f"{name}: {path} {json.dumps(build_info(path))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
