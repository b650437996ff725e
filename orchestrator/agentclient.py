"""Calling the agent on a device: build the argv, stream its JSON lines, return its result."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agent.protocol import parse_lines
from orchestrator.errors import AgentError, TransportError
from orchestrator.transport import Connection, RemotePath

EventHandler = Callable[[dict[str, Any]], None]


def agent_argv(python: str, agent_path: str, root: str, command: str) -> list[str]:
    # "--root=<path>": a root starting with "-" must not be read as an option.
    return [RemotePath(python), RemotePath(agent_path), f"--root={root}", command]


def call_agent(
    conn: Connection,
    command: str,
    payload: dict[str, Any] | None = None,
    *,
    python: str | None = None,
    on_event: EventHandler | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run one agent command; return its ``data`` or raise AgentError with the agent's message."""
    target = conn.target
    argv = agent_argv(python or target.python, target.agent_path, target.root, command)

    def on_line(line: str) -> None:
        if on_event is None or not line.strip():
            return
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if isinstance(obj, dict) and obj.get("type") == "progress":
            on_event(obj)

    stdin = json.dumps(payload).encode("utf-8") if payload is not None else None
    result = conn.run(argv, stdin=stdin, env=dict(target.env), timeout=timeout, on_line=on_line)
    try:
        messages = parse_lines(result.stdout.splitlines())
    except ValueError as exc:
        stderr = result.stderr.strip()[-500:]
        raise TransportError(f"{target.name}: {exc}; stderr: {stderr}") from None
    final = [m for m in messages if m.get("type") == "result"]
    if not final:
        hint = ""
        if result.exit_code == 127:
            hint = (f" (`{python or target.python}` or the agent was not found: run "
                    f"`edgefleet agent install {target.name}`)")
        elif result.exit_code == 2 and "can't open file" in result.stderr:
            hint = f" (agent not installed: run `edgefleet agent install {target.name}`)"
        raise TransportError(
            f"{target.name}: agent {command} gave no result (exit {result.exit_code}){hint}: "
            f"{result.stderr.strip()[-500:]}"
        )
    last = final[-1]
    if not last.get("ok"):
        error = last.get("error") or {}
        raise AgentError(f"{target.name}: {error.get('message', 'agent error')}",
                         code=error.get("code", ""), detail=error)
    return last.get("data") or {}
