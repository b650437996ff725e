"""The published results table: exact Markdown/CSV on a small fixed input, rich rendering.

The input includes a hostile device name (a pipe, rich markup, a comma) and an error message
with a pipe and a line break: every output must show them as typed and stay well-formed.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from orchestrator.measure.pairing import compare_runs
from orchestrator.measure.reports import (
    comparison_csv,
    comparison_markdown,
    format_number,
    format_rtf,
    render_comparison,
    render_table,
    report_rows,
    to_csv,
    to_markdown,
)
from orchestrator.present.wording import ms, plural, verb

HOSTILE = "pi|5, [red]x"
ERROR = "onnxruntime 1.16 < 1.17 | needed\nupgrade it"


def result(device: str, threads: int, **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "run_id": 7, "device": device, "bundle": {"name": "first-crack", "version": "2"},
        "precision": "int8", "threads": threads, "ok": True, "error": None,
        "latency_ms": None, "load_ms": None, "first_inference_ms": None, "peak_rss_mb": None,
        "telemetry": {"status": "clean"}, "valid": True, "flags": [], "simulated": False,
    }
    out.update(overrides)
    return out


RESULTS = [
    result("pi5-a", 2, simulated=True, latency_ms={"p50": 12.3456, "p95": 15.04},
           load_ms=1234.6, first_inference_ms=20.5, peak_rss_mb=89.94,
           telemetry={"status": "clean", "temp_c_max": 61.27}),
    result(HOSTILE, 4, precision="fp32", latency_ms={"p50": 0.4123, "p95": 0.98},
           load_ms=45.678, first_inference_ms=1.5, peak_rss_mb=412.3, valid=False,
           flags=["under_voltage", "throttled"],
           telemetry={"status": "throttled", "temp_c_max": 80.04}),
    result("pi4-lab", 1, ok=False, error=ERROR, valid=False, telemetry={"status": "unknown"}),
    result("pi3", 1, latency_ms={"p50": 250.04, "p95": 300.0}, load_ms=98.04,
           first_inference_ms=260.0, peak_rss_mb=50.5,
           telemetry={"status": "unknown", "temp_c_max": None}),
]


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0"), (0.04123, "0.041"), (0.4123, "0.412"), (3.456, "3.46"), (12.3456, "12.3"),
    (99.94, "99.9"), (345.6, "346"), (1234.6, "1235"), (-2.5, "-2.50"), (None, None),
    (math.nan, None),
])
def test_format_number(value: float | None, text: str | None) -> None:
    assert format_number(value) == text


def test_report_rows() -> None:
    rows = report_rows(RESULTS)
    assert rows[0] == {
        "model": "first-crack@2", "device": "pi5-a (sim)", "precision": "int8", "threads": "2",
        "p50": "12.3", "p95": "15.0", "load": "1235", "peak_rss": "89.9", "temp_max": "61.3",
        "flags": None, "status": "ok",
    }
    assert (rows[1]["flags"], rows[1]["status"]) == ("under_voltage, throttled", "invalid")
    assert (rows[2]["flags"], rows[2]["status"]) == (f"failed: {ERROR}", "failed")
    assert rows[2]["p50"] is None and rows[2]["load"] is None
    assert (rows[3]["flags"], rows[3]["temp_max"]) == ("sensors unknown", None)


def test_markdown_exact() -> None:
    assert to_markdown(RESULTS) == (
        "| model | device | precision | threads | p50 ms | p95 ms | load ms | peak RSS MB "
        "| temp max °C | flags |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
        "| first-crack@2 | pi5-a (sim) | int8 | 2 | 12.3 | 15.0 | 1235 | 89.9 | 61.3 | - |\n"
        "| first-crack@2 | pi\\|5, [red]x | fp32 | 4 | 0.412 | 0.980 | 45.7 | 412 | 80.0 "
        "| under_voltage, throttled |\n"
        "| first-crack@2 | pi4-lab | int8 | 1 | - | - | - | - | - "
        "| failed: onnxruntime 1.16 < 1.17 \\| needed upgrade it |\n"
        "| first-crack@2 | pi3 | int8 | 1 | 250 | 300 | 98.0 | 50.5 | - | sensors unknown |\n"
    )


def test_markdown_rows_keep_their_column_count() -> None:
    """An unescaped pipe would add a column on GitHub: count the unescaped separators."""
    for line in to_markdown(RESULTS).splitlines():
        assert line.replace("\\|", "").count("|") == 11


def test_csv_exact_and_round_trips() -> None:
    text = to_csv(RESULTS)
    assert text == (
        "run_id,model,device,simulated,precision,threads,status,p50_ms,p95_ms,load_ms,"
        "first_inference_ms,peak_rss_mb,temp_c_max,telemetry,flags,error\n"
        "7,first-crack@2,pi5-a,true,int8,2,ok,12.3456,15.04,1234.6,20.5,89.94,61.3,clean,,\n"
        '7,first-crack@2,"pi|5, [red]x",false,fp32,4,invalid,0.4123,0.98,45.678,1.5,412.3,'
        "80.0,throttled,under_voltage;throttled,\n"
        '7,first-crack@2,pi4-lab,false,int8,1,failed,,,,,,,unknown,,"onnxruntime 1.16 < 1.17 '
        '| needed\nupgrade it"\n'
        "7,first-crack@2,pi3,false,int8,1,ok,250.04,300.0,98.04,260.0,50.5,,unknown,,\n"
    )
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [row["device"] for row in parsed] == ["pi5-a", HOSTILE, "pi4-lab", "pi3"]
    assert parsed[2]["error"] == ERROR
    assert float(parsed[0]["p50_ms"]) == 12.3456


def render(renderable: Any, styles: bool = False) -> str:
    console = Console(record=True, width=200, force_terminal=styles, color_system="standard")
    console.print(renderable)
    return console.export_text(styles=styles)


def test_table_renders_cells_without_interpreting_markup() -> None:
    table = render_table(RESULTS, "first-crack@2 [bold]on the roastery")
    text = render(table)
    assert "first-crack@2 [bold]on the roastery" in text
    assert HOSTILE in text
    assert "failed: onnxruntime 1.16 < 1.17 | needed" in text
    lines = {line.split()[1]: line for line in text.splitlines() if "first-crack@2 " in line}
    assert lines["pi5-a"].split() == ["first-crack@2", "pi5-a", "(sim)", "int8", "2", "12.3",
                                      "15.0", "1235", "89.9", "61.3", "-"]
    assert "0.412" in lines["pi|5,"] and "under_voltage, throttled" in lines["pi|5,"]
    assert "sensors unknown" in lines["pi3"]
    # The caption explains what is flagged, and only that.
    assert "under_voltage: the supply voltage dropped too low" in text
    assert "sensors unknown: temperature and throttle state could not be read" in text
    assert "soft_temp_limit" not in text
    assert "Yellow rows" in text and "Red rows" in text
    assert [row.style for row in table.rows] == ["", "yellow", "red", ""]


def test_table_of_clean_results_has_a_short_caption() -> None:
    text = render(render_table(RESULTS[:1], None))
    assert "Yellow rows" not in text and "Red rows" not in text
    assert "load = model load time" in text


COMPARISON_ROWS = [
    {"device": "pi5-a", "threads": 2, "simulated": True, "bundle_a": "fc@1", "bundle_b": "fc@2",
     "p50_a": 10.0123, "p50_b": 12.0456, "n_a": 30, "n_b": 30, "ratio": 1.20302,
     "ci_low": 1.15123, "ci_high": 1.26049, "p_value": 3.1e-11, "verdict": "slower",
     "excluded": None, "note": None},
    {"device": HOSTILE, "threads": 4, "simulated": False, "bundle_a": "fc@1",
     "bundle_b": "fc@2", "p50_a": 5.0, "p50_b": 4.0, "n_a": 30, "n_b": 30, "ratio": 0.8,
     "ci_low": 0.75, "ci_high": 0.86, "p_value": 0.0123, "verdict": "faster", "excluded": None,
     "note": None},
    {"device": "pi4", "threads": 1, "simulated": False, "bundle_a": "fc@1", "bundle_b": "fc@2",
     "p50_a": 10.0, "p50_b": 10.0, "n_a": 30, "n_b": 30, "ratio": 1.0, "ci_low": 1.0,
     "ci_high": 1.0, "p_value": 1.0, "verdict": "no significant change", "excluded": None,
     "note": "both samples are the same constant"},
    {"device": "pi3", "threads": 1, "simulated": False, "bundle_a": "fc@1", "bundle_b": None,
     "p50_a": 250.04, "p50_b": None, "n_a": None, "n_b": None, "ratio": None, "ci_low": None,
     "ci_high": None, "p_value": None, "verdict": None, "excluded": "only in A", "note": None},
]


def test_comparison_markdown_exact() -> None:
    assert comparison_markdown(COMPARISON_ROWS) == (
        "| device | threads | A p50 | B p50 | B/A | 95% CI | p | verdict |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
        "| pi5-a (sim) | 2 | 10.0 ms | 12.0 ms | 1.203 | 1.151–1.260 | <0.001 | slower |\n"
        "| pi\\|5, [red]x | 4 | 5.00 ms | 4.00 ms | 0.800 | 0.750–0.860 | 0.012 | faster |\n"
        "| pi4 | 1 | 10.0 ms | 10.0 ms | 1.000 | 1.000–1.000 | 1.000 "
        "| no significant change (both samples are the same constant) |\n"
        "| pi3 | 1 | 250 ms | - | - | - | - | excluded: only in A |\n"
    )


def test_comparison_csv_exact() -> None:
    assert comparison_csv(COMPARISON_ROWS[:2] + COMPARISON_ROWS[3:]) == (
        "device,threads,simulated,bundle_a,bundle_b,p50_a,p50_b,n_a,n_b,ratio,ci_low,ci_high,"
        "p_value,verdict,excluded,note\n"
        "pi5-a,2,true,fc@1,fc@2,10.0123,12.0456,30,30,1.203,1.1512,1.2605,3.1e-11,slower,,\n"
        '"pi|5, [red]x",4,false,fc@1,fc@2,5.0,4.0,30,30,0.8,0.75,0.86,0.0123,faster,,\n'
        "pi3,1,false,fc@1,,250.04,,,,,,,,,only in A,\n"
    )


def test_comparison_table_colours_verdicts() -> None:
    table = render_comparison(COMPARISON_ROWS)
    plain = render(table)
    assert HOSTILE in plain
    assert "1.151–1.260" in plain and "excluded: only in A" in plain
    assert "B/A = median latency of B / median of A" in plain
    styled = render(table, styles=True)
    assert "\x1b[31mslower" in styled
    assert "\x1b[32mfaster" in styled


def test_comparison_of_measured_runs_renders() -> None:
    rng = np.random.default_rng(0)
    run_a = [result("pi5-a", t, latencies_ms=list(rng.lognormal(np.log(10), 0.05, 30)))
             for t in (1, 2)]
    run_b = [result("pi5-a", 1, latencies_ms=list(rng.lognormal(np.log(12), 0.05, 30))),
             result("pi5-a", 2, latencies_ms=list(rng.lognormal(np.log(10), 0.05, 30)),
                    valid=False, flags=["under_voltage"], telemetry={"status": "throttled"})]
    text = render(render_comparison(compare_runs(run_a, run_b)))
    assert "slower" in text and "excluded: B throttled (under_voltage)" in text


def test_csv_keeps_measured_digits_not_float_noise() -> None:
    """What `runs show 1 --format csv` printed before: p95 0.19388999999999995, a ratio
    0.6876666666666666, p 2.6009683275360677e-10."""
    noisy = dict(RESULTS[0], latency_ms={"p50": 0.15000000000000002, "p95": 0.19388999999999995},
                 load_ms=5.70312, first_inference_ms=0.75699999, peak_rss_mb=62.6149,
                 telemetry={"status": "clean", "temp_c_max": 58.04999})
    (row,) = list(csv.DictReader(io.StringIO(to_csv([noisy]))))
    assert (row["p50_ms"], row["p95_ms"], row["load_ms"], row["first_inference_ms"],
            row["peak_rss_mb"], row["temp_c_max"]) == ("0.15", "0.1939", "5.703", "0.757",
                                                       "62.61", "58.0")
    compared = dict(COMPARISON_ROWS[0], ratio=0.6876666666666666, ci_low=0.5513078470824949,
                    ci_high=0.7582298812400508, p_value=2.6009683275360677e-10,
                    p50_b=0.10314999999999999)
    (line,) = list(csv.DictReader(io.StringIO(comparison_csv([compared]))))
    assert (line["ratio"], line["ci_low"], line["ci_high"], line["p_value"], line["p50_b"]) == (
        "0.6877", "0.5513", "0.7582", "2.6e-10", "0.1031")


def test_rtf_plurals_and_milliseconds_read_plainly() -> None:
    assert format_rtf(5.91e-05) == "0.0000591" and format_rtf(0.00217) == "0.00217"
    assert format_rtf(0.5) == "0.500" and format_rtf(1.25) == "1.25" and format_rtf(0) == "0"
    assert format_rtf(None) is None and "e" not in (format_rtf(3.2e-9) or "")
    assert [plural(n, "device") for n in (0, 1, 2)] == ["0 devices", "1 device", "2 devices"]
    assert plural(1234567, "run") == "1234567 runs" and plural(None, "device") == "no devices"
    assert f"1 thread {verb(1, 'keeps', 'keep')} up" == "1 thread keeps up"
    assert f"2 threads {verb(2, 'keeps', 'keep')} up" == "2 threads keep up"
    assert ms(2450.0) == "2450 ms" and ms(0.0289) == "0.029 ms" and ms(12.34) == "12.3 ms"
