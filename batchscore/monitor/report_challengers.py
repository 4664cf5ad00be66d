"""The report's champion vs challenger sections (monitor.report draws the rest of the page).

One section per (challenger, champion) pair found in the monitoring rows with
`kind = 'comparison'` (`model` = the challenger, `baseline = 'champion:<name>'`):

- the comparison metrics (`mean_abs_diff`, `max_abs_diff`, `agreement`, `flipped`, `psi`, any
  of them may be absent) over the runs, one small panel each, and both models' `served_rows`;
- both score distributions of the pair's latest run, overlaid, from the `challengers` key of
  that run's histograms JSON;
- with a prediction table (long layout, `--predictions`), a scatter of the challenger's score
  against the champion's on the same input rows of that run: the two models' rows paired on the
  id columns, at most `MAX_POINTS` of them drawn (a uniform sample with a fixed seed, so a
  report redrawn from the same tables is the same picture).

Nothing here fails the page over what a run did not record: a missing file, key or row is a
note in the section. A `--predictions` path that is no Delta table, or not a long-layout
prediction table, is a `DataError` (a typo should not pass as "no data").
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from batchscore.errors import DataError
from batchscore.monitor.report_plots import (
    RED,
    Obs,
    Run,
    grid,
    group,
    img,
    note,
    num,
    run_axis,
    series,
    short,
)

COMPARISON = "comparison"
CHAMPION = "champion:"
"""The prefix of a comparison row's baseline; the champion's name follows."""
METRICS = ("mean_abs_diff", "max_abs_diff", "agreement", "flipped", "psi")
"""Drawn in this order; any other comparison metric after them, by name."""
SERVED = "served_rows"
MAX_POINTS = 2_000
"""The most points a scatter draws: enough to see the shape, small enough for the page."""
SEED = 0
NOT_IDS = frozenset(
    "model model_version role served prediction label probability run_id scored_at".split()
)
"""The long layout's columns that are not the input rows' ids."""

HistogramReader = Callable[[Run], tuple[dict[str, Any] | None, str]]
"""A run's histograms JSON, or None and why it cannot be shown (monitor.report reads it)."""


@dataclass(frozen=True)
class Pair:
    """A challenger and its champion, with their rows in the covered runs."""

    challenger: str
    champion: str
    comparison: list[Obs]
    """The challenger's `kind = 'comparison'` rows against this champion."""
    served: dict[str, list[Obs]]
    """Each of the two models' `served_rows` rows (a model without any is absent)."""


@dataclass(frozen=True)
class Paired:
    """A sample of the input rows both models scored in one run."""

    champion: np.ndarray
    challenger: np.ndarray
    by_challenger: np.ndarray
    """True where the challenger's prediction was the one served (a canary's rows)."""
    total: int
    """How many rows were paired before sampling."""


# Finding the pairs
def find_pairs(obs: Iterable[Obs], model: str | None = None) -> list[Pair]:
    """The (challenger, champion) pairs of the comparison rows, by challenger's name; with
    `model`, only the pairs it is part of (as the challenger or as the champion)."""
    rows = list(obs)
    compared = group(
        (o for o in rows if o.kind == COMPARISON and o.baseline.startswith(CHAMPION)),
        lambda o: f"{o.model}\0{o.baseline[len(CHAMPION) :]}",
    )
    served = group(
        (o for o in rows if o.kind == "prediction" and o.metric == SERVED and o.baseline == "run"),
        lambda o: o.model,
    )
    pairs = []
    for key in sorted(compared):
        challenger, champion = key.split("\0", 1)
        if model is not None and model not in (challenger, champion):
            continue
        counts = {m: served[m] for m in (champion, challenger) if m in served}
        pairs.append(Pair(challenger, champion, compared[key], counts))
    return pairs


# The sections
def challenger_sections(
    pairs: Sequence[Pair],
    runs: Sequence[Run],
    read_histograms: HistogramReader,
    predictions: Any | None,
) -> str:
    """A section per pair, or a one-line note when the runs compared no challenger.
    `predictions` is the opened prediction table (`open_predictions`) or None."""
    if not pairs:
        return note(
            "No champion vs challenger comparisons in these runs (no monitoring rows with "
            "kind 'comparison'): the job has no challengers, or its runs predate them."
        )
    pos = {run.run_id: i for i, run in enumerate(runs)}
    return "\n".join(_section(p, runs, pos, read_histograms, predictions) for p in pairs)


