"""A throughput-vs-latency plot as a hand-written SVG (no plotting library).

Both axes are logarithmic: the systems compared differ by an order of
magnitude or more. Each series is a line through its sweep's points, each point
labelled with its concurrency.
"""
from __future__ import annotations

import math
from html import escape

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** exp
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def throughput_latency_svg(series: list[dict], title: str, subtitle: str = "",
                           width: int = 860, height: int = 520) -> str:
    """series: [{"name": str, "points": [(ops_s, latency_ms, label), ...], "dashed": bool}]."""
    pts = [(x, y) for s in series for x, y, _ in s["points"] if x > 0 and y > 0]
    left, right, top, bottom = 80, 215, 60, 60
    pw, ph = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="24" font-size="16" font-weight="bold">{escape(title)}</text>',
           f'<text x="{left}" y="42" fill="#555">{escape(subtitle)}</text>']
    if not pts:
        out.append(f'<text x="{left}" y="{top + 40}">no data</text></svg>')
        return "\n".join(out)
    xlo, xhi = min(p[0] for p in pts), max(p[0] for p in pts)
    ylo, yhi = min(p[1] for p in pts), max(p[1] for p in pts)
    xlo, xhi = 10 ** math.floor(math.log10(xlo)), 10 ** math.ceil(math.log10(xhi * 1.0001))
    ylo, yhi = 10 ** math.floor(math.log10(ylo)), 10 ** math.ceil(math.log10(yhi * 1.0001))

    def sx(v: float) -> float:
        return left + pw * (math.log10(v) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo))

    def sy(v: float) -> float:
        return top + ph - ph * (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    for v in _log_ticks(xlo, xhi):
        x = sx(v)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{_fmt(v)}</text>')
    for v in _log_ticks(ylo, yhi):
        y = sy(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 18}" text-anchor="middle">'
               f'throughput (operations/s, log)</text>')
    out.append(f'<text transform="translate(22,{top + ph / 2}) rotate(-90)" text-anchor="middle">'
               f'latency (ms, log)</text>')
    for i, s in enumerate(series):
        color = s.get("color") or COLORS[i % len(COLORS)]
        good = [(x, y, lab) for x, y, lab in s["points"] if x > 0 and y > 0]
        if not good:
            continue
        dash = ' stroke-dasharray="6,4"' if s.get("dashed") else ""
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in good)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for x, y, lab in good:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{color}"/>')
            if lab:
                near_right = sx(x) > left + pw - 70
                tx, anchor = (sx(x) - 5, "end") if near_right else (sx(x) + 5, "start")
                out.append(f'<text x="{tx:.1f}" y="{sy(y) - 5:.1f}" fill="{color}" font-size="10" '
                           f'text-anchor="{anchor}">{escape(str(lab))}</text>')
        ly = top + 16 + 20 * i
        out.append(f'<line x1="{left + pw + 14}" y1="{ly - 4}" x2="{left + pw + 38}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{left + pw + 44}" y="{ly}">{escape(s["name"])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
