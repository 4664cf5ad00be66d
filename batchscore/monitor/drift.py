"""Drift: how far a run's profile of a feature is from a baseline profile (training, or the
previous run), as a few numbers with thresholds.

Metrics, each computed from profiles alone (no data is reread):

- `psi`, population stability index, on coarse bins (adjacent fine bins merged until each holds
  >= 1/COARSE of the baseline's finite mass, plus a missing bin): PSI keeps its usual 10-20-bin
  meaning, and deduplicated edges of discrete data do not leave near-empty bins that would blow
  it up. Empty shares are floored at FLOOR = 1e-4 (0.01%), the usual fix for log(0): an empty
  bin then contributes ~share x 9, an alert when a bin goes from nothing to 2-3%.
- `js`, Jensen-Shannon distance (the square root of the divergence, base 2, in [0, 1]) on the
  same bins: bounded and symmetric, no floor needed.
- `ks`, Kolmogorov-Smirnov: the largest CDF gap over the fine edges, finite values only.
- `linf`: the largest change of one category's share (categorical features, integer-coded
  numeric ones, and per index of sparse vectors the share of rows with a non-zero).

Why the defaults (DEFAULT_THRESHOLDS):

- psi 0.2: the conventional "significant shift" line of credit scoring (< 0.1 stable, 0.1-0.2
  moderate, > 0.2 significant).
- ks 0.1 and js 0.1: a mean shift of half a standard deviation of a normal feature gives
  KS ~0.2 and JS distance ~0.2; half of that alerts on such a shift with margin, while sampling
  noise of two samples of n >= 10k rows stays far below (KS noise ~1.36 * sqrt(2 / n) = 0.019 at
  10k, 0.006 at 100k; JS noise is smaller still).
- linf 0.1: a category's share moving by 10 percentage points.

A feature's missing values (nulls; for numeric features NaN and infinities too) are a bin of
their own in psi, js and linf, so an exploding null rate is drift even when the values that are
present did not move.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from batchscore.errors import DataError, SpecError, did_you_mean
from batchscore.monitor.profile import FeatureProfile

__all__ = [
    "COARSE",
    "DEFAULT_THRESHOLDS",
    "FLOOR",
    "METRICS",
    "alerts",
    "check_thresholds",
    "compare",
]

DEFAULT_THRESHOLDS: dict[str, float] = {"psi": 0.2, "js": 0.1, "ks": 0.1, "linf": 0.1}
METRICS = ("psi", "js", "ks", "linf")
COARSE = 20
FLOOR = 1e-4

Floats = npt.NDArray[np.float64]


def check_thresholds(mapping: Mapping[str, Any], where: str) -> dict[str, float]:
    """Validated thresholds (metric -> value); SpecError naming `where` for an unknown metric or a
    value out of range (psi > 0; js, ks and linf in (0, 1])."""
    out: dict[str, float] = {}
    for name, value in mapping.items():
        if name not in METRICS:
            raise SpecError(
                f"{where}: '{name}' is not a drift metric.{did_you_mean(str(name), METRICS)} "
                f"Use one of {', '.join(METRICS)}."
            )
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        bounded = name != "psi"
        if number is None or not math.isfinite(number) or number <= 0 or (bounded and number > 1):
            span = "a number > 0" if not bounded else "a number in (0, 1]"
            raise SpecError(f"{where}: threshold {name}={value!r} is out of range; give {span}.")
        out[name] = float(number)
    return out


def alerts(
    metrics: Mapping[str, float], thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS
) -> dict[str, float]:
    """The metrics that pass (are strictly above) their thresholds."""
    return {
        name: value
        for name, value in metrics.items()
        if name in thresholds and value > thresholds[name]
    }


def compare(current: FeatureProfile, baseline: FeatureProfile) -> dict[str, float]:
    """Drift of `current` from `baseline`: the metrics that apply to the feature's kind (none
    when either side has no rows)."""
    if not current.rows or not baseline.rows:
        return {}
    kinds = {current.kind, baseline.kind}
    if kinds == {"sparse"}:
        return _sparse(current, baseline)
    if kinds == {"numeric"}:
        out = _numeric(current, baseline)
        if _tracked(current) and _tracked(baseline):
            out["linf"] = _linf(*_category_shares(current, baseline))
        return out
    if "sparse" not in kinds and _has_categories(current) and _has_categories(baseline):
        p, q = _category_shares(current, baseline)
        return {"psi": _psi(p, q), "js": _js(p, q), "linf": _linf(p, q)}
    raise DataError(
        f"Feature '{current.feature}' is {current.kind} ({current.dtype}) in the current data but "
        f"{baseline.kind} ({baseline.dtype}) in the baseline profile; profile both with one type."
    )


# ---------------------------------------------------------------- numeric


def _numeric(current: FeatureProfile, baseline: FeatureProfile) -> dict[str, float]:
    base = np.asarray(baseline.counts, dtype=np.float64)
    if len(base) != len(baseline.edges) + 1:
        return {}  # a baseline without bins: nothing to compare the values with
    now = counts_at(current, baseline.edges)
    out: dict[str, float] = {}
    if len(baseline.edges) and base.sum() > 0 and now.sum() > 0:
        gap = np.cumsum(base)[:-1] / base.sum() - np.cumsum(now)[:-1] / now.sum()
        out["ks"] = float(np.abs(gap).max())
    starts = coarse_starts(base)
    p = np.append(np.add.reduceat(base, starts), baseline.missing)
    q = np.append(np.add.reduceat(now, starts), current.missing)
    if p.sum() <= 0 or q.sum() <= 0:
        return out
    p, q = p / p.sum(), q / q.sum()
    out["psi"], out["js"] = _psi(p, q), _js(p, q)
    return out


def counts_at(profile: FeatureProfile, edges: tuple[float, ...]) -> Floats:
    """`profile`'s finite values per bin of `edges`: its own counts when it was binned at the
    same edges, else from its sketch's CDF, else by linear interpolation of its binned CDF."""
    if profile.count == 0:
        return np.zeros(len(edges) + 1)
    if profile.edges == edges and len(profile.counts) == len(edges) + 1:
        return np.asarray(profile.counts, dtype=np.float64)
    if not edges:
        return np.array([float(profile.count)])
    kll = profile.kll()
    if kll is not None and not kll.is_empty():
        cdf = np.asarray(kll.get_cdf(list(edges), inclusive=True), dtype=np.float64)[:-1]
    else:
        cdf = _interpolated_cdf(profile, np.asarray(edges, dtype=np.float64))
    cumulative = np.concatenate(([0.0], np.clip(cdf, 0.0, 1.0), [1.0])) * profile.count
    return np.maximum(np.diff(cumulative), 0.0)


