"""Charts as SVG drawn on the server: one metric across a model's versions, production marked.

SVG in the page needs no script and no chart library, prints and scales, and
passes a Content-Security-Policy that allows no inline style: everything is
presentation attributes and CSS classes from the dashboard's stylesheet.
"""

from __future__ import annotations

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 200
"""Size of a chart, in SVG user units (it scales with the page)."""

_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 16, 28

POINT_LINKS_UP_TO = 300
"""Up to this many versions each gets a clickable dot; past it, the line and the production mark only."""


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def metric_chart(name: str, metric: str, series: list[tuple[int, float]], production: int | None) -> Markup:
    """An SVG line chart of `metric` over versions (oldest first), the production version marked and labelled."""
    if not series:
        return Markup("")
    values = [value for _, value in series]
    low, high = min(values), max(values)
    if high == low:
        low, high = low - (abs(low) * 0.05 or 0.5), high + (abs(high) * 0.05 or 0.5)
    first, last = series[0][0], series[-1][0]
    span_x = max(1, last - first)
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def x(version: int) -> float:
        return _LEFT + (version - first) / span_x * plot_w if last != first else _LEFT + plot_w / 2

    def y(value: float) -> float:
        return _TOP + (high - value) / (high - low) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(metric)} of {escape(name)} across versions" data-metric="{escape(metric)}">',
        f"<title>{escape(metric)} of {escape(name)} across versions</title>",
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{WIDTH - _RIGHT}" y2="{_TOP + plot_h}"/>',
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}"/>',
        f'<text class="tick" x="{_LEFT - 6}" y="{_TOP + 4}" text-anchor="end">{_fmt(high)}</text>',
        f'<text class="tick" x="{_LEFT - 6}" y="{_TOP + plot_h}" text-anchor="end">{_fmt(low)}</text>',
        f'<text class="tick" x="{_LEFT}" y="{HEIGHT - 8}">v{first}</text>',
        f'<text class="tick" x="{WIDTH - _RIGHT}" y="{HEIGHT - 8}" text-anchor="end">v{last}</text>',
    ]
    points = " ".join(f"{x(v):.1f},{y(value):.1f}" for v, value in series)
    parts.append(f'<polyline class="series" fill="none" points="{points}"/>')
    if len(series) <= POINT_LINKS_UP_TO:
        for v, value in series:
            parts.append(f'<a href="/models/{escape(name)}/{v}"><circle class="point" cx="{x(v):.1f}" '
                         f'cy="{y(value):.1f}" r="4"><title>v{v}: {_fmt(value)}</title></circle></a>')
    for v, value in series:
        if v == production:
            anchor = "end" if x(v) > WIDTH / 2 else "start"
            dx = -8 if anchor == "end" else 8
            parts.append(f'<a href="/models/{escape(name)}/{v}" class="production-mark">'
                         f'<circle class="production" cx="{x(v):.1f}" cy="{y(value):.1f}" r="7">'
                         f"<title>production: v{v}: {_fmt(value)}</title></circle>"
                         f'<text class="production-label" x="{x(v) + dx:.1f}" y="{max(_TOP + 10, y(value) - 10):.1f}" '
                         f'text-anchor="{anchor}">production v{v}: {_fmt(value)}</text></a>')
    parts.append("</svg>")
    return Markup("".join(parts))
