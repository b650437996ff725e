"""A device's strings and inventory labels cannot drive the operator's terminal.

Rich escapes its own markup but passed raw control characters through: a simulated Pi whose
devicetree model read ``ESC ]0;owned BEL ESC [2J`` retitled and cleared the terminal of whoever
ran ``edgefleet devices list`` (checked on a real TTY). Every line the CLI prints now goes
through ``output.SafeConsole``, which writes control characters and bidirectional overrides
out (``\\x1b``); rich's own colours still work.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from orchestrator.demo.simulate import create_simulated_device
from tests.conftest import Cli

HOSTILE_MODEL = "\x1b]0;owned\x07\x1b[2J\x1b[31mRaspberry Pi 5 Model B\u202egnp.exe"


def test_device_strings_and_labels_reach_the_terminal_written_out(cli: Cli,
                                                                   tmp_path: Path) -> None:
    sim = create_simulated_device(tmp_path / "sim", model=HOSTILE_MODEL)
    host = sim.local_host_vars(tmp_path / "root") | {"note": "\x1b[2Jcleared\x9b"}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"pi-evil": host}}}))
    cli("inventory", "sync", inventory)
    installed = cli("agent", "install", "pi-evil", "--json").json
    assert installed[0]["state"] == "installed", installed
    shown = cli("devices", "show", "pi-evil").stdout + cli("devices", "list").stdout
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\x9b" not in shown
    assert "\\x1b]0;owned" in shown and "\\x1b[2J\\x1b[31mRaspberry" in shown  # not obeyed
    assert "\\u202egnp.exe" in shown and "note=\\x1b[2Jcleared\\x9b" in shown
    # --json keeps the data as it is (JSON escapes control characters itself)
    facts = cli("devices", "show", "pi-evil", "--json").json
    assert "\\u001b[2J\\u001b[31mRaspberry Pi 5 Model B\u202egnp.exe" in json.dumps(
        facts, ensure_ascii=False)
    error = cli("devices", "show", "\x1b[2Jx", expect=2).stderr
    assert "\x1b" not in error and "no device named '\\x1b[2Jx'" in error
