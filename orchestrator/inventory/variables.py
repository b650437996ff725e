"""What an inventory may say: host and group names, host ranges, and the variables EdgeFleet
itself understands, each checked where it is written.

Each variable is validated at its definition, not when a host inherits it: the error then points
at the line to fix, and a bad value in a group is caught even while a host overrides it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node

from orchestrator.inventory.yaml_nodes import (
    SECRET,
    NodeError,
    is_null,
    kind,
    line_of,
    pairs,
    scalar_text,
    to_python,
)
from orchestrator.transport.base import SHELL_RESERVED, env_name_problem

# Variable name -> InventoryHost field. Legacy spellings are listed after the modern ones and
# win when both are set, as in Ansible's ssh connection plugin.
FIELD_VARS: dict[str, str] = {
    "ansible_host": "address",
    "ansible_ssh_host": "address",
    "ansible_port": "port",
    "ansible_ssh_port": "port",
    "ansible_user": "user",
    "ansible_ssh_user": "user",
    "ansible_private_key_file": "key_file",
    "ansible_ssh_private_key_file": "key_file",
    "ansible_connection": "connection",
    "edgefleet_root": "root",
    "edgefleet_python": "python",
    "edgefleet_env": "env",
}
DEFAULTS: dict[str, Any] = {
    "port": 22,
    "user": None,
    "key_file": None,
    "connection": "ssh",
    "root": "~/.edgefleet",
    "python": "python3",
}
# ssh: the SSH transport EDGEFLEET_SSH_CONNECTOR picks (default: the system OpenSSH client where
# there is one); openssh / paramiko: that one for this device; local: this machine.
CONNECTIONS = ("ssh", "openssh", "paramiko", "local")
# Never labels: labels end up in the database and on the dashboard.
SECRET_VARS = frozenset(
    {
        "ansible_password",
        "ansible_ssh_pass",
        "ansible_ssh_password",
        "ansible_become_pass",
        "ansible_become_password",
        "ansible_sudo_pass",
        "ansible_sudo_password",
        "ansible_su_pass",
        "ansible_su_password",
        "ansible_paramiko_pass",
        "ansible_paramiko_password",
    }
)
# And any variable named like one (a plugin's ``*_pass``, a user's ``api_token``): a label
# that is really a password would be stored, shown to viewers and kept in the audit log.
SECRET_NAME_RE = re.compile(
    r"(?:^|_)(?:pass|passwd|password|passphrase|secret|token|api_key|private_key)$",
    re.IGNORECASE)


def is_secret_var(name: str) -> bool:
    """Whether the variable ``name`` holds a secret: never a label, never stored."""
    return name in SECRET_VARS or SECRET_NAME_RE.search(name) is not None
HOST_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
GROUP_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_HOST_NAME = 64
MAX_RANGE_HOSTS = 4096
_RANGE_RE = re.compile(r"([^\[\]]*)\[([^\]]*)\](.*)")
_RANGE_BODY_RE = re.compile(r"([0-9]*|[A-Za-z]):([0-9]+|[A-Za-z])(?::([0-9]+))?")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Host names, IPv4/IPv6 (optionally bracketed, with %zone); never a leading '-' that a command
# line could read as an option.
ADDRESS_RE = re.compile(r"[A-Za-z0-9_\[][A-Za-z0-9._:%\[\]-]*")
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]*\$?")


def parse_var(name: str, node: Node, base_dir: Path) -> Any:
    """The typed value of one variable definition (SECRET for values never to be shown)."""
    target = FIELD_VARS.get(name)
    if target is None:
        return SECRET if is_secret_var(name) else to_python(node, is_secret_var)
    if target == "env":
        return _env(node)
    if target == "port":
        return _port(name, node)
    value = scalar_text(node, name)
    if value is None:
        return None
    line = line_of(node)
    if target == "address":
        if not (ADDRESS_RE.fullmatch(value) and len(value) <= 253):
            raise NodeError(line, f"{name} {value!r} is not a host name or IP address")
    elif target == "user":
        if not (USER_RE.fullmatch(value) and len(value) <= 64):
            raise NodeError(line, f"{name} {value!r} is not a valid user name")
    elif target == "connection":
        if value not in CONNECTIONS:
            hint = " (ssh picks OpenSSH or paramiko; see EDGEFLEET_SSH_CONNECTOR)" if (
                value == "smart") else ""
            raise NodeError(
                line,
                f"{name} {value!r} is not supported; use one of: {', '.join(CONNECTIONS)}{hint}",
            )
    elif target == "key_file":
        if not value.strip():
            raise NodeError(line, f"{name} is empty; remove it or give a key file path")
        return os.path.normpath(base_dir / os.path.expanduser(value))
    elif not value.strip():  # root, python
        raise NodeError(line, f"{name} is empty; remove it to use the default "
                        f"{DEFAULTS[target]!r}")
    return value


def resolve_fields(host: str, merged: dict[str, Any]) -> dict[str, Any]:
    """InventoryHost's connection fields from the host's merged variables, defaults filled in.

    A variable set to null (``ansible_user:``) means "not set" and gives the default back.
    """
    fields: dict[str, Any] = {"address": None, **DEFAULTS, "env": None}
    for name, target in FIELD_VARS.items():  # later (legacy) names overwrite earlier ones
        if merged.get(name) is not None:
            fields[target] = merged[name]
    fields["address"] = fields["address"] or host
    fields["env"] = dict(fields["env"] or {})
    return fields


def _port(name: str, node: Node) -> int | None:
    value = scalar_text(node, name)
    if value is None:
        return None
    if re.fullmatch(r"[0-9]{1,5}", value.strip()) and 1 <= int(value) <= 65535:
        return int(value)
    raise NodeError(line_of(node), f"{name} must be a whole number from 1 to 65535, not {value!r}")


def _env(node: Node) -> dict[str, str] | None:
    """edgefleet_env: values are the text as written, so ``0755`` stays ``"0755"``."""
    if is_null(node):
        return None
    if not isinstance(node, MappingNode):
        raise NodeError(
            line_of(node),
            f"edgefleet_env must be a mapping of NAME: value, not {kind(node)}; "
            "e.g. 'edgefleet_env: {EDGEFLEET_SYSFS: /opt/fake-sys}'",
        )
    env: dict[str, str] = {}
    for key, value in pairs(node):
        if not ENV_NAME_RE.fullmatch(key.value):
            raise NodeError(
                line_of(key),
                f"edgefleet_env name {key.value!r} is not a valid environment variable name "
                f"(must match {ENV_NAME_RE.pattern})",
            )
        if key.value in SHELL_RESERVED:
            raise NodeError(line_of(key), f"edgefleet_env name {key.value!r} "
                                          f"{env_name_problem(key.value)}")
        raw = scalar_text(value, f"edgefleet_env.{key.value}")
        raw = "" if raw is None else raw
        if "\0" in raw:
            raise NodeError(line_of(value), f"edgefleet_env.{key.value} contains a NUL byte")
        env[key.value] = raw
    return env


def check_host_name(name: str, line: int) -> None:
    """Host names end up in file names, logs and command lines: keep them plain."""
    if HOST_NAME_RE.fullmatch(name) and len(name) <= MAX_HOST_NAME:
        return
    raise NodeError(
        line,
        f"host name {name!r} is not allowed: host names must match {HOST_NAME_RE.pattern} "
        f"(letters, digits, '.', '_' and '-', at most {MAX_HOST_NAME} characters, not starting "
        f"with '.' or '-'); to reach a device at that address, give it a plain name and set "
        f"ansible_host (and ansible_port), e.g. 'pi5-a: {{ansible_host: 192.168.1.50}}'",
    )


def expand_host_range(name: str, line: int) -> list[str]:
    """Expand Ansible host ranges: ``pi[01:03]`` -> pi01, pi02, pi03; ``x[a:c]`` -> xa..xc."""
    found = _RANGE_RE.fullmatch(name)
    if not found:
        return [name]
    head, body, tail = found.groups()
    spec = _RANGE_BODY_RE.fullmatch(body)
    if not spec:
        raise NodeError(
            line,
            f"host {name!r}: '[{body}]' is not a host range like [01:20] or [a:f]; "
            "brackets are only allowed for ranges (for an IPv6 address, give the host a "
            "plain name and set ansible_host)",
        )
    begin, end, step_text = spec.group(1) or "0", spec.group(2), spec.group(3)
    step = int(step_text or 1)
    if begin.isdigit() != end.isdigit() or begin.islower() != end.islower() or step < 1:
        raise NodeError(line, f"host range {name!r} must go from a number to a number "
                        "or a letter to a letter of the same case, with a step of at least 1")
    if begin.isdigit():
        width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
        if width and len(end) != width:
            raise NodeError(line, f"host range {name!r}: zero-padded bounds need equal lengths")
        values = [str(i).zfill(width) for i in range(int(begin), int(end) + 1, step)]
    else:
        values = [chr(c) for c in range(ord(begin), ord(end) + 1, step)]
    tails = expand_host_range(tail, line)  # further ranges; the same for every value
    if not values or len(values) * len(tails) > MAX_RANGE_HOSTS:
        raise NodeError(line, f"host range {name!r} must expand to 1..{MAX_RANGE_HOSTS} hosts")
    return [head + value + rest for value in values for rest in tails]
