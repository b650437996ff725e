"""Read Ansible YAML inventories into devices EdgeFleet can reach.

Teams already describe their Pis in Ansible's YAML inventory format, so EdgeFleet reads that
format as-is (README, "Inventory format") instead of inventing its own. Differences from Ansible are
all on the side of refusing input Ansible would half-accept: a mistake in an inventory decides
which machine receives a model, so it must fail loudly, with ``file:line`` and a next step.

Ansible rules followed on purpose:

* groups may be defined in several places (hosts and children add up, later vars win) and a host
  may sit in several groups;
* variable precedence: ``all`` < parent group < child group < host, where a group's depth is its
  longest path from ``all``; groups of equal depth are ordered by ``ansible_group_priority``
  (default 1) and then by name, later wins;
* dict-valued variables such as ``edgefleet_env`` *replace* inherited ones (Ansible's default
  ``hash_behaviour``), they are not merged key by key;
* host ranges (``pi[01:20]``, ``cam-[a:f]``) expand to one host per value;
* the legacy ``ansible_ssh_host|port|user`` and ``ansible_private_key_file`` names are understood,
  and the ``ansible_ssh_*`` spelling wins when both are set, as in Ansible's ssh plugin;
* hosts in no group but ``all`` are in ``ungrouped``.

Passwords (``ansible_password`` and friends) and vault-encrypted values are never turned into
labels: labels are stored in the database and shown on the dashboard.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from orchestrator.core import patterns
from orchestrator.core.errors import EdgeFleetError
from orchestrator.inventory.variables import (
    FIELD_VARS,
    GROUP_NAME_RE,
    VAR_NAME_RE,
    check_host_name,
    expand_host_range,
    parse_var,
    resolve_fields,
)
from orchestrator.inventory.yaml_nodes import (
    SECRET,
    NodeError,
    check_duplicate_keys,
    compose,
    is_null,
    kind,
    line_of,
    pairs,
    scalar_text,
)

__all__ = ["Inventory", "InventoryError", "InventoryHost", "load_inventory", "parse_inventory"]

SECTIONS = ("hosts", "vars", "children")


class InventoryError(EdgeFleetError):
    """Bad inventory; ``str()`` starts with ``<file>:<line>: `` whenever the line is known."""

    def __init__(self, file: str, line: int | None, detail: str) -> None:
        prefix = f"{file}:{line}: " if line is not None else f"{file}: "
        super().__init__(prefix + detail)
        self.file = file
        self.line = line
        self.detail = detail


@dataclass(frozen=True)
class InventoryHost:
    """One device with every inherited variable already resolved."""

    name: str
    address: str
    port: int
    user: str | None
    key_file: str | None
    connection: str
    root: str
    python: str
    env: dict[str, str]
    labels: dict[str, Any]
    groups: tuple[str, ...]
    source: str


@dataclass
class Inventory:
    """A parsed inventory file."""

    path: Path
    hosts: dict[str, InventoryHost]
    groups: dict[str, frozenset[str]]

    def select(self, pattern: str) -> list[InventoryHost]:
        """Hosts matched by an Ansible-style target pattern, in inventory order.

        Raises patterns.PatternError for unknown names or an empty selection.
        """
        rows = [(host.name, host.groups) for host in self.hosts.values()]
        names = patterns.match(pattern, rows, known_groups=self.groups.keys())
        return [self.hosts[name] for name in names]


def load_inventory(path: str | Path) -> Inventory:
    """Read and parse an inventory file; relative key files are resolved next to it."""
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InventoryError(source, None, f"cannot read inventory: {exc.strerror or exc}") from exc
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InventoryError(source, line, "not UTF-8 text; save the file as UTF-8") from exc
    return parse_inventory(content, source, base_dir=path.parent)


def parse_inventory(
    text: str, source: str = "<string>", *, base_dir: str | Path | None = None
) -> Inventory:
    """Parse inventory text; ``source`` names it in errors and in each host's ``source``.

    ``base_dir`` anchors relative ``ansible_ssh_private_key_file`` paths (default: the current
    directory, as there is no file to be relative to).
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    try:
        return _Builder(source, base.absolute()).build(text, Path(source))
    except NodeError as exc:
        raise InventoryError(source, exc.line, exc.message) from exc
    except RecursionError as exc:
        raise InventoryError(source, None, "groups are nested too deeply") from exc


