"""The monitoring report's building blocks, shared by report.py and report_challengers.py.

The rows and runs a report draws (`Obs`, `Run`), series aligned on the covered runs, and the
figure helpers: inline PNG, small multiples, run dates on the x axis, notes and numbers. Plots
use matplotlib's object API on the Agg canvas, never pyplot (no display, and a notebook's own
backend stays as it is).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.figure import Figure

DPI = 80
"""Low enough that a 30-run report of several models stays well under a megabyte."""
RED = "#d00000"


@dataclass(frozen=True, slots=True)
class Obs:
    """One row of the monitoring table, as the report uses it."""

    run_id: str
    model: str
    kind: str
    feature: str
    metric: str
    baseline: str
    value: float
    threshold: float
    """NaN when the metric has none."""
    alert: bool

    @property
    def ratio(self) -> float:
        """value / threshold: how far past its threshold a metric is (1.0 = at it)."""
        if not self.threshold > 0 or math.isnan(self.value):
            return -math.inf
        return self.value / self.threshold


@dataclass(frozen=True)
class Run:
    run_id: str
    run_date: str


def series(obs: Iterable[Obs], pos: dict[str, int], n: int, limits: bool = False) -> list[float]:
    """Values (or thresholds) aligned on the covered runs, NaN where a run has none (a gap)."""
    out = [math.nan] * n
    for o in obs:
        out[pos[o.run_id]] = o.threshold if limits else o.value
    return out


def group(obs: Iterable[Obs], key: Callable[[Obs], str]) -> dict[str, list[Obs]]:
    groups: dict[str, list[Obs]] = defaultdict(list)
    for o in obs:
        groups[key(o)].append(o)
    return dict(groups)


def num(value: float) -> str:
    if math.isnan(value):
        return ""
    return f"{value:,.0f}" if abs(value) >= 1e5 and value.is_integer() else f"{value:.4g}"


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def img(fig: Figure, alt: str) -> str:
    """The figure as an inline PNG: data URIs keep the page one self-contained file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def grid(n: int, width: float = 3.4, height: float = 2.5) -> tuple[Figure, list[Axes]]:
    """A small-multiples figure of `n` panels, four per row."""
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def run_axis(ax: Axes, runs: Sequence[Run], size: int = 7) -> None:
    """Run dates on the x axis, at most six of them so that they stay readable."""
    step = max(1, math.ceil(len(runs) / 6))
    ticks = list(range(len(runs) - 1, -1, -step))[::-1]
    ax.set_xticks(ticks, [runs[i].run_date for i in ticks], rotation=30, ha="right", fontsize=size)
    ax.tick_params(axis="y", labelsize=size)
    ax.set_xlim(-0.5, len(runs) - 0.5)
    ax.grid(alpha=0.3)


def short(text: str, size: int = 38) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def finite_edges(edges: list[float]) -> list[float]:
    """Open-ended first/last bins (±inf edges) drawn one neighbouring bin wide."""
    finite = [e for e in edges if math.isfinite(e)]
    if len(finite) < 2:
        return [float(i) for i in range(len(edges))]
    width = (finite[-1] - finite[0]) / max(1, len(finite) - 1)
    out = list(edges)
    if not math.isfinite(out[0]):
        out[0] = finite[0] - width
    if not math.isfinite(out[-1]):
        out[-1] = finite[-1] + width
    return out
