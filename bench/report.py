"""Results as rows and sections, rendered to Markdown, the terminal and a plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from measure import Summary


@dataclass(frozen=True)
class Check:
    """One target: its wording and whether it was met (None: not measured)."""

    text: str
    met: bool | None

    def render(self) -> str:
        verdict = {True: "**met**", False: "**not met**", None: "not measured"}[self.met]
        return f"{self.text}: {verdict}"


@dataclass
class Row:
    name: str
    latency: Summary | None = None
    rps: float | None = None
    how: str = ""
    ratio: str = ""
    checks: list[Check] = field(default_factory=list)
    extra: str = ""
    not_measured: str | None = None


@dataclass
class Section:
    title: str
    intro: str = ""
    rows: list[Row] = field(default_factory=list)
    table: tuple[list[str], list[list[str]]] | None = None  # a custom table
    notes: list[str] = field(default_factory=list)


def fmt_ns(ns: float | None) -> str:
    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return "-"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_ratio(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.2f}×" if value < 100 else f"{value:,.0f}×"


def fmt_rate(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def _cells(row: Row) -> list[str]:
    if row.not_measured is not None:
        return [row.name, "-", "-", "-", "-", f"not measured: {row.not_measured}", "", row.how]
    lat = row.latency
    ratio = row.ratio + (f"; {row.extra}" if row.extra and row.ratio else row.extra)
    return [
        row.name,
        fmt_ns(lat.p50) if lat else "-",
        fmt_ns(lat.p99) if lat else "-",
        fmt_rate(row.rps),
        str(lat.n) if lat else "-",
        ratio or "-",
        "<br>".join(c.render() for c in row.checks) or "-",
        row.how,
    ]


ROW_HEADER = ["row", "p50", "p99", "req/s", "n", "ratio to baseline", "target", "how measured"]


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    escaped = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in escaped]
    return lines


def markdown(title: str, preamble: list[str], sections: list[Section]) -> str:
    lines = [f"# {title}", ""] + preamble + [""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.intro:
            lines += [section.intro, ""]
        if section.rows:
            lines += _markdown_table(ROW_HEADER, [_cells(r) for r in section.rows]) + [""]
        if section.table:
            lines += _markdown_table(*section.table) + [""]
        lines += [f"- {note}" for note in section.notes]
        if section.notes:
            lines.append("")
    return "\n".join(lines)


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    rows = [[cell.replace("<br>", "; ").replace("**", "") for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*r) for r in rows
    ]


def terminal(sections: list[Section]) -> str:
    """The tables without the long 'how measured' column."""
    lines: list[str] = []
    for section in sections:
        lines += ["", f"== {section.title} =="]
        if section.rows:
            lines += _text_table(ROW_HEADER[:-1], [_cells(r)[:-1] for r in section.rows])
        if section.table:
            lines += _text_table(*section.table)
    return "\n".join(lines)


def plot_growth(path: Path, ns: list[int], curves: dict[str, list[float]], title: str) -> None:
    """Log-log latency (p50, ms) against the number of stored credentials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    markers = iter("osD^v<>")
    for label, values in curves.items():
        points = [(n, v / 1e6) for n, v in zip(ns, values, strict=True) if not math.isnan(v)]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker=next(markers), label=label)
    for limit, text in ((10.0, "10 ms"), (100.0, "100 ms")):
        ax.axhline(limit, color="grey", linestyle=":", linewidth=1)
        ax.annotate(text, (ns[0], limit), textcoords="offset points", xytext=(2, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("credentials stored (N)")
    ax.set_ylabel("p50 latency per call (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
