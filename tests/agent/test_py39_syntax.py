"""The agent runs on the device's Python >= 3.9: its code must not use newer grammar (match,
parenthesised context managers, ...) nor evaluate PEP 604/585 annotations at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import agent

AGENT_DIR = Path(agent.__file__).parent


def test_every_agent_module_is_python39_grammar_with_lazy_annotations() -> None:
    modules = sorted(AGENT_DIR.glob("*.py"))
    assert len(modules) > 15
    for path in modules:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
        annotated = any(isinstance(node, ast.AnnAssign) or (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (node.returns is not None or any(a.annotation for a in node.args.args)))
            for node in ast.walk(tree))
        if annotated:
            assert "from __future__ import annotations" in source, path.name