def _interpolated_cdf(profile: FeatureProfile, edges: Floats) -> Floats:
    """F(edges) from binned counts: linear between the profile's own edges, 0 at its min and 1
    at its max (a histogram's usual uniform-within-bin reading)."""
    assert profile.min is not None and profile.max is not None
    low, high = profile.min, profile.max
    if high <= low:
        return (edges >= low).astype(np.float64)
    own = np.asarray(profile.edges, dtype=np.float64)
    cumulative = np.cumsum(np.asarray(profile.counts, dtype=np.float64))[: len(own)]
    inside = (own > low) & (own < high)
    xs = np.concatenate(([low], own[inside], [high]))
    ys = np.concatenate(([0.0], cumulative[inside] / profile.count, [1.0]))
    return np.interp(edges, xs, ys, left=0.0, right=1.0)


def coarse_starts(counts: Floats) -> npt.NDArray[np.intp]:
    """Start indices of coarse bins: adjacent fine bins merged left to right until each holds
    >= 1/COARSE of the total; a light last group joins the one before it."""
    total = float(counts.sum())
    if total <= 0 or len(counts) <= 1:
        return np.zeros(1, dtype=np.intp)
    target = total / COARSE * (1 - 1e-9)
    starts, held = [0], 0.0
    for i, count in enumerate(counts.tolist()):
        held += count
        if held >= target and i + 1 < len(counts):
            starts.append(i + 1)
            held = 0.0
    if len(starts) > 1 and counts[starts[-1] :].sum() < target:
        starts.pop()
    return np.asarray(starts, dtype=np.intp)


# ---------------------------------------------------------------- categories and vectors


def _tracked(profile: FeatureProfile) -> bool:
    """An integer-coded numeric feature whose values were all counted."""
    return bool(profile.categories) and profile.other == 0


def _has_categories(profile: FeatureProfile) -> bool:
    return profile.kind == "categorical" or _tracked(profile)


def _category_shares(current: FeatureProfile, baseline: FeatureProfile) -> tuple[Floats, Floats]:
    """Shares over the union of both sides' categories, then `other`, then missing."""
    mine, theirs = _names(current, baseline), _names(baseline, current)
    keys = list(dict.fromkeys([*theirs, *mine]))
    p = np.array([theirs.get(k, 0) for k in keys] + [baseline.other, baseline.missing], float)
    q = np.array([mine.get(k, 0) for k in keys] + [current.other, current.missing], float)
    return p / max(p.sum(), 1.0), q / max(q.sum(), 1.0)


def _names(profile: FeatureProfile, versus: FeatureProfile) -> dict[str, int]:
    """Category counts, booleans spelled as numbers when the other side is numeric (a flat
    training table profiles a boolean as categorical "true"/"false", a model input as 0/1)."""
    if profile.kind == "categorical" and versus.kind == "numeric":
        spelled = {"false": "0", "true": "1"}
        return {spelled.get(k, k): n for k, n in profile.categories.items()}
    return dict(profile.categories)


def _sparse(current: FeatureProfile, baseline: FeatureProfile) -> dict[str, float]:
    rows_now, rows_base = current.rows - current.nulls, baseline.rows - baseline.nulls
    width = max(len(current.nonzero), len(baseline.nonzero))
    if rows_now <= 0 or rows_base <= 0 or width == 0:
        return {}
    now, base = np.zeros(width), np.zeros(width)
    now[: len(current.nonzero)] = current.nonzero
    base[: len(baseline.nonzero)] = baseline.nonzero
    return {"linf": float(np.abs(now / rows_now - base / rows_base).max())}


# ---------------------------------------------------------------- the measures


def _psi(p: Floats, q: Floats) -> float:
    """Population stability index, shares floored at FLOOR."""
    p, q = np.maximum(p, FLOOR), np.maximum(q, FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def _js(p: Floats, q: Floats) -> float:
    """Jensen-Shannon distance, base 2: sqrt of the divergence, in [0, 1]."""
    m = (p + q) / 2

    def kl(a: Floats) -> float:
        used = a > 0
        return float(np.sum(a[used] * np.log2(a[used] / m[used])))

    return math.sqrt(min(max((kl(p) + kl(q)) / 2, 0.0), 1.0))


def _linf(p: Floats, q: Floats) -> float:
    return float(np.abs(p - q).max()) if len(p) else 0.0
