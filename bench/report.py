"""Turn the run's records into one Markdown table (median, min–max, ratios, targets)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

# The peers of each backend (run.py --backend), in the order of their columns.
PEERS = {
    "redis": ["celery", "rq", "dramatiq", "huey", "arq", "saq", "taskiq", "streaq"],
    "postgres": ["procrastinate", "pgqueuer", "saq"],
    "rabbitmq": ["celery", "dramatiq"],
}
COLUMNS = ["conveyor", "raw", *PEERS["redis"]]  # the Redis table's, which chart.py draws
BACKEND_NAMES = {"redis": "Redis", "postgres": "PostgreSQL", "rabbitmq": "RabbitMQ"}
# Conveyor set up otherwise (bench/conveyor_runner.py): a column each when they ran, and a
# table of their ratios to plain Conveyor.
VARIANTS = ["conveyor-noevents", "conveyor-prometheus", "conveyor-classic"]
W4_IDEAL = 5000.0  # 50 slots x 100 jobs/s each (10 ms jobs)
# What follows this line in docs/benchmarks.md is written by other scripts: a run of
# bench/run.py on Redis writes the page's head and keeps it.
KEPT = "<!-- Below: figures of other bench/ scripts, kept as they are by bench/run.py. -->"


@dataclass(frozen=True)
class Metric:
    workload: str
    key: str
    label: str
    higher_better: bool = True
    limit: str = ""  # "raw": the raw Redis row; "ideal": W4's 5,000/s
    target: str = ""
    # target check: (conveyor, best peer, limit) -> met?
    check: Callable[[float, float | None, float | None], bool] | None = None


def _ratio_ok(best_min: float | None = None, limit_min: float | None = None) -> Any:
    def check(c: float, best: float | None, limit: float | None) -> bool:
        ok = True
        if best_min is not None:
            ok = ok and best is not None and c / best >= best_min
        if limit_min is not None:
            ok = ok and limit is not None and c / limit >= limit_min
        return ok

    return check


def _at_most(ms: float) -> Any:
    return lambda c, _best, _limit: c <= ms


METRICS = [
    Metric("w1", "rate", "W1 enqueue, one at a time (jobs/s)", limit="raw",
           target="≥ 0.8 × raw, ≥ 2 × best peer", check=_ratio_ok(2, 0.8)),
    Metric("w1b", "rate", "W1b bulk enqueue (jobs/s)", limit="raw",
           target="≥ 0.6 × raw, ≥ 5 × best peer", check=_ratio_ok(5, 0.6)),
    Metric("w2", "rate", "W2 drain, no-op, 1 worker process (jobs/s)", limit="raw",
           target="≥ 10 × best peer, ≥ 0.25 × raw", check=_ratio_ok(10, 0.25)),
    Metric("w2", "cpu_us", "W2 worker CPU per job (µs)", higher_better=False),
    Metric("w2", "rss_mb", "W2 worker peak RSS (MB)", higher_better=False),
    Metric("w3", "start_p50", "W3 enqueue→start p50 (ms)", False, target="≤ 1 ms",
           check=_at_most(1)),
    Metric("w3", "start_p95", "W3 enqueue→start p95 (ms)", False),
    Metric("w3", "start_p99", "W3 enqueue→start p99 (ms)", False, target="≤ 5 ms",
           check=_at_most(5)),
    Metric("w3", "result_p50", "W3 enqueue→result in caller p50 (ms)", False,
           target="≤ 2 ms", check=_at_most(2)),
    Metric("w3", "result_p95", "W3 enqueue→result in caller p95 (ms)", False),
    Metric("w3", "result_p99", "W3 enqueue→result in caller p99 (ms)", False),
    Metric("w4", "rate", "W4 I/O-bound, 10 ms sleeps, 50 slots (jobs/s)", limit="ideal",
           target="≥ 0.95 × ideal", check=_ratio_ok(None, 0.95)),
    Metric("w5", "rate", "W5 drain on SQLite (jobs/s)",
           target="≥ 5 × Huey SqliteHuey", check=_ratio_ok(5, None)),
    Metric("w5", "cpu_us", "W5 worker CPU per job (µs)", higher_better=False),
    Metric("w2-io", "rate", "W2-io drain, one Redis round trip per job, 1 worker process, "
           "each at its best concurrency (jobs/s)", target="≥ 2 × best peer",
           check=_ratio_ok(2, None)),
    Metric("w2-io", "cpu_us", "W2-io worker CPU per job (µs)", higher_better=False),
    Metric("w2-io-2p", "rate", "W2-io with each peer at 2 worker processes, Conveyor at 1 "
           "(jobs/s)"),
    Metric("w2-io-2p", "cpu_us", "W2-io, 2 peer processes: CPU per job, all worker "
           "processes (µs)", higher_better=False),
    Metric("w4-io", "rate", "W4-io 50 slots, each job waits 10 ms on a socket (jobs/s)",
           limit="ideal", target="≥ 0.9 × ideal", check=_ratio_ok(None, 0.9)),
    Metric("w4-io-async", "rate", "W4-io with Conveyor's async pool (jobs/s)", limit="ideal",
           target="≥ 0.9 × ideal", check=_ratio_ok(None, 0.9)),
    Metric("startup", "startup_ms", "Start-up: worker spawn → first job started (ms)",
           higher_better=False, target="≤ 100 ms", check=_at_most(100)),
    Metric("startup", "startup_cpu_ms", "Start-up: CPU used until the first job started (ms)",
           higher_better=False),
]  # fmt: skip

# On another backend, the same rows with that backend's goals (none where it names none);
# there is no raw limit there.
GOALS = {
    "postgres": {
        ("w2", "rate"): ("≥ 5 × best peer", _ratio_ok(5, None)),
        ("w3", "start_p50"): ("≤ 5 ms", _at_most(5)),
    },
    "rabbitmq": {
        ("w2", "rate"): ("≥ 5 × best peer", _ratio_ok(5, None)),
        ("w3", "start_p50"): ("≤ 2 ms", _at_most(2)),
    },
}


def metrics_for(backend: str) -> list[Metric]:
    if backend == "redis":
        return METRICS
    goals = GOALS.get(backend, {})
    out = []
    for m in METRICS:
        target, check = goals.get((m.workload, m.key), ("", None))
        limit = "ideal" if m.limit == "ideal" else ""
        out.append(replace(m, limit=limit, target=target, check=check))
    return out


class Cells:
    """Per (workload, key, lib): the values over repetitions, or why there are none."""

    def __init__(self, records: list[dict[str, Any]], backend: str = "redis") -> None:
        self.records = records
        self.backend = backend
        self.peers = PEERS[backend]
        self.metrics = metrics_for(backend)

    def values(self, m: Metric, lib: str) -> list[float]:
        return [
            float(r[m.key])
            for r in self.records
            if r["workload"] == m.workload and r["lib"] == lib and r.get(m.key) is not None
        ]

    def median(self, m: Metric, lib: str) -> float | None:
        vals = self.values(m, lib)
        return statistics.median(vals) if vals else None

    def status(self, m: Metric, lib: str) -> str:
        runs = [r for r in self.records if r["workload"] == m.workload and r["lib"] == lib]
        if not runs:
            return "—"
        if any("error" in r for r in runs):
            return "error" if all("error" in r for r in runs) else "partial"
        if any("na" in r for r in runs):
            return "n/a"
        return "—"

    def cell(self, m: Metric, lib: str) -> str:
        vals = self.values(m, lib)
        if not vals:
            return self.status(m, lib)
        text = f"{num(statistics.median(vals))} ({num(min(vals))}–{num(max(vals))})"
        runs = [r for r in self.records if r["workload"] == m.workload and r["lib"] == lib]
        errors = sum(1 for r in runs if "error" in r)
        flagged = any(r.get("problem") for r in runs)
        return text + (f" +{errors} failed" if errors else "") + (" †" if flagged else "")


def wname(workload: str) -> str:
    return "W" + workload[1:] if workload[:1] == "w" else workload  # w2-io -> W2-io


def num(v: float) -> str:
    if v >= 100_000:
        return f"{v / 1000:.0f}k"
    if v >= 10_000:
        return f"{v / 1000:.1f}k"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def best_peer(cells: Cells, m: Metric) -> tuple[str, float] | None:
    found = [(lib, v) for lib in cells.peers if (v := cells.median(m, lib)) is not None]
    if not found:
        return None
    pick = max if m.higher_better else min
    return pick(found, key=lambda x: x[1])


def limit_of(cells: Cells, m: Metric) -> float | None:
    if m.limit == "raw":
        return cells.median(m, "raw")
    if m.limit == "ideal":
        return W4_IDEAL
    return None


def columns(records: list[dict[str, Any]], backend: str = "redis") -> list[str]:
    """Conveyor, the variants that ran beside it, the raw limit (Redis) and the peers."""
    ran = {r["lib"] for r in records}
    limit = ["raw"] if backend == "redis" else []
    return ["conveyor", *[v for v in VARIANTS if v in ran], *limit, *PEERS[backend]]


def table(cells: Cells) -> list[str]:
    shown = columns(cells.records, cells.backend)
    head = ["workload / metric", *[_title(c) for c in shown], "best peer",
            "Conveyor ÷ best peer", "Conveyor ÷ limit", "target", "met"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ran = {r["workload"] for r in cells.records}
    for m in cells.metrics:
        if m.workload not in ran:  # a run of some workloads only (--workloads)
            continue
        row = [m.label]
        for lib in shown:
            if lib == "raw" and m.limit == "ideal" and not cells.values(m, "raw"):
                row.append(f"ideal {num(W4_IDEAL)}")
            else:
                row.append(cells.cell(m, lib))
        conv = cells.median(m, "conveyor")
        best = best_peer(cells, m)
        limit = limit_of(cells, m)
        row.append(f"{best[0]} {num(best[1])}" if best else "—")
        row.append(f"{conv / best[1]:.2f}×" if conv is not None and best and best[1] else "—")
        row.append(f"{conv / limit:.2f}×" if conv is not None and limit else "—")
        row.append(m.target or "")
        if m.check is None:
            met = ""
        elif conv is None:
            met = "no data"
        else:
            met = "yes" if m.check(conv, best[1] if best else None, limit) else "**no**"
        row.append(met)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _title(lib: str) -> str:
    return {"conveyor": "**Conveyor**", "raw": "raw Redis limit"}.get(lib, lib)


def notes(records: list[dict[str, Any]]) -> list[str]:
    """Why a cell is n/a or failed, once per (library, workload, reason)."""
    seen: dict[tuple[str, str, str], int] = {}
    for r in records:
        if "na" in r:
            key = (r["lib"], r["workload"], "n/a: " + r["na"])
        elif "error" in r:
            key = (r["lib"], r["workload"], "failed: " + r["error"].splitlines()[0][:200])
        elif r.get("problem"):
            key = (r["lib"], r["workload"], "† " + r["problem"][:300])
        elif r.get("result_na"):
            key = (r["lib"], r["workload"], "enqueue→result n/a: " + r["result_na"])
        else:
            continue
        seen[key] = seen.get(key, 0) + 1
    return [
        f"- {lib} {wname(w)}: {why}" + (f" ({k} runs)" if k > 1 else "")
        for (lib, w, why), k in sorted(seen.items())
    ]


def versions(records: list[dict[str, Any]], backend: str = "redis") -> list[str]:
    lines = [
        "| library | version | database client and speedups in its environment |",
        "|---|---|---|",
    ]
    for lib in columns(records, backend):
        found = next((r["versions"] for r in records if r["lib"] == lib and "versions" in r), None)
        if found is None:
            failed = next((r["error"] for r in records if r["lib"] == lib and "error" in r), "")
            lines.append(f"| {lib} | not run | {failed[:120]} |")
            continue
        dist = "redis" if lib == "raw" else "conveyor" if lib.startswith("conveyor") else lib
        own = found.get(dist, "?")
        rest = ", ".join(f"{k} {v}" for k, v in found.items() if k != dist)
        lines.append(f"| {lib} | {own} | {rest} |")
    return lines


def variants(cells: Cells) -> list[str]:
    """Each variant's medians beside plain Conveyor's, and their ratio to it."""
    ran = [v for v in VARIANTS if v in {r["lib"] for r in cells.records}]
    rows = []
    for m in cells.metrics:
        base = cells.median(m, "conveyor")
        found = [(v, cells.median(m, v)) for v in ran]
        if not any(x is not None for _, x in found):
            continue
        row = [m.label, num(base) if base is not None else cells.status(m, "conveyor")]
        for v, x in found:
            if x is None:
                row.append(cells.status(m, v))
            else:
                row.append(num(x) + (f" ({x / base:.2f}×)" if base else ""))
        rows.append("| " + " | ".join(row) + " |")
    if not rows:
        return []
    return [
        "## Conveyor's variants beside plain Conveyor",
        "",
        "Plain `conveyor` has events on and no middleware; `conveyor-noevents` is "
        "`Conveyor(events=False)`; `conveyor-prometheus` has `PrometheusMiddleware` and its "
        "worker serves `--metrics-port` (not scraped during the run); `conveyor-classic` "
        "(RabbitMQ) has classic queues instead of quorum ones. Medians; in brackets "
        "the ratio to plain Conveyor's median.",
        "",
        "| workload / metric | conveyor | " + " | ".join(ran) + " |",
        "|" + "---|" * (len(ran) + 2),
        *rows,
        "",
    ]


def soak(records: list[dict[str, Any]]) -> list[str]:
    """RSS of one Conveyor worker along a long run (``run.py --soak N``)."""
    runs = [r for r in records if r["workload"] == "soak" and r.get("rss_curve")]
    if not runs:
        return []
    out = [
        "## Soak: Conveyor worker memory over a long run",
        "",
        "| run | jobs | jobs/s | CPU µs/job | RSS at 5% | 25% | 50% | 75% | 100% "
        "| growth 5%→100% |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        curve = r["rss_curve"]
        at = [curve[min(len(curve) - 1, round(len(curve) * f) - 1)][1] for f in
              (0.05, 0.25, 0.5, 0.75, 1.0)]  # fmt: skip
        cells = " | ".join(f"{mb:.1f} MB" for mb in at)
        out.append(
            f"| {r['rep'] + 1} | {curve[-1][0]:,} | {num(r['rate'])} | {r['cpu_us']:.0f} | "
            f"{cells} | {at[-1] - at[0]:+.1f} MB |"
        )
    return [*out, ""]


def busy_range(records: list[dict[str, Any]], threshold: float) -> str:
    busy = sorted(r["busy"] for r in records if "busy" in r)
    if not busy:
        return "not recorded"
    over = sum(1 for b in busy if b > threshold)
    return (
        f"median {statistics.median(busy):.0%}, max {busy[-1]:.0%}; "
        f"{over} of {len(busy)} runs started above {threshold:.0%}"
    )


def load_range(records: list[dict[str, Any]]) -> str:
    loads = sorted(r["load1"] for r in records if "load1" in r)
    if not loads:
        return "not recorded"
    by_rep: dict[int, list[float]] = {}
    for r in records:
        if "load1" in r:
            by_rep.setdefault(r["rep"], []).append(r["load1"])
    reps = ", ".join(
        f"rep {rep + 1} median {statistics.median(v):.2f} (max {max(v):.2f})"
        for rep, v in sorted(by_rep.items())
    )
    return f"median {statistics.median(loads):.2f}, max {loads[-1]:.2f}; {reps}"


def bare_loop(cells: Cells) -> list[str]:
    """W4-io's raw cells: the same requests from 50 bare threads or tasks and no queue
    (``raw.py``), and Conveyor against them, when they ran."""
    found = []
    for m in METRICS:
        if m.workload.startswith("w4-io") and m.key == "rate":
            bare, conv = cells.median(m, "raw"), cells.median(m, "conveyor")
            if bare and conv:
                found.append(f"{wname(m.workload)} {conv / bare:.2f}× (bare {num(bare)} jobs/s)")
    if not found:
        return []
    return [
        "W4-io's raw cell is no queue at all: the same requests to the delay server from 50 "
        "bare threads (W4-io-async: 50 asyncio tasks), what 50 waiters reach on this machine. "
        f"Conveyor ÷ that bare loop: {'; '.join(found)}.",
        "",
    ]


def render(records: list[dict[str, Any]], meta: dict[str, Any], chart: str = "") -> str:
    """The report; ``chart`` is the relative path of its SVG chart (``chart.py``), if any.
    Another backend than Redis (``meta["backend"]``) makes a section of the page: its
    headings one level down."""
    backend = meta.get("backend", "redis")
    cells = Cells(records, backend)
    la, lb = meta["load_before"], meta["load_after"]
    gate = meta.get("gate", (0.0, 0.0, 0.0))
    sizes = ", ".join(f"{wname(k)} {v:,}" for k, v in meta["sizes"].items())
    title = "# Benchmarks" if backend == "redis" else f"# On {BACKEND_NAMES[backend]}"
    out = [
        title,
        "",
        "Written by `bench/run.py`; how each figure is measured is in `bench/README.md`.",
        f"Run: **{meta['mode']}**, {meta['reps']} repetitions per cell, interleaved; each cell "
        "is the median (min–max). Higher is better for jobs/s, lower for ms, µs and MB.",
        "",
        *([f"![The table's headline figures as a chart]({chart})", ""] if chart else []),
        *table(cells),
        "",
        "Conveyor ÷ limit: ÷ the raw Redis row (W1, W1b, W2) or ÷ the ideal 5,000 jobs/s "
        "(W4, W4-io)."
        if backend == "redis"
        else "Conveyor ÷ limit: ÷ the ideal 5,000 jobs/s (W4).",
        "",
        *bare_loop(cells),
    ]
    if note_lines := notes(records):
        out += ["Notes on cells (n/a, failures, † marks):", "", *note_lines, ""]
    out += variants(cells)
    out += soak(records)
    out += [
        "## Machine",
        "",
        f"- CPU: {meta['cpu']}, {meta['cores']} cores; RAM {meta['ram']}; {meta['os']}",
        f"- Python: {meta['python']}; {meta['server']}",
        f"- {meta['rtt_what']}: {meta['rtt'][0]:.3f} ms back to back, "
        f"{meta['rtt'][1]:.3f} ms after 20 ms idle (the cost of waking sleeping processes, "
        "which every W3 hop pays)",
        f"- Load average (1/5/15 min): {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} before, "
        f"{lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f} after; 1-min load at the start of each "
        f"run: {load_range(records)}",
        f"- Quiet gate: each run waited until the machine's CPUs were at most "
        f"{gate[0]:.0%} busy (total waiting {gate[1]:.0f} s of a {gate[2]:.0f} s budget); "
        f"CPU busy at the start of the runs: {busy_range(records, gate[0])}",
        f"- Started {meta['started']}, took {meta['minutes']:.1f} min; Conveyor at "
        f"{meta['commit']}",
        f"- Sizes: {sizes}",
        f"- Command: `{meta['command']}`",
        "",
        "## Versions",
        "",
        *versions(records, backend),
        "",
    ]
    if backend != "redis":
        out = [f"#{line}" if line.startswith("#") else line for line in out]
    return "\n".join(out)


def with_section(old: str, name: str, text: str) -> str:
    """The page ``old`` with the section ``name`` (between its markers) replaced by
    ``text``, or added right after ``KEPT`` (a run of ``bench/run.py`` keeps it)."""
    begin, end = f"<!-- {name}: from here -->", f"<!-- {name}: to here -->"
    section = f"{begin}\n\n{text}\n{end}"
    if begin in old and end in old:
        return old[: old.index(begin)] + section + old[old.index(end) + len(end) :]
    if KEPT in old:
        at = old.index(KEPT) + len(KEPT)
        return old[:at] + "\n\n" + section + "\n" + old[at:]
    return old + ("\n" if old else "") + section + "\n"