@dataclass
class _Builder:
    """Walks the node tree in document order, the order Ansible's YAML plugin uses."""

    source: str
    base_dir: Path
    host_line: dict[str, int] = field(default_factory=dict)  # also the declaration order
    host_vars: dict[str, dict[str, Any]] = field(default_factory=dict)
    direct_hosts: dict[str, list[str]] = field(default_factory=dict)  # group -> its own hosts
    parents: dict[str, set[str]] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    group_vars: dict[str, dict[str, Any]] = field(default_factory=dict)
    priority: dict[str, int] = field(default_factory=dict)

    def build(self, text: str, path: Path) -> Inventory:
        try:
            root = compose(text)
        except NodeError as exc:
            raise NodeError(exc.line, exc.message + _ini_hint(text)) from exc
        if root is None or is_null(root):
            raise NodeError(None, _EMPTY)
        check_duplicate_keys(root)
        if not isinstance(root, MappingNode):
            hint = _ini_hint(text) or " starting with 'all:' (see inventory/example.yml)"
            raise NodeError(line_of(root), f"an inventory must be a YAML mapping{hint}")
        self._group("all", None, None, None)
        for key, value in pairs(root):
            if key.value in SECTIONS:
                raise NodeError(
                    line_of(key),
                    f"'{key.value}:' at the top level is read as a group name; "
                    f"indent it under 'all:'",
                )
            parent = None if key.value == "all" else "all"
            self._group(key.value, value, parent, key)
        self._group("ungrouped", None, "all", None)
        if not self.host_line:
            raise NodeError(None, _EMPTY)
        return self._finish(path)

    # -- walking -------------------------------------------------------------------------

    def _group(self, name: str, node: Node | None, parent: str | None, key: Node | None) -> None:
        line = line_of(key) if key is not None else None
        if not GROUP_NAME_RE.fullmatch(name):
            raise NodeError(
                line,
                f"group name {name!r} is not allowed: group names must match "
                f"{GROUP_NAME_RE.pattern} (a letter or _, then letters, digits, _ or -)",
            )
        for table in (self.direct_hosts, self.children):
            table.setdefault(name, [])
        self.parents.setdefault(name, set())
        self.group_vars.setdefault(name, {})
        if parent is not None:
            self._link(parent, name, line)
        if node is None or is_null(node):
            return
        if not isinstance(node, MappingNode):
            raise NodeError(
                line_of(node),
                f"group {name!r} must be a mapping of hosts:, vars: and children: "
                f"(or empty), not {kind(node)}",
            )
        for section, value in pairs(node):
            if section.value == "hosts":
                self._hosts(name, value)
            elif section.value == "vars":
                self.group_vars[name].update(self._vars(value, f"group {name!r}", group=name))
            elif section.value == "children":
                for child, child_node in self._mapping(value, f"children of group {name!r}"):
                    self._group(child.value, child_node, name, child)
            else:
                raise NodeError(line_of(section), _unknown_section(section.value, name))

    def _link(self, parent: str, child: str, line: int | None) -> None:
        if child == "all":
            raise NodeError(line, f"'all' is the root group; it cannot be a child of {parent!r}")
        if child == parent or child in self._ancestors(parent):
            loop = self._path_down(child, parent) + [child]
            raise NodeError(
                line,
                f"group {child!r} would be its own ancestor ({' -> '.join(loop)}); "
                f"remove {child!r} from the children of {parent!r}",
            )
        self.parents[child].add(parent)
        if child not in self.children[parent]:
            self.children[parent].append(child)

    def _hosts(self, group: str, node: Node) -> None:
        for key, value in self._mapping(node, f"hosts of group {group!r}", hosts=True):
            if not (is_null(value) or isinstance(value, MappingNode)):
                raise NodeError(
                    line_of(value),
                    f"host {key.value!r} must be followed by its variables or nothing, not "
                    f"{kind(value)}; to give its address write "
                    f"'{key.value}: {{ansible_host: ADDRESS}}'",
                )
            names = expand_host_range(key.value, line_of(key))
            variables = self._vars(value, f"host {key.value!r}", group=None)
            for name in names:
                check_host_name(name, line_of(key))
                self.host_line.setdefault(name, line_of(key))
                self.host_vars.setdefault(name, {}).update(variables)
                if name not in self.direct_hosts[group]:
                    self.direct_hosts[group].append(name)

    def _vars(self, node: Node, owner: str, group: str | None) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in self._mapping(node, f"vars of {owner}"):
            name = key.value
            if not VAR_NAME_RE.fullmatch(name):
                raise NodeError(
                    line_of(key),
                    f"variable name {name!r} is not valid: names must match "
                    f"{VAR_NAME_RE.pattern} (letters, digits and _, not starting with a digit)",
                )
            if group is not None and name == "ansible_group_priority":
                self.priority[group] = _priority(value)
                continue
            result[name] = parse_var(name, value, self.base_dir)
        return result

    @staticmethod
    def _mapping(node: Node, what: str, hosts: bool = False) -> list[tuple[ScalarNode, Node]]:
        if is_null(node):
            return []
        if isinstance(node, MappingNode):
            return pairs(node)
        hint = " (write each host as 'name:' on its own line)" if hosts else ""
        raise NodeError(line_of(node), f"{what} must be a mapping, not {kind(node)}{hint}")

    # -- resolving -----------------------------------------------------------------------

    def _ancestors(self, group: str) -> set[str]:
        seen: set[str] = set()
        todo = [group]
        while todo:
            for parent in self.parents.get(todo.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return seen

    def _path_down(self, start: str, goal: str) -> list[str]:
        """Names from start down to goal through children (for the cycle message)."""
        if start == goal:
            return [start]
        for child in self.children.get(start, []):
            if child == goal or goal in self._descendants(child):
                return [start, *self._path_down(child, goal)]
        return [start, goal]

    def _descendants(self, group: str) -> set[str]:
        seen: set[str] = set()
        todo = [group]
        while todo:
            for child in self.children.get(todo.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return seen

    def _finish(self, path: Path) -> Inventory:
        depth: dict[str, int] = {"all": 0}

        def depth_of(group: str) -> int:
            if group not in depth:
                depth[group] = 1 + max(depth_of(parent) for parent in self.parents[group])
            return depth[group]

        member_of: dict[str, set[str]] = {host: set() for host in self.host_line}
        for group, hosts in self.direct_hosts.items():
            lineage = {group} | self._ancestors(group)
            for host in hosts:
                member_of[host] |= lineage
        for groups in member_of.values():
            groups -= {"all"}
            if groups <= {"ungrouped"}:
                groups.add("ungrouped")
            else:
                groups.discard("ungrouped")

        hosts: dict[str, InventoryHost] = {}
        for name, line in self.host_line.items():
            ordered = sorted(
                member_of[name] | {"all"},
                key=lambda g: (depth_of(g), self.priority.get(g, 1), g),
            )
            merged: dict[str, Any] = {}
            for group in ordered:
                merged.update(self.group_vars[group])
            merged.update(self.host_vars[name])
            labels = {
                key: merged[key]
                for key in sorted(merged)
                if merged[key] is not SECRET and key not in FIELD_VARS
            }
            hosts[name] = InventoryHost(
                name=name,
                **resolve_fields(name, merged),
                labels=labels,
                groups=tuple(sorted(member_of[name])),
                source=f"{self.source}:{line}",
            )
        groups = {g: frozenset(h for h, gs in member_of.items() if g in gs) for g in self.parents}
        groups["all"] = frozenset(hosts)
        return Inventory(path=path, hosts=hosts, groups=groups)


_EMPTY = (
    "inventory defines no hosts; add at least one under 'all:' -> 'hosts:' "
    "(see inventory/example.yml)"
)


def _unknown_section(key: str, group: str) -> str:
    close = difflib.get_close_matches(key, SECTIONS, n=1)
    hint = (
        f"did you mean '{close[0]}:'?"
        if close
        else "put hosts under 'hosts:' and sub-groups under 'children:'"
    )
    return (
        f"unknown key {key!r} in group {group!r}: a group may only contain "
        f"hosts:, vars: and children:; {hint}"
    )


def _priority(node: Node) -> int:
    raw = scalar_text(node, "ansible_group_priority")
    if raw is None or not re.fullmatch(r"-?[0-9]+", raw.strip()):
        raise NodeError(line_of(node), f"ansible_group_priority must be an integer, not {raw!r}")
    return int(raw)


def _ini_hint(content: str) -> str:
    """Spot the INI inventory format, the most likely wrong file to be handed to us."""
    for raw in content.splitlines():
        stripped = raw.strip()
        if stripped and not stripped.startswith(("#", ";")):
            if re.fullmatch(r"\[[A-Za-z0-9_:-]+\]", stripped):
                return " (this looks like an INI inventory; only Ansible's YAML format is read)"
            return ""
    return ""

