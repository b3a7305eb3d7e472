"""Readable data-quality docs (Markdown and a static HTML page), a JSON summary and MLflow metrics.

GX's own Data Docs need a file-backed context and a site builder; our results dicts are small, so we
render them ourselves: one table per suite, an expectation per row, pass/fail and counts. Row keys are
left out of the docs on purpose (they are in the quarantine table); the docs are logged to MLflow.
"""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Mapping, Sequence
from typing import Any

_COLUMNS = ("expectation", "column", "result", "unexpected", "checked", "reason code")


def _row(entry: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        entry["expectation_type"],
        entry["column"] or "—",
        "pass" if entry["success"] else "FAIL",
        str(entry["unexpected_count"]),
        "" if entry.get("element_count") is None else str(entry["element_count"]),
        "" if entry["success"] else entry["reason_code"],
    )


def _verdict(results: Mapping[str, Any]) -> str:
    if results["table_failed"]:
        return "STOP (table-level expectation failed)"
    if not results["within_threshold"]:
        return "STOP (failed fraction over threshold)"
    return "pass" if results["success"] else "pass with quarantined rows"


def summary(all_results: Sequence[Mapping[str, Any]], quarantined_items: int | None = None) -> dict[str, Any]:
    """Suite-level numbers without row keys (saved as JSON and logged as an MLflow artifact)."""
    suites = {
        r["suite"]: {
            "rows_checked": r["rows_checked"],
            "rows_failed": r["rows_failed"],
            "failed_fraction": r["failed_fraction"],
            "max_failed_fraction": r["max_failed_fraction"],
            "success": r["success"],
            "table_failed": r["table_failed"],
            "within_threshold": r["within_threshold"],
            "verdict": _verdict(r),
            "expectations_evaluated": len(r["expectations"]),
            "expectations_failed": sum(not e["success"] for e in r["expectations"]),
            "failed_expectations": [
                {k: e[k] for k in ("expectation_type", "column", "unexpected_count", "reason_code")}
                for e in r["expectations"]
                if not e["success"]
            ],
        }
        for r in all_results
    }
    out = {"passed": all(s["within_threshold"] for s in suites.values()), "suites": suites}
    if quarantined_items is not None:
        out["quarantined_items"] = int(quarantined_items)
    return out


def metrics(all_results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """`{suite.metric: {"value", "step"}}` as `MlflowMetricsHistoryDataset` expects."""
    out: dict[str, dict[str, float]] = {}
    for r in all_results:
        values = {
            "rows_checked": r["rows_checked"],
            "rows_failed": r["rows_failed"],
            "failed_fraction": r["failed_fraction"],
            "success": float(r["success"]),
            "within_threshold": float(r["within_threshold"]),
            "expectations_failed": sum(not e["success"] for e in r["expectations"]),
        }
        out.update({f"{r['suite']}.{name}": {"value": float(v), "step": 0} for name, v in values.items()})
    return out


def render_markdown(all_results: Sequence[Mapping[str, Any]], title: str = "Data quality") -> str:
    lines = [f"# {title}", "", f"Generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}.", ""]
    lines += ["| suite | rows checked | rows failed | failed fraction | allowed | verdict |", "|---|---|---|---|---|---|"]
    for r in all_results:
        lines.append(
            f"| {r['suite']} | {r['rows_checked']} | {r['rows_failed']} | {r['failed_fraction']:.3f} | "
            f"{r['max_failed_fraction']:.3f} | {_verdict(r)} |"
        )
    for r in all_results:
        lines += ["", f"## {r['suite']} (key: `{r['key']}`)", ""]
        lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        for entry in r["expectations"]:
            cells = [c.replace("|", "\\|") for c in _row(entry)]
            cells[0] = f"`{cells[0]}`"
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_CSS = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f2f2f2}"
    ".pass{color:#17692b}.fail{color:#b00020;font-weight:bold}code{font-size:90%}"
)


def _cell(text: str, tag: str = "td") -> str:
    css = ' class="fail"' if text == "FAIL" or text.startswith("STOP") else (' class="pass"' if text.startswith("pass") else "")
    return f"<{tag}{css}>{html.escape(text)}</{tag}>"


def render_html(all_results: Sequence[Mapping[str, Any]], title: str = "Data quality") -> str:
    """A self-contained static page (no scripts, no external assets)."""
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>',
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}.</p>",
        "<table><tr>" + "".join(_cell(h, "th") for h in ("suite", "rows checked", "rows failed", "failed fraction", "allowed", "verdict")) + "</tr>",
    ]
    for r in all_results:
        cells = (r["suite"], str(r["rows_checked"]), str(r["rows_failed"]), f"{r['failed_fraction']:.3f}", f"{r['max_failed_fraction']:.3f}", _verdict(r))
        parts.append("<tr>" + "".join(_cell(c) for c in cells) + "</tr>")
    parts.append("</table>")
    for r in all_results:
        parts.append(f"<h2>{html.escape(r['suite'])} <small>(key: <code>{html.escape(r['key'])}</code>)</small></h2>")
        parts.append("<table><tr>" + "".join(_cell(h, "th") for h in _COLUMNS) + "</tr>")
        for entry in r["expectations"]:
            parts.append("<tr>" + "".join(_cell(c) for c in _row(entry)) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
