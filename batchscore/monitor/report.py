"""`batchscore report`: one static HTML page that shows how a job's models and inputs drift.

The page is made for a scheduler's artefact store or an e-mail attachment: one file, plots as
base64 PNG, inline CSS, no external resource (a Content-Security-Policy forbids any), so it
opens offline years later. It reads the monitoring Delta table with delta-rs (no Spark: a
report of a thousand runs takes a second, not a JVM start) and the latest run's histograms
JSON. Plots use matplotlib's object API on the Agg canvas, never pyplot, so rendering a report
in a notebook neither needs a display nor switches the notebook's own backend
(monitor.report_plots holds the figure helpers). After the models, one section per challenger
compares it with its champion (monitor.report_challengers), from the `kind = 'comparison'`
rows, the histograms file and, when given, the prediction table.

Every string from the data goes through `html.escape`: feature and model names come from
user specs. A tiny inline script records on `<body>` how many images decoded and whether a
script error fired; tests/spark/test_report.py reads them from a headless browser, and users
never see it.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from batchscore.errors import DataError, SpecError, did_you_mean
from batchscore.monitor.report_challengers import (
    Pair,
    challenger_sections,
    find_pairs,
    open_predictions,
)
from batchscore.monitor.report_plots import (
    RED,
    Obs,
    Run,
    finite_edges,
    grid,
    group,
    img,
    note,
    num,
    run_axis,
    series,
    short,
)
from batchscore.sinks.storage import delta_table, is_object_store, join, read_bytes, write_bytes

TOP_K = 8
"""Drift panels per model: the features whose latest drift is nearest (or over) threshold."""
MAX_HISTOGRAMS = 12
"""Histogram panels per model: more alerting features than this are listed, not drawn."""
COLUMNS = tuple(
    "run_id job run_date model model_version kind feature metric value baseline threshold "
    "alert computed_at".split()
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SHARE = re.compile(r"^share\[(.*)\]$")


@dataclass(frozen=True)
class ReportSummary:
    """What `write_report` wrote: for the CLI's one line and for notebooks."""

    path: str
    runs: int
    alerts: int
    models: tuple[str, ...]


@dataclass
class _Data:
    """The rows of the covered runs, grouped by model, with the runs in order."""

    monitoring: str
    job: str
    runs: list[Run]
    by_model: dict[str, list[Obs]]
    versions: dict[str, str]
    pairs: list[Pair]
    """Champion vs challenger pairs compared in the covered runs (monitor.report_challengers)."""
    predictions: Any | None
    """The prediction table (delta-rs), for the challenger scatter; None without one."""
    pos: dict[str, int] = field(init=False)
    """Each covered run's index on the x axis."""

    def __post_init__(self) -> None:
        self.pos = {run.run_id: i for i, run in enumerate(self.runs)}


# Public API
def write_report(
    monitoring: str,
    job: str,
    out: str,
    *,
    model: str | None = None,
    last: int = 30,
    predictions: str | None = None,
) -> ReportSummary:
    """Write the report of `job`'s last `last` runs to `out` (atomically: a scheduler that
    publishes the file never picks up half of it) and return what it covers. `predictions`,
    the job's prediction table (long layout), adds the challenger vs champion score scatter."""
    data = _load(monitoring, job, model, last, predictions)
    page = _render(data)
    alerts = len(_latest_alerts(data))
    if is_object_store(out):  # one PUT: readers see the old page or the new one
        write_bytes(out, page.encode("utf-8"))
        return ReportSummary(out, len(data.runs), alerts, tuple(data.by_model))
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, target)
    return ReportSummary(str(target), len(data.runs), alerts, tuple(data.by_model))


def report_html(
    monitoring: str,
    job: str,
    *,
    model: str | None = None,
    last: int = 30,
    predictions: str | None = None,
) -> str:
    """The report as a string (e.g. for `IPython.display.HTML` in a notebook)."""
    return _render(_load(monitoring, job, model, last, predictions))


