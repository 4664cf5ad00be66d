"""A run's monitoring rows: its own statistics and its drift against the training profile and
the previous run, per model input and per prediction, each drift value with its threshold and
alert flag. Every value is kept, not only the alerts, so SQL over the table can ask anything.

Rows follow the monitoring table's contract (docs/contract.md, "Monitoring"): `kind` is
`feature` or `prediction`; `baseline` is `training`, `previous`, or `run` for the run's own
statistics (rows, null_rate, nan_rate, mean, std, min, max, share[<class>], quarantined).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchscore.monitor.drift import compare, counts_at
from batchscore.monitor.health import HealthPlan, ModelHealth
from batchscore.monitor.profile import FeatureProfile, Profile

TRAINING = "training"
PREVIOUS = "previous"
RUN = "run"


@dataclass(frozen=True)
class MetricRow:
    model: str
    model_version: str
    kind: str
    feature: str
    metric: str
    value: float
    baseline: str
    threshold: float | None = None
    alert: bool = False

    @property
    def severity(self) -> float:
        """How far past its threshold (value / threshold); 0 without one."""
        return self.value / self.threshold if self.threshold else 0.0


def model_rows(
    health: ModelHealth,
    current: Profile,
    previous: Profile | None,
    *,
    quarantined: int,
) -> list[MetricRow]:
    """Every row of one model for one run."""
    training = health.profile
    rows: list[MetricRow] = []

    def add(
        kind: str, feature: str, profile: FeatureProfile, base: FeatureProfile | None, baseline: str
    ) -> None:
        if base is None:
            return
        for metric, value in compare(profile, base).items():
            if not math.isfinite(value):
                continue
            threshold = health.threshold(feature, metric)
            alert = threshold is not None and value > threshold
            rows.append(
                MetricRow(
                    health.name,
                    health.version,
                    kind,
                    feature,
                    metric,
                    value,
                    baseline,
                    threshold,
                    alert,
                )
            )

    for name, profile in current.features.items():
        rows += _statistics(health, "feature", name, profile)
        add("feature", name, profile, training.lookup(name) if training else None, TRAINING)
        add("feature", name, profile, previous.features.get(name) if previous else None, PREVIOUS)
    for name, profile in current.predictions.items():
        rows += _statistics(health, "prediction", name, profile)
        add(
            "prediction",
            name,
            profile,
            training.predictions.get(name) if training else None,
            TRAINING,
        )
        add(
            "prediction",
            name,
            profile,
            previous.predictions.get(name) if previous else None,
            PREVIOUS,
        )
    if "prediction" not in current.predictions:  # else its statistics hold the row count
        scored = max((p.rows for p in current.predictions.values()), default=current.rows)
        rows.append(_stat(health, "prediction", "prediction", "rows", scored))
    rows.append(_stat(health, "prediction", "prediction", "quarantined", quarantined))
    return rows


def _stat(health: ModelHealth, kind: str, feature: str, metric: str, value: float) -> MetricRow:
    return MetricRow(health.name, health.version, kind, feature, metric, float(value), RUN)


def _statistics(health: ModelHealth, kind: str, feature: str, p: FeatureProfile) -> list[MetricRow]:
    """The run's own values: rows, null and NaN/inf rates, moments, class shares."""
    out = [_stat(health, kind, feature, "rows", p.rows)]
    if p.rows:
        out.append(_stat(health, kind, feature, "null_rate", p.nulls / p.rows))
    if p.kind == "numeric":
        if p.rows:
            out.append(_stat(health, kind, feature, "nan_rate", (p.nan + p.inf) / p.rows))
        if p.count:
            out += [
                _stat(health, kind, feature, "mean", p.mean),
                _stat(health, kind, feature, "std", p.std),
            ]
            if p.min is not None and p.max is not None:
                out += [
                    _stat(health, kind, feature, "min", p.min),
                    _stat(health, kind, feature, "max", p.max),
                ]
    elif p.kind == "categorical":
        seen = sum(p.categories.values()) + p.other
        for value, count in sorted(p.categories.items()):
            out.append(
                _stat(health, kind, feature, f"share[{value}]", count / seen if seen else 0.0)
            )
    elif p.kind == "sparse" and p.rows and p.width:
        out.append(
            _stat(health, kind, feature, "nonzero_rate", sum(p.nonzero) / (p.rows * p.width))
        )
    return out


def comparison_rows(
    health: HealthPlan, compared: Mapping[str, Any], profiles: Mapping[str, Profile]
) -> list[MetricRow]:
    """Per challenger, against its champion (baseline `champion:<name>`): label agreement and
    flipped decisions, mean and max |score difference|, PSI of the two score distributions;
    and every model's served rows."""
    versions = {m.name: m.version for m in health.models}
    rows: list[MetricRow] = []
    for key, sums in (compared.get("pairs") or {}).items():
        challenger, champion = key.split("|", 1)

        def add(metric: str, value: float, ch: str = challenger, base: str = champion) -> None:
            rows.append(
                MetricRow(
                    ch, versions.get(ch, ""), "comparison", "prediction", metric, value,
                    f"champion:{base}",
                )
            )  # fmt: skip

        if sums["scored"]:
            add("mean_abs_diff", sums["abs_diff"] / sums["scored"])
            add("max_abs_diff", sums["max_abs_diff"])
        if sums["labelled"]:
            add("agreement", sums["agree"] / sums["labelled"])
            add("flipped", 1.0 - sums["agree"] / sums["labelled"])
        new, old = profiles.get(challenger), profiles.get(champion)
        if new is not None and old is not None:
            a, b = new.predictions.get("prediction"), old.predictions.get("prediction")
            if a is not None and b is not None and a.count and b.count:
                psi = compare(a, b).get("psi")
                if psi is not None and math.isfinite(psi):
                    add("psi", psi)
    for name, count in (compared.get("served") or {}).items():
        rows.append(_stat_named(name, versions.get(name, ""), "served_rows", count))
    return rows


