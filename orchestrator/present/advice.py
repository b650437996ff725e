"""What to do about a Pi's throttle state, in words that fit the board: the fleet page's hints
(web.pages.view.throttle_badges) and ``edgefleet devices show`` say the same.

Why by model: an under-voltage means the supply cannot deliver what *this* board draws, and
the boards differ: a Pi 5 needs 5V/5A (its 27 W USB-C PD supply; on 5V/3A it limits USB current
and browns out under load), a Pi 4 5V/3A (15 W USB-C), a Pi 3 5V/2.5A (micro-USB). Telling a
Pi 4's owner to buy a 5 A supply, as the fleet page did, sends them after the wrong part.
Figures: Raspberry Pi's documentation, "Power supply" (recommended PSU current per model).
"""

from __future__ import annotations

import re

# (pattern on the device-tree model string, the supply it needs, which one that is)
SUPPLIES: tuple[tuple[str, str, str], ...] = (
    (r"\bPi 5\b|\bPi 500\b|Compute Module 5", "5V/5A", "the official 27W USB-C supply"),
    (r"\bPi 4\b|\bPi 400\b|Compute Module 4", "5V/3A", "the official 15W USB-C supply"),
    (r"\bPi 3\b|\bPi Zero 2\b", "5V/2.5A", "the official micro-USB supply"),
    (r"\bPi Zero\b", "5V/1.2A", "the official micro-USB supply"),
)
UNKNOWN_MODEL = "the one its model needs: 5V/5A for a Pi 5, 5V/3A for a Pi 4"

COOLING = "add active cooling"
SLOWED = "the SoC slowed itself down"


def power_supply(model: str | None) -> tuple[str, str] | None:
    """(rating, which supply) a board needs, from its model string ("Raspberry Pi 4 Model B
    Rev 1.5"); None for a model not known here."""
    for pattern, rating, which in SUPPLIES:
        if model and re.search(pattern, model):
            return rating, which
    return None


def under_voltage(model: str | None) -> str:
    """The fix for an under-voltage on this board: "use a 5V/3A supply (the official 15W
    USB-C supply)" for a Pi 4."""
    supply = power_supply(model)
    if supply is None:
        return f"use a stronger supply ({UNKNOWN_MODEL})"
    return f"use a {supply[0]} supply ({supply[1]})"


def fix_for(word: str, model: str | None) -> str:
    """The fix for a get_throttled word (agent/sensors.py THROTTLE_BITS) on this board; "" for
    a word with none."""
    if word == "under_voltage":
        return under_voltage(model)
    if word == "soft_temp_limit":
        return COOLING
    if word in ("frequency_capped", "throttled"):
        return SLOWED
    return ""