# Loading
def _load(
    monitoring: str, job: str, model: str | None, last: int, predictions: str | None
) -> _Data:
    """Read the job's rows with delta-rs and keep the last `last` runs of the chosen models
    (and, with a model chosen, the champion vs challenger pairs it is part of)."""
    if last < 1:
        raise SpecError(f"--last {last}: the number of runs to report must be at least 1.")
    table = _open(monitoring)
    scores = open_predictions(predictions) if predictions is not None else None
    missing = [c for c in COLUMNS if c not in table.schema().to_arrow().names]
    if missing:
        raise DataError(
            f"Monitoring table '{monitoring}' lacks column(s) {', '.join(missing)}: it was not "
            "written by batchscore's monitoring; pass the monitoring table's path."
        )
    rows = table.to_pyarrow_table(columns=list(COLUMNS), filters=[("job", "=", job)]).to_pylist()
    if not rows:
        jobs = _jobs(table)
        raise DataError(
            f"Job '{job}' has no rows in monitoring table '{monitoring}'"
            f"{did_you_mean(job, jobs)} Jobs there: {', '.join(jobs) or '(none)'}."
        )
    every = rows
    if model is not None:
        models = sorted({r["model"] for r in rows})
        rows = [r for r in rows if r["model"] == model]
        if not rows:
            raise DataError(
                f"Model '{model}' has no rows in job '{job}' of '{monitoring}'"
                f"{did_you_mean(model, models)} Models there: {', '.join(models)}."
            )
    runs = _ordered_runs(rows)[-last:]
    kept = {run.run_id for run in runs}
    by_model: dict[str, list[Obs]] = defaultdict(list)
    versions: dict[str, str] = {}
    for r in rows:
        if r["run_id"] in kept:
            by_model[r["model"]].append(_obs(r))
            versions[r["model"]] = str(r["model_version"] or "")
    pairs = find_pairs((_obs(r) for r in every if r["run_id"] in kept), model)
    by_name = dict(sorted(by_model.items()))
    return _Data(monitoring, job, runs, by_name, versions, pairs, scores)


def _open(monitoring: str) -> Any:
    from deltalake.exceptions import TableNotFoundError

    try:
        return delta_table(monitoring)
    except TableNotFoundError:
        raise DataError(
            f"Monitoring table '{monitoring}' does not exist (no Delta log there): pass "
            "--monitoring the path the scoring runs write their monitoring table to."
        ) from None


def _jobs(table: Any) -> list[str]:
    """The jobs a monitoring table holds, for the message of an unknown job."""
    column = table.to_pyarrow_table(columns=["job"]).column("job")
    return sorted({str(j) for j in column.unique().to_pylist() if j is not None})


def _ordered_runs(rows: Iterable[dict[str, Any]]) -> list[Run]:
    """Runs ordered by run date, then by when they were computed (a rerun of a date last)."""
    first: dict[str, tuple[str, datetime]] = {}
    for r in rows:
        at = r["computed_at"] or _EPOCH
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        key = (str(r["run_date"]), at)
        if r["run_id"] not in first or key < first[r["run_id"]]:
            first[r["run_id"]] = key
    order = sorted(first.items(), key=lambda item: (item[1], item[0]))
    return [Run(run_id, key[0]) for run_id, key in order]


def _obs(r: dict[str, Any]) -> Obs:
    """A row; a null value is NaN (a gap in its line), a null threshold means none."""
    value, limit = r["value"], r["threshold"]
    kind, feature, metric, baseline = (str(r[k]) for k in ("kind", "feature", "metric", "baseline"))
    value = math.nan if value is None else float(value)
    limit = math.nan if limit is None else float(limit)
    alert = bool(r["alert"])
    return Obs(r["run_id"], r["model"], kind, feature, metric, baseline, value, limit, alert)


def _latest_alerts(data: _Data) -> list[Obs]:
    """The latest run's alerts over the covered models, worst (value / threshold) first."""
    latest = data.runs[-1].run_id
    alerts = [o for obs in data.by_model.values() for o in obs if o.alert and o.run_id == latest]
    return sorted(alerts, key=lambda o: (-o.ratio, o.model, o.feature, o.metric))


