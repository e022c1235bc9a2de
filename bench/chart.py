"""Draw the benchmark table as an SVG chart: one panel per headline metric, a bar per library.

    .venv/bin/python bench/chart.py        # docs/benchmarks.md -> docs/img/benchmarks.svg

The input is the Markdown that ``report.render`` writes (the stored results: the raw records
under bench/.results/ are not kept), so the chart always shows the table beside it. Bars are
medians, whiskers the min–max of the repetitions; throughput panels are linear, latency and
CPU panels logarithmic (the peers span three orders of magnitude). Plain SVG text, no
dependency; the same table always gives the same bytes. ``make docs`` runs it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass
from xml.sax.saxutils import escape

from report import COLUMNS, METRICS, W4_IDEAL, Metric, _title, num

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The panels, in reading order: (workload, metric key, log scale).
PANELS = [
    ("w2", "rate", False),
    ("w5", "rate", False),
    ("w1", "rate", False),
    ("w1b", "rate", False),
    ("w4", "rate", False),
    ("w2", "cpu_us", True),
    ("w3", "start_p50", True),
    ("w3", "result_p50", True),
]

NAMES = {"conveyor": "Conveyor", "raw": "raw Redis"}
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
CONVEYOR, PEER, LIMIT, INK, GRID, MUTED = (
    "#3949ab",
    "#9e9e9e",
    "#b0bec5",
    "#212121",
    "#e0e0e0",
    "#616161",
)

# Layout, in pixels.
WIDTH, COLS, GAP, MARGIN = 960, 2, 32, 16
PANEL_W = (WIDTH - 2 * MARGIN - (COLS - 1) * GAP) // COLS
LABEL_W, VALUE_W, ROW_H, BAR_H, HEAD_H, AXIS_H = 76, 64, 20, 12, 46, 26
TOP = 78

_CELL = re.compile(r"^([\d.,]+k?) \(([\d.,]+k?)–([\d.,]+k?)\)(.*)$")


@dataclass(frozen=True)
class Bar:
    lib: str
    median: float
    low: float
    high: float
    flagged: bool  # † in the table: the figure stands, a result check failed (see the notes)


@dataclass(frozen=True)
class Panel:
    metric: Metric
    log: bool
    bars: list[Bar]
    missing: dict[str, list[str]]  # why -> the libraries without a figure (n/a, error)
    ratio: str  # the table's "Conveyor ÷ best peer", e.g. "9.79×", and the best peer
    ideal: float | None  # W4's ideal rate, drawn as a line


def number(text: str) -> float:
    text = text.replace(",", "")
    return float(text[:-1]) * 1000 if text.endswith("k") else float(text)


def read_table(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (by metric label) of the first table in ``markdown``."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| workload")), None)
    if start is None:
        raise SystemExit("chart: no benchmark table found (is this report.py's output?)")
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[0], {r[0]: r for r in rows[2:]}


def panels(markdown: str) -> list[Panel]:
    header, rows = read_table(markdown)
    where = {title: i for i, title in enumerate(header)}
    found = []
    for workload, key, log in PANELS:
        metric = next(m for m in METRICS if m.workload == workload and m.key == key)
        row = rows.get(metric.label)
        if row is None:
            continue  # a run of some workloads only (--workloads): draw what is there
        bars: list[Bar] = []
        missing: dict[str, list[str]] = {}
        for lib in COLUMNS:
            column = where.get(_title(lib))
            if column is None or column >= len(row):
                continue
            cell = _CELL.match(row[column])
            if cell is None:
                if lib != "raw" and row[column] not in ("", "—"):
                    missing.setdefault(row[column], []).append(NAMES.get(lib, lib))
                continue
            med, lo, hi, rest = cell.groups()
            bars.append(Bar(lib, number(med), number(lo), number(hi), "†" in rest))
        best = row[where["best peer"]] if "best peer" in where else ""
        ratio = row[where["Conveyor ÷ best peer"]] if "Conveyor ÷ best peer" in where else ""
        found.append(
            Panel(
                metric,
                log,
                _ordered(bars, metric.higher_better),
                missing,
                f"Conveyor ÷ best peer ({best.split(' ')[0]}): {ratio}" if best != "—" else "",
                W4_IDEAL if metric.limit == "ideal" else None,
            )
        )
    if not found:
        raise SystemExit("chart: the table has none of the charted metrics")
    return found


def _ordered(bars: list[Bar], higher_better: bool) -> list[Bar]:
    """Conveyor first, the raw limit second, then the peers best first."""
    head = [b for b in bars if b.lib in ("conveyor", "raw")]
    rest = sorted((b for b in bars if b.lib not in NAMES), key=lambda b: b.median)
    return head + (rest[::-1] if higher_better else rest)


class Scale:
    """Maps a value to x in [0, width]: linear from 0, or logarithmic over whole decades."""

    def __init__(self, values: list[float], width: float, log: bool) -> None:
        self.width, self.log = width, log
        if log:
            self.lo = 10.0 ** math.floor(math.log10(min(values)))
            self.hi = 10.0 ** math.ceil(math.log10(max(values)))
            if self.hi <= self.lo:
                self.hi = self.lo * 10
        else:
            self.lo, self.hi = 0.0, _nice_top(max(values))

    def x(self, value: float) -> float:
        if self.log:
            span = math.log10(self.hi) - math.log10(self.lo)
            return self.width * (math.log10(max(value, self.lo)) - math.log10(self.lo)) / span
        return self.width * value / self.hi

    def ticks(self) -> list[float]:
        if self.log:
            decades = round(math.log10(self.hi / self.lo))
            return [self.lo * 10**i for i in range(decades + 1)]
        step = _nice_top(self.hi / 5)
        return [step * i for i in range(int(self.hi / step + 1e-9) + 1)]


def _nice_top(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10^n at or above ``value``."""
    power = 10.0 ** math.floor(math.log10(value))
    return next(f * power for f in (1, 2, 2.5, 5, 10) if f * power >= value)


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _text(x: float, y: float, text: str, **attrs: str) -> str:
    extra = "".join(f' {k.rstrip("_").replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(text)}</text>'


def draw_panel(p: Panel, x0: float, y0: float) -> tuple[list[str], float]:
    """The panel's SVG elements, and its height."""
    plot_x, plot_w = x0 + LABEL_W, PANEL_W - LABEL_W - VALUE_W
    values = [b.high for b in p.bars] + [b.low for b in p.bars] + ([p.ideal] if p.ideal else [])
    scale = Scale(values, plot_w, p.log)
    better = "higher is better" if p.metric.higher_better else "lower is better"
    axis = f"{better}; log scale" if p.log else better
    out = [
        _text(x0, y0 + 14, p.metric.label, font_size="14", font_weight="600", fill=INK),
        _text(x0, y0 + 32, f"{axis}. {p.ratio}" if p.ratio else axis, font_size="11.5", fill=MUTED),
    ]
    top = y0 + HEAD_H
    bottom = top + ROW_H * len(p.bars)
    for tick in scale.ticks():
        tx = plot_x + scale.x(tick)
        out.append(
            f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{bottom}" '
            f'stroke="{GRID}" stroke-width="1"/>'
        )
        out.append(
            _text(
                tx,
                bottom + 14,
                _tick_label(tick),
                font_size="10.5",
                fill=MUTED,
                text_anchor="middle",
            )
        )
    for i, bar in enumerate(p.bars):
        cy = top + ROW_H * i + ROW_H / 2
        colour = {"conveyor": CONVEYOR, "raw": LIMIT}.get(bar.lib, PEER)
        weight = "600" if bar.lib == "conveyor" else "400"
        name = NAMES.get(bar.lib, bar.lib)
        out.append(
            _text(
                plot_x - 8,
                cy + 4,
                name,
                font_size="12",
                fill=INK,
                text_anchor="end",
                font_weight=weight,
            )
        )
        width = max(scale.x(bar.median), 1.0)
        out.append(
            f'<rect x="{plot_x:.1f}" y="{cy - BAR_H / 2:.1f}" width="{width:.1f}" '
            f'height="{BAR_H}" fill="{colour}" rx="1.5"><title>{escape(name)}: '
            f"{num(bar.median)} ({num(bar.low)}–{num(bar.high)})</title></rect>"
        )
        lo, hi = plot_x + scale.x(bar.low), plot_x + scale.x(bar.high)
        if hi - lo >= 1:
            out.append(
                f'<path d="M{lo:.1f} {cy:.1f}H{hi:.1f}M{lo:.1f} {cy - 3:.1f}V{cy + 3:.1f}'
                f'M{hi:.1f} {cy - 3:.1f}V{cy + 3:.1f}" stroke="{INK}" '
                f'stroke-width="1" fill="none"/>'
            )
        label = num(bar.median) + (" †" if bar.flagged else "")
        out.append(
            _text(
                max(plot_x + width, hi) + 5,
                cy + 4,
                label,
                font_size="11.5",
                fill=INK,
                font_weight=weight,
            )
        )
    if p.ideal is not None:
        ix = plot_x + scale.x(p.ideal)
        out.append(
            f'<line x1="{ix:.1f}" y1="{top - 6}" x2="{ix:.1f}" y2="{bottom}" '
            f'stroke="{INK}" stroke-width="1.2" stroke-dasharray="4 3"/>'
        )
        out.append(
            _text(
                ix, top - 9, f"ideal {num(p.ideal)}", font_size="10.5", fill=INK, text_anchor="end"
            )
        )
    height = bottom + AXIS_H - y0
    if p.missing:
        why = "; ".join(f"{status}: {', '.join(libs)}" for status, libs in p.missing.items())
        out.append(_text(x0, bottom + 32, why, font_size="10.5", fill=MUTED))
        height += 12
    return out, height


def render(markdown: str) -> str:
    """The SVG chart of a report's table."""
    run = re.search(r"^Run: ([^;]*)", markdown, re.M)
    machine = re.search(r"^- CPU: ([^;]*)", markdown, re.M)
    started = re.search(r"^- Started ([^,]*)", markdown, re.M)
    facts = " · ".join(m.group(1).replace("**", "") for m in (run, machine, started) if m)
    body: list[str] = []
    y = float(TOP)
    found = panels(markdown)
    for row in range(0, len(found), COLS):
        heights = []
        for col, panel in enumerate(found[row : row + COLS]):
            elements, height = draw_panel(panel, MARGIN + col * (PANEL_W + GAP), y)
            body += elements
            heights.append(height)
        y += max(heights) + 22
    height = round(y + 4)
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="{FONT}" role="img" '
        'aria-labelledby="chart-title">',
        '<title id="chart-title">Conveyor and its peers: benchmark medians, one run</title>',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        _text(
            MARGIN,
            32,
            "Conveyor and its peers, one run on one machine",
            font_size="19",
            font_weight="600",
            fill=INK,
        ),
        _text(
            MARGIN,
            54,
            "Bars: the median of the repetitions; whiskers: min–max; † a result "
            "check failed (see the notes under the table).",
            font_size="12",
            fill=MUTED,
        ),
    ]
    if facts:
        head.append(
            _text(
                MARGIN,
                70,
                f"Run: {facts} · the table: docs/benchmarks.md",
                font_size="11",
                fill=MUTED,
            )
        )
    return "\n".join([*head, *body, "</svg>", ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "benchmarks.svg"))
    args = p.parse_args(argv)
    write(args.source, args.out)
    return 0


def write(source: str, out: str) -> None:
    """Draw the report at ``source`` into the SVG file ``out``."""
    with open(source, encoding="utf-8") as f:
        svg = render(f.read())
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(svg)


if __name__ == "__main__":
    sys.exit(main())
