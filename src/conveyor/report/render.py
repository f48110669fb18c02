"""Markdown and HTML from one description of the report, so both always say the same."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conveyor.report.build import ReportData

COMMENT_MARKER = "<!-- conveyor-report -->"
"""Hidden first line of a pull-request comment, by which the next push finds and updates it."""


@dataclass
class _Section:
    title: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    text: str = ""
    image: str | None = None


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _delta(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:+.4g}" if value else "0"


def _short(value: Any) -> str:
    text = _num(value)
    return text[:12] if len(text) == 64 or text.endswith(".dir") else text  # digests: enough to tell apart


def _sections(report: ReportData, images: dict[str, str]) -> tuple[str, list[_Section]]:
    run = report.run
    mark = {"passed": "✅", "failed": "❌"}.get(run.status, "⚠️")
    started = datetime.fromtimestamp(run.started_at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    headline = (f"{mark} {report.project}: run {run.id} {run.status} · commit {(run.commit or '-')[:10]} · "
                f"branch {run.branch or '-'} · trigger {run.trigger} · {started}")
    sections: list[_Section] = []
    if run.error:
        sections.append(_Section("Why it failed", text=run.error))
    gates = _Section("Gates", ["gate", "actual", "required", "result"])
    gates.rows = [[str(g["gate"]), _num(g.get("actual")), str(g["required"]), "pass" if g["passed"] else "FAIL"]
                  for g in report.gates]
    if not gates.rows:
        gates.text = "No gates ran." if run.step("gates") is None else "No gates are configured."
    sections.append(gates)
    if report.candidate:
        title = f"Candidate {report.candidate} vs production {report.production or '(none yet)'}"
        metrics = _Section(title, ["metric", "candidate", "production", "delta"])
        metrics.rows = [[m.name, _num(m.candidate), _num(m.production), _delta(m.delta)] for m in report.metrics]
        sections.append(metrics)
        if report.production:
            params = _Section("Params changed", ["param", "production", "candidate"],
                              [[c.key, _num(c.production), _num(c.candidate)] for c in report.params])
            params.text = "" if params.rows else "None."
            data = _Section("Data and code changed", ["path", "production", "candidate"],
                            [[c.key, _short(c.production), _short(c.candidate)] for c in report.data])
            data.text = "" if data.rows else "None."
            sections += [params, data]
    steps = _Section("Steps", ["step", "status", "took", "summary"])
    steps.rows = [[s.name, s.status, f"{s.duration_s:.2f} s" if s.duration_s else "–", s.summary] for s in run.steps]
    sections.append(steps)
    for title, name in (("Metrics across versions", "history"), ("Confusion matrix", "confusion")):
        if name in images:
            sections.append(_Section(title, image=images[name]))
    return headline, sections


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown(report: ReportData, images: dict[str, str] | None = None, marker: bool = False) -> str:
    """The report as GitHub-flavoured Markdown; `images` maps plot kinds to relative file names."""
    headline, sections = _sections(report, images or {})
    lines = [COMMENT_MARKER] if marker else []
    lines += [f"### {headline}", ""]
    for section in sections:
        lines += [f"#### {section.title}", ""]
        if section.text:
            lines += [_md_cell(section.text), ""]
        if section.rows:
            lines.append("| " + " | ".join(section.header) + " |")
            lines.append("|" + "---|" * len(section.header))
            lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in section.rows]
            lines.append("")
        if section.image:
            lines += [f"![{section.title}]({section.image})", ""]
    return "\n".join(lines)


def to_html(report: ReportData, images: dict[str, str] | None = None) -> str:
    """The report as one self-contained HTML page (images are files beside it)."""
    headline, sections = _sections(report, images or {})
    esc = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(report.project)} · run {esc(report.run.id)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}</style>",
             "</head><body>", f"<h1>{esc(headline)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{esc(section.text)}</p>")
        if section.rows:
            parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in section.header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in section.rows]
            parts.append("</table>")
        if section.image:
            parts.append(f'<img src="{esc(section.image)}" alt="{esc(section.title)}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write(report: ReportData, out_dir: Path, fmt: str = "md", draw_plots: bool = True) -> Path:
    """Write `report.md` or `report.html`, with its PNG plots beside it, into `out_dir`; return the page."""
    from conveyor.report import plots
    from conveyor.store import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    if draw_plots:
        if plots.metric_history(report.history, out_dir / plots.METRIC_PLOT) is not None:
            images["history"] = plots.METRIC_PLOT
        if report.confusion_matrix is not None:
            plots.confusion_matrix(report.confusion_matrix, out_dir / plots.CONFUSION_PLOT)
            images["confusion"] = plots.CONFUSION_PLOT
    page = out_dir / ("report.html" if fmt == "html" else "report.md")
    atomic_write_text(page, to_html(report, images) if fmt == "html" else markdown(report, images))
    return page
