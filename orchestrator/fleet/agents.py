"""Installing the agent on devices and reading their facts.

The agent is uploaded as one zipapp into ``edgefleet_root/agent``; then it reports the device's
facts, which tell us whether numpy/onnxruntime are there. With ``--with-deps`` a venv under
``edgefleet_root/venv`` (with system site packages, so Raspberry Pi OS's python3-numpy counts) gets
them from pip. With ``--trust-key`` the agent pins those signing keys' public halves on the
device (``edgefleet_root/trust``, agent.signatures): from then on it runs only bundles one of
them signed. Pinning goes through this command only, so it is audited with the install.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.build import build_zipapp
from agent.protocol import AGENT_FILENAME
from orchestrator.access import audit
from orchestrator.artifacts.signing import PinKey
from orchestrator.core.config import Settings
from orchestrator.core.db import session_scope
from orchestrator.core.errors import AgentError, TransportError
from orchestrator.core.models import Device
from orchestrator.fleet.agentclient import call_agent
from orchestrator.fleet.answers import checked_facts
from orchestrator.fleet.fanout import Outcome, fan_out
from orchestrator.inventory.devices import record_facts, to_target
from orchestrator.transport import Connection, RemotePath, Target, connect

REQUIRED_MODULES = ("numpy", "onnxruntime")
PIP_TIMEOUT_S = 900.0


@dataclass
class AgentPackage:
    path: Path
    sha256: str
    version: str


def build_agent(home: Path) -> AgentPackage:
    built = build_zipapp(home / "agent" / AGENT_FILENAME)
    return AgentPackage(Path(built.path), built.sha256, built.version)


def _check(conn: Connection, argv: list[str], what: str, timeout: float | None = None) -> str:
    result = conn.run(argv, timeout=timeout)
    if result.exit_code != 0:
        raise TransportError(
            f"{conn.target.name}: {what} failed (exit {result.exit_code}): "
            f"{(result.stderr or result.stdout).strip()[-800:]}"
        )
    return result.stdout


def missing_modules(facts: dict[str, Any]) -> list[str]:
    return [module for module in REQUIRED_MODULES if not facts.get(module)]


def upload_agent(conn: Connection, package: AgentPackage) -> None:
    target = conn.target
    agent_dir = RemotePath(target.root).join("agent")
    _check(conn, ["mkdir", "-p", "--", agent_dir], f"creating {agent_dir}")
    part = RemotePath(agent_dir.join(AGENT_FILENAME + ".part"))
    conn.put(package.path, part)
    _check(conn, ["mv", "-f", "--", part, target.agent_path], "installing the agent")


def read_facts(conn: Connection, python: str | None = None) -> dict[str, Any]:
    try:
        # The device's JSON, typed before anyone reads or stores it (fleet.answers).
        return checked_facts(call_agent(conn, "facts", python=python))
    except AgentError as exc:
        if exc.code == "python_too_old":
            raise AgentError(f"{exc} (edgefleet_python on {conn.target.name})", exc.code) from None
        raise


def pin_keys(conn: Connection, trust: Sequence[PinKey], python: str | None = None) -> list[str]:
    """Pin exactly ``trust`` on the device ([] unpins every key); the names now pinned."""
    keys = [{"name": k.name, "public_key": k.public_key} for k in trust]
    return list(call_agent(conn, "trust", {"keys": keys}, python=python).get("pinned") or [])


def install_on(conn: Connection, package: AgentPackage, with_deps: bool,
               trust: Sequence[PinKey] | None = None) -> Outcome:
    target: Target = conn.target
    upload_agent(conn, package)
    if trust is not None:  # before anything else can be pushed with the new agent
        pinned = pin_keys(conn, trust)
    facts = read_facts(conn)
    python = target.python
    missing = missing_modules(facts)
    if missing and with_deps:
        venv = RemotePath(target.root).join("venv")
        _check(conn, [target.python, "-m", "venv", "--system-site-packages", venv],
               f"creating a venv at {venv}")
        python = venv.join("bin", "python")
        _check(conn, [python, "-m", "pip", "install", "--disable-pip-version-check",
                      "--quiet", *missing], f"pip install {' '.join(missing)}",
               timeout=PIP_TIMEOUT_S)
        facts = read_facts(conn, python=python)
        missing = missing_modules(facts)
    data = {"agent_version": facts.get("agent_version"), "python": python, "facts": facts}
    if trust is not None:
        data["pinned"] = ", ".join(pinned) or "none"
    if missing:
        py = facts.get("python") or {}
        return Outcome(
            target.name, False, "missing-deps",
            f"{target.name}: {', '.join(missing)} not importable by Python "
            f"{py.get('version', '?')} at {py.get('executable', target.python)}. Run "
            f"`edgefleet agent install {target.name} --with-deps` (venv under "
            f"{target.root}/venv) or install them on the device (pip install {' '.join(missing)})",
            data,
        )
    return Outcome(target.name, True, "installed", None, data)


def install_agents(settings: Settings, devices: Sequence[Device], with_deps: bool = False,
                   forks: int = 10, timeout: float | None = None, *, actor: str = "",
                   targets: str = "", trust: Sequence[PinKey] | None = None,
                   ) -> tuple[AgentPackage, list[Outcome]]:
    """Install on every device (bounded fan-out) and store each device's facts. Audited as
    ``agent.install`` (what was asked, before any device is touched: the code that will run
    there, and the keys pinned when ``trust`` is given: ``[]`` unpins, None leaves the
    devices' keys alone); each device's outcome is in its facts."""
    package = build_agent(settings.home)
    detail: dict[str, Any] = {"devices": [d.name for d in devices], "with_deps": with_deps,
                              "version": package.version, "sha256": package.sha256}
    if trust is not None:
        detail["trust"] = [{"name": k.name, "fingerprint": k.fingerprint} for k in trust]
    with session_scope(settings) as session:
        audit.add_event(session, actor, "agent.install",
                        f"devices:{targets or ','.join(d.name for d in devices)}", detail)

    def step(target: Target) -> Outcome:
        with connect(target, settings, timeout) as conn:
            outcome = install_on(conn, package, with_deps, trust)
        with session_scope(settings) as session:
            record_facts(session, target.name, outcome.data["facts"],
                         agent_python=outcome.data["python"] if outcome.ok else None)
        facts = outcome.data["facts"]
        outcome.data.update(
            python_version=(facts.get("python") or {}).get("version"),
            onnxruntime=(facts.get("onnxruntime") or {}).get("version"),
            model=facts.get("pi_model"),
        )
        return outcome

    return package, fan_out([to_target(d) for d in devices], step, forks)
