"""A benchmark comparison as a JUnit XML report, so CI shows regressions as failed tests.

Why JUnit: GitLab, Jenkins, GitHub Actions reporters and most CI dashboards read it, so a
latency regression appears next to the unit tests, per device and thread count. One testcase
per (device, threads) pair: a pair that fails the gate (``pairing.gate``: significantly slower and
beyond the bound) is a ``<failure>``, a pair that was not compared (throttled, failed, only in
one run) is ``<skipped>`` with the reason, anything else passes.

The XML is built with ElementTree, which escapes quotes and ampersands; characters XML 1.0 cannot
carry at all (control characters in a hostile device name or error message) are replaced, since
ElementTree would write them and produce a file no CI can parse.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.measure.pairing import gate
from orchestrator.measure.reports import format_ci, format_number, format_p, format_ratio

_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(value: Any) -> str:
    return _XML_ILLEGAL.sub("\ufffd", str(value))


def _case_name(row: dict[str, Any]) -> str:
    return f"{row['device']} threads={row['threads']}"


def _summary(row: dict[str, Any]) -> str:
    """``B/A 1.204, 95% CI 1.115–1.283, p <0.001: slower`` — the numbers behind a verdict."""
    p = format_p(row.get("p_value")) or "-"
    text = (f"B/A {format_ratio(row.get('ratio')) or '-'}, "
            f"95% CI {format_ci(row.get('ci_low'), row.get('ci_high')) or '-'}, "
            f"p {p if p.startswith('<') else '= ' + p}: {row.get('verdict')}")
    return f"{text} ({row['note']})" if row.get("note") else text


def write_junit(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]],
                max_regression: float, suite_name: str = "edgefleet.bench") -> dict[str, int]:
    """Write ``compare_runs`` rows to ``path`` as JUnit XML; returns the suite's counts.

    The file is written next to ``path`` and renamed into place, so a CI step reading it never
    sees half a report.
    """
    failing = {(row["device"], row["threads"]) for row in gate(rows, max_regression)}
    bound = f"{max_regression * 100:g}%"
    counts = {"tests": len(rows), "failures": 0, "errors": 0, "skipped": 0}

    suite = ET.Element("testsuite", name=_xml_text(suite_name))
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="max_regression", value=bound)
    # A pair present in one run only still belongs to the comparison of the two bundles.
    run_a = next((row["bundle_a"] for row in rows if row.get("bundle_a")), "?")
    run_b = next((row["bundle_b"] for row in rows if row.get("bundle_b")), "?")
    for row in rows:
        bundles = f"{row.get('bundle_a') or run_a} vs {row.get('bundle_b') or run_b}"
        case = ET.SubElement(suite, "testcase", classname=_xml_text(bundles),
                             name=_xml_text(_case_name(row)), time="0")
        if row.get("excluded") or row.get("verdict") is None:
            counts["skipped"] += 1
            ET.SubElement(case, "skipped",
                          message=_xml_text(row.get("excluded") or "not compared"))
        elif (row["device"], row["threads"]) in failing:
            counts["failures"] += 1
            percent = (row["ratio"] - 1) * 100
            failure = ET.SubElement(case, "failure", type="LatencyRegression", message=_xml_text(
                f"{percent:.1f}% slower (bound {bound}): {_summary(row)}"))
            failure.text = _xml_text(
                f"{_case_name(row)}: p50 {format_number(row.get('p50_a'))} ms in "
                f"{row.get('bundle_a')} -> {format_number(row.get('p50_b'))} ms in "
                f"{row.get('bundle_b')} (n = {row.get('n_a')} / {row.get('n_b')})")
        else:
            ET.SubElement(case, "system-out").text = _xml_text(_summary(row))

    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", "0")
    root = ET.Element("testsuites", name=_xml_text(suite_name),
                      **{k: str(v) for k, v in counts.items()})
    root.append(suite)
    tree = ET.ElementTree(root)
    ET.indent(tree)

    target = Path(path)
    partial = target.with_name(target.name + ".part")
    tree.write(partial, encoding="utf-8", xml_declaration=True)
    os.replace(partial, target)
    return counts