def _section(
    pair: Pair,
    runs: Sequence[Run],
    pos: dict[str, int],
    read_histograms: HistogramReader,
    predictions: Any | None,
) -> str:
    e = html.escape
    latest = runs[max(pos[o.run_id] for o in pair.comparison)]
    when = f"{e(latest.run_id)} ({e(latest.run_date)})"
    return "\n".join(
        [
            f'<h2 class="challenger">Challenger {e(pair.challenger)} vs champion '
            f"{e(pair.champion)}</h2>",
            f"<p>Latest compared run: {when}.</p>",
            _latest_table(pair, latest),
            "<h3>Comparison over time</h3>",
            _metrics_figure(pair, runs, pos),
            "<h3>Served rows</h3>",
            _served_figure(pair, runs, pos),
            "<h3>Score distributions in the latest compared run</h3>",
            _distributions(pair, latest, read_histograms),
            "<h3>Challenger vs champion scores in the latest compared run</h3>",
            _scatter_section(pair, latest, predictions),
        ]
    )


def _metric_order(names: Iterable[str]) -> list[str]:
    found = set(names)
    return [m for m in METRICS if m in found] + sorted(found - set(METRICS))


def _latest_table(pair: Pair, latest: Run) -> str:
    """The latest compared run's metrics and served rows, one line each."""
    e = html.escape
    now = {o.metric: o.value for o in pair.comparison if o.run_id == latest.run_id}
    lines = [(metric, now[metric]) for metric in _metric_order(now)]
    for model, rows in pair.served.items():
        for o in rows:
            if o.run_id == latest.run_id:
                lines.append((f"served rows: {model}", o.value))
    body = "".join(f"<tr><td>{e(k)}</td><td class=n>{num(v)}</td></tr>" for k, v in lines)
    return f"<table><tr><th>metric</th><th>latest value</th></tr>{body}</table>"


def _metrics_figure(pair: Pair, runs: Sequence[Run], pos: dict[str, int]) -> str:
    """One panel per comparison metric, its value over the runs."""
    metrics = group(pair.comparison, lambda o: o.metric)
    names = _metric_order(metrics)
    fig, axes = grid(len(names))
    for ax, metric in zip(axes, names, strict=True):
        ax.plot(range(len(runs)), series(metrics[metric], pos, len(runs)), marker=".")
        ax.set_title(metric, fontsize=9)
        run_axis(ax, runs)
    return img(fig, f"comparison of {pair.challenger} with {pair.champion} over time")


def _served_figure(pair: Pair, runs: Sequence[Run], pos: dict[str, int]) -> str:
    """Rows each model served per run (a shadow serves none; a canary its share)."""
    if not pair.served:
        return note("No served_rows recorded for these models' runs.")
    fig = Figure(figsize=(8, 2.6), layout="constrained")
    ax = fig.subplots()
    colors = {pair.champion: "C0", pair.challenger: RED}
    for model, rows in pair.served.items():
        values = series(rows, pos, len(runs))
        ax.plot(range(len(runs)), values, marker=".", color=colors[model], label=short(model))
    ax.set_ylabel("rows served", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left")
    run_axis(ax, runs)
    missing = [m for m in (pair.champion, pair.challenger) if m not in pair.served]
    text = note(f"No served_rows recorded for: {', '.join(missing)}.") if missing else ""
    return img(fig, "rows served per run") + text


# Score distributions
def _distributions(pair: Pair, latest: Run, read_histograms: HistogramReader) -> str:
    """Both score distributions on the champion's bins, from the run's histograms JSON."""
    found, problem = read_histograms(latest)
    if found is None:
        return note(problem)
    drawn = found.get("challengers")
    hist = drawn.get(pair.challenger) if isinstance(drawn, dict) else None
    if not isinstance(hist, dict):
        return note(
            f"The histograms file of run {latest.run_id} has no score distributions for "
            f"challenger {pair.challenger} (a run from before they were drawn, or scores "
            "without a spread to bin)."
        )
    notes = [problem] if problem else []
    if hist.get("champion", pair.champion) != pair.champion:
        notes.append(f"The file compares it with {hist.get('champion')}, not {pair.champion}.")
    fig = Figure(figsize=(6, 2.8), layout="constrained")
    ax = fig.subplots()
    try:
        edges = [float(v) for v in hist["edges"]]
        old = [float(v) for v in hist["champion_shares"]]
        new = [float(v) for v in hist["challenger_shares"]]
        if not len(edges) == len(old) + 1 == len(new) + 1:
            raise ValueError(f"{len(edges)} edges for {len(old)} and {len(new)} shares")
        ax.stairs(old, edges, fill=True, alpha=0.35, label=f"champion {short(pair.champion, 24)}")
        ax.stairs(
            new, edges, color=RED, linewidth=1.5, label=f"challenger {short(pair.challenger, 24)}"
        )
        ax.legend(fontsize=7)
    except (TypeError, ValueError, KeyError) as exc:
        text = f"malformed distributions:\n{short(str(exc), 60)}"
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_xlabel("score", fontsize=8)
    ax.set_ylabel("share", fontsize=8)
    ax.tick_params(labelsize=7)
    return "\n".join([img(fig, "champion and challenger score distributions"), *map(note, notes)])


# The scatter
def open_predictions(path: str) -> Any:
    """The prediction table (delta-rs), checked to be in long layout."""
    from deltalake.exceptions import TableNotFoundError

    from batchscore.sinks.storage import delta_table

    try:
        table = delta_table(path)
    except TableNotFoundError:
        raise DataError(
            f"Prediction table '{path}' does not exist (no Delta log there): pass --predictions "
            "the path of the job's output table."
        ) from None
    names = table.schema().to_arrow().names
    missing = [c for c in ("model", "prediction", "run_id") if c not in names]
    if missing:
        raise DataError(
            f"Prediction table '{path}' lacks column(s) {', '.join(missing)}: the challenger "
            "scatter reads the long layout (one row per input row and model); a wide table "
            "(<model>__prediction columns) is not supported."
        )
    if not [c for c in names if c not in NOT_IDS]:
        raise DataError(f"Prediction table '{path}' has no id columns to pair the models' rows on.")
    return table


def sample_pairs(
    table: Any, champion: str, challenger: str, limit: int = MAX_POINTS, seed: int = SEED
) -> Paired:
    """The two models' scores on the same rows (a pyarrow table in long layout, joined on its
    id columns and ordered by them: a hash join's order varies, the sample must not), rows
    where either score is missing dropped, then at most `limit` of them."""
    ids = [c for c in table.column_names if c not in NOT_IDS]

    def side(model: str, score: str, extra: Sequence[str] = ()) -> Any:
        rows = table.filter(pc.equal(table.column("model"), model))
        columns = [*ids, "prediction", *extra]
        return rows.select(columns).rename_columns([*ids, score, *extra])

    served = ["served"] if "served" in table.column_names else []
    joined = side(champion, "__champion").join(
        side(challenger, "__challenger", served), keys=ids, join_type="inner"
    )
    joined = joined.take(pc.sort_indices(joined, sort_keys=[(c, "ascending") for c in ids]))
    old = _floats(joined.column("__champion"))
    new = _floats(joined.column("__challenger"))
    if served:
        flags = joined.column("served").fill_null(False).to_numpy(zero_copy_only=False)
    else:
        flags = np.zeros(len(old), dtype=bool)
    keep = np.flatnonzero(np.isfinite(old) & np.isfinite(new))
    total = len(keep)
    if total > limit:
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=limit, replace=False))
    return Paired(old[keep], new[keep], np.asarray(flags, dtype=bool)[keep], total)