# The page
_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:32px}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f4f4f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#666;font-style:italic}.alert{color:#b00020;font-weight:600}img{max-width:100%}"""
_CHECK_SCRIPT = """
window.__errors = 0; window.onerror = function () { window.__errors += 1; };
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var b = document.body.dataset;
  b.imagesTotal = imgs.length; b.imagesLoaded = ok; b.errors = window.__errors; b.checked = "1";
});
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _render(data: _Data) -> str:
    """The whole page: header and latest alerts, then one section per model."""
    e = html.escape
    body = [_header(data)] + [_model_section(data, m, o) for m, o in data.by_model.items()]
    body.append(
        challenger_sections(
            data.pairs, data.runs, lambda run: _read_histograms(data, run), data.predictions
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>batchscore report: {e(data.job)}</title><style>{_CSS}</style>"
        f"<script>{_CHECK_SCRIPT}</script></head>\n<body>\n"
        + "\n".join(body)
        + f'\n<p class="note">Generated by batchscore at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC '
        f"from {e(data.monitoring)}.</p>\n</body></html>\n"
    )


def _header(data: _Data) -> str:
    e = html.escape
    latest, alerts = data.runs[-1], _latest_alerts(data)
    models = ", ".join(f"{m} ({v})" if (v := data.versions[m]) else m for m in data.by_model)
    facts = [
        ("job", e(data.job)),
        ("models", e(models)),
        ("runs covered", f"{len(data.runs)} ({e(data.runs[0].run_date)} to {e(latest.run_date)})"),
        ("latest run", f"{e(latest.run_id)} ({e(latest.run_date)})"),
        (
            "alerts in the latest run",
            f'<span class="{"alert" * bool(alerts)}">{len(alerts)}</span>',
        ),
    ]
    if data.pairs:
        pairs = ", ".join(f"{p.challenger} vs champion {p.champion}" for p in data.pairs)
        facts.append(("challengers", e(pairs)))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    return (
        f"<h1>Monitoring report: {e(data.job)}</h1>\n<table>{rows}</table>\n"
        f'<h2 id="alerts">Alerts in the latest run</h2>\n{_alerts_table(alerts)}'
    )


def _alerts_table(alerts: Sequence[Obs]) -> str:
    if not alerts:
        return '<p class="note">No alerts in the latest run.</p>'
    names = "model|feature|metric|value|threshold|value / threshold|baseline".split("|")
    head = "".join(f"<th>{h}</th>" for h in names)
    e, rows = html.escape, []
    for o in alerts:
        ratio = "" if o.ratio == -math.inf else f"{o.ratio:.2f}"
        rows.append(
            f'<tr class="alert-row"><td>{e(o.model)}</td><td>{e(o.feature)}</td>'
            f"<td>{e(o.metric)}</td><td class=n>{num(o.value)}</td>"
            f"<td class=n>{num(o.threshold)}</td><td class=n>{ratio}</td>"
            f"<td>{e(o.baseline)}</td></tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _model_section(data: _Data, name: str, obs: list[Obs]) -> str:
    e = html.escape
    version = f" (version {e(data.versions[name])})" if data.versions[name] else ""
    parts = [f"<h2>Model {e(name)}{version}</h2>", "<h3>Drift over time</h3>", _drift(data, obs)]
    parts += ["<h3>Training vs latest histograms</h3>", _histograms(data, name, obs)]
    parts += ["<h3>Predictions over time</h3>", _predictions(data, obs)]
    parts += ["<h3>Row counts and quarantine rate</h3>", _volumes(data, obs)]
    return "\n".join(parts)


# Drift
def _drift(data: _Data, obs: list[Obs]) -> str:
    """Top-k features by latest drift (max value / threshold against training), one panel each."""
    drift = [o for o in obs if o.baseline == "training"]
    if not drift:
        return note("No drift metrics against the training profile for this model.")
    features = group(drift, lambda o: o.feature)
    latest = max(data.pos[o.run_id] for o in obs)

    def score(f: str) -> float:
        return max(
            (o.ratio for o in features[f] if data.pos[o.run_id] == latest), default=-math.inf
        )

    ranked = sorted(features, key=lambda f: (-score(f), f))
    top = ranked[:TOP_K]
    fig, axes = grid(len(top))
    for ax, feature in zip(axes, top, strict=True):
        _drift_panel(ax, data, feature, features[feature])
    rest = len(ranked) - len(top)
    more = note(f"{rest} more feature(s) with smaller drift are not drawn.") if rest else ""
    return img(fig, "drift over time") + more


def _drift_panel(ax: Axes, data: _Data, feature: str, obs: list[Obs]) -> None:
    """Each metric's value over the runs; its threshold dashed; alerts as red crosses."""
    pos, n = data.pos, len(data.runs)
    for i, (metric, points) in enumerate(sorted(group(obs, lambda o: o.metric).items())):
        color = f"C{i}"
        ax.plot(range(n), series(points, pos, n), marker=".", color=color, label=metric)
        limits = series(points, pos, n, limits=True)
        if any(not math.isnan(v) for v in limits):
            ax.plot(range(n), limits, linestyle="--", linewidth=1, color=color)
        hits = [o for o in points if o.alert]
        xs, ys = [pos[o.run_id] for o in hits], [o.value for o in hits]
        ax.scatter(xs, ys, marker="x", s=40, color=RED, zorder=3)
    ax.set_title(short(feature), fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    run_axis(ax, data.runs)


# Histograms
def _histograms(data: _Data, name: str, obs: list[Obs]) -> str:
    """Training vs latest distributions of the model's alerting features, from the JSON file
    the latest run wrote; a missing file or feature is said on the page, never an error."""
    latest = data.runs[max(data.pos[o.run_id] for o in obs)]
    hits = sorted((o for o in obs if o.alert and o.run_id == latest.run_id), key=lambda o: -o.ratio)
    features = list(dict.fromkeys(o.feature for o in hits))
    if not features:
        return note("No alerts in the model's latest run: no histogram to compare.")
    found, problem = _read_histograms(data, latest)
    if found is None:
        return note(problem)
    models = found.get("models")
    model_hists = models.get(name, {}) if isinstance(models, dict) else {}
    drawable = [f for f in features if isinstance(model_hists.get(f), dict)]
    notes = [problem] if problem else []
    missing = [f for f in features if f not in drawable]
    if missing:
        notes.append(f"No histogram in the file for: {', '.join(missing)}.")
    if len(drawable) > MAX_HISTOGRAMS:
        notes.append(f"Only the {MAX_HISTOGRAMS} worst of {len(drawable)} alerting features drawn.")
        drawable = drawable[:MAX_HISTOGRAMS]
    parts = [note(n) for n in notes]
    if drawable:
        fig, axes = grid(len(drawable), height=2.6)
        for ax, feature in zip(axes, drawable, strict=True):
            _histogram_panel(ax, feature, model_hists[feature])
        parts.insert(0, img(fig, "training vs latest histograms"))
    return "\n".join(parts)


def _read_histograms(data: _Data, latest: Run) -> tuple[dict[str, Any] | None, str]:
    """The latest run's histograms JSON, or None and why it cannot be shown."""
    path = join(data.monitoring, "_batchscore", "histograms", data.job, f"{latest.run_date}.json")
    try:
        found = json.loads(read_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        return None, f"No histograms file for the latest run ({path}): the run did not write one."
    except (OSError, ValueError) as exc:
        return None, f"Histograms file {path} cannot be read ({exc}): rerun that date's scoring."
    if not isinstance(found, dict):
        return None, f"Histograms file {path} is not a JSON object: rerun that date's scoring."
    other = found.get("run_id")
    if other not in (None, latest.run_id):
        return found, f"Histograms are from run {other}, not the latest run {latest.run_id}."
    return found, ""


def _histogram_panel(ax: Axes, feature: str, hist: dict[str, Any]) -> None:
    """Training shares filled, the latest run's as a line; missing shares in the title."""
    training = hist.get("training")
    try:
        if hist.get("kind") == "categorical":
            _categorical(ax, hist, training)
        else:
            _numeric(ax, hist, training)
    except (TypeError, ValueError, KeyError) as exc:
        text = f"malformed histogram:\n{short(str(exc), 60)}"
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    title = short(feature) + _missing(hist)
    if training is None:
        title += "\n(no training profile)"
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _missing(hist: dict[str, Any]) -> str:
    """A numeric feature's share of missing values, training → latest, for the panel title."""
    now, before = hist.get("missing_current"), hist.get("missing_training")
    if not isinstance(now, int | float):
        return ""
    was = f"{before:.1%} → " if isinstance(before, int | float) else ""
    return f"\nmissing {was}{now:.1%}"


def _numeric(ax: Axes, hist: dict[str, Any], training: Any) -> None:
    edges = finite_edges([float(v) for v in hist["edges"]])
    current = [float(v) for v in hist["current"]]
    if len(edges) != len(current) + 1:
        raise ValueError(f"{len(edges)} edges for {len(current)} bins")
    if training is not None:
        ax.stairs([float(v) for v in training], edges, fill=True, alpha=0.35, label="training")
    ax.stairs(current, edges, color=RED, linewidth=1.5, label="latest")
    ax.set_ylabel("share", fontsize=7)


def _categorical(ax: Axes, hist: dict[str, Any], training: Any) -> None:
    """Grouped bars of the ten categories with the largest share in either distribution."""
    names = [str(c) for c in hist["categories"]]
    current = [float(v) for v in hist["current"]]
    before = [float(v) for v in training] if training is not None else [0.0] * len(names)
    if not len(names) == len(current) == len(before):
        raise ValueError(f"{len(names)} categories for {len(current)} shares")
    order = sorted(range(len(names)), key=lambda i: -max(current[i], before[i]))[:10]
    xs = list(range(len(order)))
    if training is not None:
        ax.bar([x - 0.2 for x in xs], [before[i] for i in order], 0.4, alpha=0.6, label="training")
    ax.bar([x + 0.2 for x in xs], [current[i] for i in order], 0.4, color=RED, label="latest")
    ax.set_xticks(xs, [short(names[i], 12) for i in order], rotation=30, ha="right")


# Predictions and volumes
def _predictions(data: _Data, obs: list[Obs]) -> str:
    """The prediction's mean with a ±1 std band, and class shares when the runs recorded them."""
    own = [o for o in obs if o.feature == "prediction" and o.baseline == "run"]
    metrics = group(own, lambda o: o.metric)
    shares = _class_shares(obs)
    parts = []
    if "mean" in metrics:
        parts.append(img(_mean_band(data, metrics), "prediction mean and std over time"))
    else:
        parts.append(note("No prediction mean recorded for this model's runs."))
    if shares:
        parts.append(img(_share_plot(data, shares), "class shares over time"))
    else:
        parts.append(note("No class shares (label share[...] metrics) in these runs."))
    return "\n".join(parts)


def _mean_band(data: _Data, metrics: dict[str, list[Obs]]) -> Figure:
    pos, n = data.pos, len(data.runs)
    mean = series(metrics["mean"], pos, n)
    fig = Figure(figsize=(8, 2.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(range(n), mean, marker=".", label="mean")
    if "std" in metrics:
        pairs = list(zip(mean, series(metrics["std"], pos, n), strict=True))
        low, high = [m - s for m, s in pairs], [m + s for m, s in pairs]
        ax.fill_between(range(n), low, high, alpha=0.25, label="mean ± std")
    for metric in ("min", "max"):
        if metric in metrics:
            values = series(metrics[metric], pos, n)
            ax.plot(range(n), values, linestyle=":", color="gray", linewidth=1, label=metric)
    ax.set_title("prediction", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    run_axis(ax, data.runs)
    return fig


def _class_shares(obs: list[Obs]) -> dict[str, list[Obs]]:
    """`label` rows with metric `share[<class>]`, by class; the run's own shares preferred."""
    rows = [o for o in obs if o.feature == "label" and _SHARE.match(o.metric)]
    own = [o for o in rows if o.baseline == "run"]
    return group(own or rows, lambda o: _SHARE.match(o.metric).group(1))  # type: ignore[union-attr]


def _share_plot(data: _Data, shares: dict[str, list[Obs]]) -> Figure:
    pos, n = data.pos, len(data.runs)
    names = sorted(shares)
    stacks = [[0.0 if math.isnan(v) else v for v in series(shares[c], pos, n)] for c in names]
    fig = Figure(figsize=(8, 2.8), layout="constrained")
    ax = fig.subplots()
    ax.stackplot(range(n), stacks, labels=[short(c, 20) for c in names], alpha=0.8)
    ax.set_ylim(0, max(1.0, max(sum(col) for col in zip(*stacks, strict=True))))
    ax.set_title("class shares", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    run_axis(ax, data.runs)
    return fig


def _volumes(data: _Data, obs: list[Obs]) -> str:
    """Rows scored per run and the share of rows quarantined (quarantined / (rows +
    quarantined): quarantined rows are kept out of the scored rows)."""
    counts = group(
        (o for o in obs if o.kind == "prediction" and o.metric in ("rows", "quarantined")),
        lambda o: o.metric,
    )
    if "rows" not in counts:
        return note("No row counts recorded for this model's runs.")
    pos, n = data.pos, len(data.runs)
    rows = series(counts["rows"], pos, n)
    fig = Figure(figsize=(8, 2.6), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(n), [0.0 if math.isnan(v) else v for v in rows], color="C0", alpha=0.6)
    ax.set_ylabel("rows scored", fontsize=8)
    run_axis(ax, data.runs)
    tail = note("No quarantine counts recorded for this model's runs.")
    if "quarantined" in counts:
        tail = ""
        held = series(counts["quarantined"], pos, n)
        rate = [q / (r + q) if r + q > 0 else math.nan for r, q in zip(rows, held, strict=True)]
        twin = ax.twinx()
        twin.plot(range(n), [100 * v for v in rate], color=RED, marker=".")
        twin.set_ylabel("quarantined %", fontsize=8, color=RED)
        twin.tick_params(labelsize=7)
        twin.set_ylim(bottom=0)
    return img(fig, "row counts and quarantine rate") + tail
