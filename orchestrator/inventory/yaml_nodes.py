"""YAML node helpers for the inventory parser.

The inventory is read from YAML *nodes* (``yaml.compose``), not from the plain Python objects
``yaml.safe_load`` returns, because nodes keep three things the objects lose:

* line numbers, so every error can say ``file:line``;
* duplicate keys, which ``safe_load`` silently collapses (a host listed twice under one ``hosts:``
  would lose its first set of variables without a word);
* the text as written, so ``PORT: 0755`` or ``FLAG: yes`` in ``edgefleet_env`` reach the device
  as ``"0755"`` and ``"yes"`` rather than as YAML 1.1's ``493`` and ``True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# The C parser is much faster on big fleets; both produce the same yaml.nodes objects.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Scalar conversion and merge-key flattening only need the pure-Python constructor's methods.
_CONSTRUCTOR = yaml.SafeLoader("")

_STD = "tag:yaml.org,2002:"
NULL_TAG = _STD + "null"
MERGE_TAG = _STD + "merge"
_MAP_TAGS = {_STD + "map", _STD + "set"}
_SEQ_TAGS = {_STD + "seq", _STD + "omap", _STD + "pairs"}
_TEXT_TAGS = {_STD + "str", _STD + "timestamp", _STD + "binary", "!unsafe"}
_TYPED_TAGS = {_STD + "bool", _STD + "int", _STD + "float"}
VAULT_TAG = "!vault"
# A label is shown and stored as JSON; an alias "bomb" must not expand into millions of items.
_MAX_VALUE_ITEMS = 10_000


class NodeError(Exception):
    """A problem located at a line; the inventory parser turns it into an InventoryError."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Secret:
    """Marks a value that must never be stored or shown (Ansible Vault, passwords)."""

    def __repr__(self) -> str:
        return "SECRET"


SECRET = _Secret()


def line_of(node: Node) -> int:
    """1-based line where the node starts (PyYAML marks are 0-based)."""
    return int(node.start_mark.line) + 1


def compose(text: str) -> Node | None:
    """Parse one YAML document into nodes; None for an empty document."""
    try:
        return yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            where = exc.context_mark.line + 1 if exc.context_mark else None
            started = f" that starts at line {where}" if where is not None else ""
            detail = f"{exc.problem} ({exc.context}{started})"
        raise NodeError(mark.line + 1 if mark else None, f"invalid YAML: {detail}") from exc
    except yaml.YAMLError as exc:  # ReaderError: bad characters; it knows an offset only
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
        reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise NodeError(line, f"invalid YAML: {reason}") from exc


def check_duplicate_keys(root: Node) -> None:
    """Reject a key written twice in one mapping, anywhere in the document.

    Merge keys (``<<: *defaults``) are exempt: overriding a merged key is their whole point.
    """
    seen_nodes: set[int] = set()
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # aliases share nodes; recursive aliases would loop
            continue
        seen_nodes.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                stack.append(value)
                if not isinstance(key, ScalarNode) or key.tag == MERGE_TAG:
                    continue
                if key.value in first_line:
                    raise NodeError(
                        line_of(key),
                        f"duplicate key {key.value!r} (first written at line "
                        f"{first_line[key.value]}); YAML would silently keep only the last "
                        "one, so merge the two entries into one",
                    )
                first_line[key.value] = line_of(key)


def is_null(node: Node) -> bool:
    """True for ``key:`` with nothing after it, ``~`` and ``null``."""
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


def kind(node: Node) -> str:
    """A word for error messages: what the user wrote instead of what was expected."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if is_null(node):
        return "nothing"
    return f"{node.value!r}"


def pairs(node: MappingNode) -> list[tuple[ScalarNode, Node]]:
    """The mapping's (key, value) pairs with merge keys applied; later keys win, first order kept.

    Keys must be scalars: inventories are keyed by names.
    """
    try:
        _CONSTRUCTOR.flatten_mapping(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise NodeError(mark.line + 1 if mark else line_of(node), str(exc.problem)) from exc
    result: dict[str, tuple[ScalarNode, Node]] = {}
    for key, value in node.value:
        if not isinstance(key, ScalarNode):
            raise NodeError(line_of(key), f"a key must be a plain name, not {kind(key)}")
        result.pop(key.value, None)  # keep the merge semantics but put the winner in its place
        result[key.value] = (key, value)
    return list(result.values())


def scalar_text(node: Node, what: str) -> str | None:
    """A scalar exactly as written (None for null); lists, mappings and vault values refused."""
    if is_null(node):
        return None
    if isinstance(node, ScalarNode) and node.tag == VAULT_TAG:
        raise NodeError(
            line_of(node),
            f"{what} is vault-encrypted; EdgeFleet cannot decrypt Ansible Vault, "
            "so write the value in plain text (it is not a secret)",
        )
    if not isinstance(node, ScalarNode):
        raise NodeError(line_of(node), f"{what} must be a single value, not {kind(node)}")
    return str(node.value)


def scalar(node: ScalarNode) -> Any:
    """Convert one scalar to a JSON-friendly Python value.

    Dates and non-finite floats stay as the text written: JSON has no type for them.
    """
    tag = node.tag
    if tag == NULL_TAG:
        return None
    if tag == VAULT_TAG:
        return SECRET
    if tag in _TEXT_TAGS:
        return str(node.value)
    if tag in _TYPED_TAGS:
        value = _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, node)
        if isinstance(value, float) and not math.isfinite(value):
            return str(node.value)
        return value
    raise NodeError(line_of(node), f"unsupported YAML tag {tag!r}; write a plain value")


def to_python(node: Node, secret_key: Callable[[str], bool] | None = None) -> Any:
    """A label value as plain JSON-serialisable data (dict keys are the key text as written).

    Returns SECRET if any part of the value is vault-encrypted, or sits under a key that
    ``secret_key`` says names a secret (``mqtt: {password: ...}``, as a top-level
    ``mqtt_password`` is): the whole label is then withheld rather than shown with holes in it.
    """
    budget = [_MAX_VALUE_ITEMS]
    secret = [False]

    def convert(current: Node, path: frozenset[int]) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise NodeError(line_of(node), f"value has more than {_MAX_VALUE_ITEMS} items")
        if id(current) in path:
            raise NodeError(line_of(current), "value contains itself (recursive YAML alias)")
        inner = path | {id(current)}
        if isinstance(current, ScalarNode):
            value = scalar(current)
            if value is SECRET:
                secret[0] = True
            return value
        if isinstance(current, SequenceNode) and current.tag in _SEQ_TAGS:
            return [convert(item, inner) for item in current.value]
        if isinstance(current, MappingNode) and current.tag in _MAP_TAGS:
            converted = {str(k.value): convert(v, inner) for k, v in pairs(current)}
            if secret_key is not None and any(secret_key(k) for k in converted):
                secret[0] = True
            return converted
        raise NodeError(line_of(current), f"unsupported YAML tag {current.tag!r}")

    result = convert(node, frozenset())
    return SECRET if secret[0] else result