def _floats(column: Any) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _scatter_section(pair: Pair, latest: Run, predictions: Any | None) -> str:
    if predictions is None:
        return note(
            "The scatter of challenger vs champion scores needs the prediction table: pass "
            "--predictions PATH (write_report(..., predictions=PATH))."
        )
    names = predictions.schema().to_arrow().names
    ids = [c for c in names if c not in NOT_IDS]
    columns = [*ids, "model", "prediction", *(["served"] if "served" in names else [])]
    filters = [("run_id", "=", latest.run_id), ("model", "in", [pair.champion, pair.challenger])]
    rows = predictions.to_pyarrow_table(columns=columns, filters=filters)
    try:
        paired = sample_pairs(rows, pair.champion, pair.challenger)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # e.g. an id of list type
        return note(f"The models' rows cannot be paired on the id columns {ids}: {exc}")
    if not paired.total:
        return note(
            f"The prediction table has no rows of run {latest.run_id} scored by both "
            f"{pair.champion} and {pair.challenger}."
        )
    shown = f"{len(paired.champion):,} of {paired.total:,} paired rows"
    return img(_scatter(pair, paired, shown), f"challenger vs champion scores ({shown})")


def _scatter(pair: Pair, paired: Paired, shown: str) -> Figure:
    fig = Figure(figsize=(4.6, 4.2), layout="constrained")
    ax: Axes = fig.subplots()
    served = paired.by_challenger
    for mask, color, label in (
        (~served, "C0", "other rows"),
        (served, RED, "served by challenger"),
    ):
        if mask.any():
            xs, ys = paired.champion[mask], paired.challenger[mask]
            ax.scatter(xs, ys, s=6, alpha=0.5, linewidths=0, color=color, label=label)
    if served.any():
        ax.legend(fontsize=7, loc="upper left")
    low = float(min(paired.champion.min(), paired.challenger.min()))
    high = float(max(paired.champion.max(), paired.challenger.max()))
    if math.isfinite(low) and math.isfinite(high):
        ax.plot([low, high], [low, high], color="gray", linewidth=1, linestyle="--")
    ax.set_xlabel(f"champion {short(pair.champion, 30)}", fontsize=8)
    ax.set_ylabel(f"challenger {short(pair.challenger, 30)}", fontsize=8)
    ax.set_title(shown, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return fig