def _stat_named(model: str, version: str, metric: str, value: float) -> MetricRow:
    return MetricRow(model, version, "prediction", "prediction", metric, float(value), RUN)


def alerts(rows: Sequence[MetricRow]) -> list[MetricRow]:
    """The alerting rows, worst first (furthest past their threshold)."""
    return sorted((r for r in rows if r.alert), key=lambda r: -r.severity)


def alert_line(rows: Sequence[MetricRow], limit: int = 3) -> str:
    """One line for a scheduler log: per model, the worst features and their values."""
    worst = alerts(rows)
    if not worst:
        return ""
    by_model: dict[str, list[MetricRow]] = {}
    for row in worst:
        by_model.setdefault(row.model, []).append(row)
    parts = []
    for model, found in by_model.items():
        named: dict[str, MetricRow] = {}
        for row in found:
            named.setdefault(row.feature, row)
        shown = ", ".join(
            f"{r.feature} {r.metric}={r.value:.3g} (>{r.threshold:g} vs {r.baseline})"
            for r in list(named.values())[:limit]
        )
        more = f" and {len(named) - limit} more feature(s)" if len(named) > limit else ""
        parts.append(f"model '{model}': {shown}{more}")
    return "Drift alert: " + "; ".join(parts) + "."


# ---------------------------------------------------------------- histograms for the report


DISPLAY_BINS = 20


def histograms(current: Profile, training: Profile | None) -> dict[str, dict[str, object]]:
    """Training vs this run, per input and prediction with a training counterpart, in the
    report's format (monitor.report): numeric bins grouped to about DISPLAY_BINS."""
    out: dict[str, dict[str, object]] = {}
    if training is None:
        return out
    pairs: list[tuple[str, FeatureProfile, FeatureProfile | None]] = [
        (n, p, training.lookup(n)) for n, p in current.features.items()
    ]
    pairs += [(n, p, training.predictions.get(n)) for n, p in current.predictions.items()]
    for name, now, base in pairs:
        if base is None:
            continue
        shown = _histogram(now, base)
        if shown is not None:
            out[name] = shown
    return out


def _histogram(now: FeatureProfile, base: FeatureProfile) -> dict[str, object] | None:
    if now.kind == "categorical" or (base.kind == "categorical"):
        names = sorted(set(base.categories) | set(now.categories))
        return {
            "kind": "categorical",
            "categories": names,
            "training": _shares([base.categories.get(n, 0) for n in names]),
            "current": _shares([now.categories.get(n, 0) for n in names]),
        }
    if now.kind != "numeric" or not base.edges or tuple(now.edges) != tuple(base.edges):
        return None
    if base.min is None or base.max is None:
        return None
    low = min(base.min, now.min if now.min is not None else base.min)
    high = max(base.max, now.max if now.max is not None else base.max)
    edges = [low, *base.edges, high]
    group = max(1, (len(edges) - 1) // DISPLAY_BINS)
    cut = [*list(range(0, len(edges) - 1, group)), len(edges) - 1]
    return {
        "kind": "numeric",
        "edges": [float(edges[i]) for i in cut],
        "training": _shares(_grouped(base.counts, cut)),
        "current": _shares(_grouped(now.counts, cut)),
        "missing_training": _missing(base),
        "missing_current": _missing(now),
    }


def _grouped(counts: Sequence[float], cut: Sequence[int]) -> list[float]:
    return [float(sum(counts[a:b])) for a, b in itertools.pairwise(cut)]


def _shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total if total else 0.0 for c in counts]


def _missing(p: FeatureProfile) -> float:
    return (p.nulls + p.nan) / p.rows if p.rows else 0.0


def profiles_json(profiles: Mapping[str, Profile]) -> dict[str, object]:
    return {name: p.to_json() for name, p in profiles.items()}


def challenger_histograms(
    profiles: Mapping[str, Profile], pairs: Sequence[tuple[str, str]]
) -> dict[str, dict[str, object]]:
    """Per challenger, its score distribution and its champion's on common bins (the
    champion's score deciles from its sketch, else equal-width bins over both ranges)."""
    out: dict[str, dict[str, object]] = {}
    for challenger, champion in pairs:
        new = profiles.get(challenger)
        old = profiles.get(champion)
        if new is None or old is None:
            continue
        a, b = new.predictions.get("prediction"), old.predictions.get("prediction")
        if a is None or b is None or not a.count or not b.count:
            continue
        assert a.min is not None and a.max is not None and b.min is not None and b.max is not None
        low, high = min(a.min, b.min), max(a.max, b.max)
        if not high > low:
            continue
        inner = tuple(float(e) for e in np.linspace(low, high, DISPLAY_BINS + 1)[1:-1])
        out[challenger] = {
            "champion": champion,
            "edges": [low, *inner, high],
            "champion_shares": _shares(list(counts_at(b, inner))),
            "challenger_shares": _shares(list(counts_at(a, inner))),
        }
    return out
