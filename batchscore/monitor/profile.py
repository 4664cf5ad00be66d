"""The profile format: what a model's inputs (and predictions) looked like, kept so a later run
can be validated against it and compared with it.

A profile is a folder holding `profile.json` (a folder, so plots or reports can sit next to it).
Every statistic in it is mergeable without rereading data, because profiles are built in pieces
(one per Spark task, or per training file) and added up:

- moments over the finite values as count, mean and m2 (the sum of squared deviations), merged
  with Chan et al.'s parallel formula, which stays exact where naive sums of squares cancel;
- a KLL quantile sketch (Apache DataSketches) of the finite values, whose merge is the sketch of
  the union; k = KLL_K keeps its single-sided normalized rank error at 0.0028 (<= 0.003, 99%
  confidence), small next to the 1/20 of the mass each drift bin holds, for ~23 KB a column;
- drift bins: `edges` at the baseline's quantiles of ranks 1/GRID .. (GRID-1)/GRID, deduplicated
  (discrete data collapses edges), and `counts` of finite values per bin, exact when the data
  was counted at fixed edges, else derived from the sketch (`counts_exact=False`);
- categories: the TOP most frequent values with their counts, the rest in `other`, and a CPC
  sketch for the number of distinct values once it is too large to count exactly. Integer and
  boolean numeric columns keep their values as categories while they have at most
  INT_CATEGORIES distinct ones, so a new code of an integer-coded category is visible;
- sparse vectors: per index, the number of rows with a non-zero value.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import datasketches  # type: ignore[import-untyped]
import numpy as np

from batchscore.errors import DataError

FORMAT = "batchscore.profile/1"
FILE = "profile.json"
GRID = 200
"""Drift edges sit at the baseline quantiles of ranks i/GRID: fine enough for KS (0.005 steps)
and to regroup into 20 coarse bins of >= 5% for PSI."""
TOP = 100
"""Categories kept by name; the others are summed in `other`."""
INT_CATEGORIES = 32
"""Integer / boolean numeric columns keep value counts while they have at most this many values."""
KLL_K = 1000
"""The smallest round k whose single-sided normalized rank error is <= 0.003 (0.00278)."""
CPC_LG_K = 12
"""CPC sketch size for distinct counts: ~1.5% error when estimating, exact-ish when small."""
HINT = "make one with `batchscore profile`"

Kind = Literal["numeric", "categorical", "sparse"]
KINDS: tuple[Kind, ...] = ("numeric", "categorical", "sparse")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_kll() -> Any:
    return datasketches.kll_doubles_sketch(KLL_K)


def new_cpc() -> Any:
    return datasketches.cpc_sketch(CPC_LG_K)


def sketch_bins(kll: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Drift edges and counts from a KLL sketch: quantiles at the GRID ranks, deduplicated, and
    the sketch's CDF at them times its count (bins are (e_i-1, e_i], like `searchsorted` right)."""
    if kll.is_empty():
        return (), (0.0,)
    ranks = np.arange(1, GRID) / GRID
    edges = np.unique(np.asarray(kll.get_quantiles(ranks, inclusive=True), dtype=np.float64))
    edges = edges[np.isfinite(edges)]
    cdf = np.asarray(kll.get_cdf(edges.tolist(), inclusive=True), dtype=np.float64)
    counts = np.diff(np.concatenate(([0.0], cdf))) * float(kll.n)
    return tuple(edges.tolist()), tuple(np.maximum(counts, 0.0).tolist())


@dataclass(frozen=True)
class FeatureProfile:
    """The statistics of one feature (a column, a position `name[i]` of an array feature, a
    prediction or a label) over a set of rows. See the module docstring for why each exists."""

    feature: str
    kind: Kind
    dtype: str
    rows: int = 0
    nulls: int = 0
    nan: int = 0
    inf: int = 0
    count: int = 0
    """Finite values (numeric)."""
    mean: float = 0.0
    m2: float = 0.0
    min: float | None = None
    max: float | None = None
    sketch: bytes | None = None
    edges: tuple[float, ...] = ()
    counts: tuple[float, ...] = ()
    counts_exact: bool = True
    categories: dict[str, int] = field(default_factory=dict)
    other: int = 0
    distinct: int = 0
    """Categorical: distinct non-null values (exact while `other` is 0, else the CPC estimate);
    integer numeric: the number of tracked categories; 0 otherwise."""
    distinct_sketch: bytes | None = None
    width: int = 0
    nonzero: tuple[int, ...] = ()

    @property
    def std(self) -> float:
        """Sample standard deviation of the finite values (0 below two values)."""
        return float(np.sqrt(self.m2 / (self.count - 1))) if self.count > 1 else 0.0

    @property
    def missing(self) -> int:
        """Rows without a usable value: nulls, and for numeric features NaN and infinities too
        (an infinity has no drift bin; counting it missing keeps an exploding rate visible)."""
        return self.nulls + self.nan + self.inf if self.kind == "numeric" else self.nulls

    def kll(self) -> Any:
        """The KLL sketch, deserialized (None without one)."""
        return (
            None
            if self.sketch is None
            else datasketches.kll_doubles_sketch.deserialize(self.sketch)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "kind": self.kind,
            "dtype": self.dtype,
            "rows": self.rows,
            "nulls": self.nulls,
            "nan": self.nan,
            "inf": self.inf,
            "count": self.count,
            "mean": self.mean,
            "m2": self.m2,
            "min": self.min,
            "max": self.max,
            "sketch": _b64(self.sketch),
            "edges": list(self.edges),
            "counts": list(self.counts),
            "counts_exact": self.counts_exact,
            "categories": dict(self.categories),
            "other": self.other,
            "distinct": self.distinct,
            "distinct_sketch": _b64(self.distinct_sketch),
            "width": self.width,
            "nonzero": list(self.nonzero),
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], *, edges: tuple[float, ...] | None = None
    ) -> FeatureProfile:
        """Parse `to_json`'s dict; DataError naming the feature and what is wrong. `edges`: the
        bin edges when `data` leaves them out (a scoring task's file: the driver holds the
        training edges it gave the task, checked when their profile was read)."""
        name = data.get("feature", "?") if isinstance(data, Mapping) else "?"
        try:
            return _parse_feature(data, edges)
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise DataError(
                f"Feature profile '{name}' is not a batchscore feature profile ({_why(exc)}); "
                f"{HINT}."
            ) from None


def _parse_feature(
    data: Mapping[str, Any], known: tuple[float, ...] | None = None
) -> FeatureProfile:
    kind = next((k for k in KINDS if k == data["kind"]), None)
    if kind is None:
        raise ValueError(f"kind {data['kind']!r} is not one of {', '.join(KINDS)}")
    if known is not None and "edges" not in data:
        edges = known
    else:
        edges = tuple(map(float, data.get("edges", ())))
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("edges are not strictly increasing")
    counts = tuple(map(float, data.get("counts", ())))
    if edges and len(counts) != len(edges) + 1:
        raise ValueError(f"{len(edges)} edges need {len(edges) + 1} counts, not {len(counts)}")
    return FeatureProfile(
        feature=str(data["feature"]),
        kind=kind,
        dtype=str(data["dtype"]),
        rows=int(data["rows"]),
        nulls=int(data.get("nulls", 0)),
        nan=int(data.get("nan", 0)),
        inf=int(data.get("inf", 0)),
        count=int(data.get("count", 0)),
        mean=float(data.get("mean", 0.0)),
        m2=float(data.get("m2", 0.0)),
        min=_opt_float(data.get("min")),
        max=_opt_float(data.get("max")),
        sketch=_unb64(data.get("sketch")),
        edges=edges,
        counts=counts,
        counts_exact=bool(data.get("counts_exact", True)),
        categories={str(k): int(v) for k, v in dict(data.get("categories", {})).items()},
        other=int(data.get("other", 0)),
        distinct=int(data.get("distinct", 0)),
        distinct_sketch=_unb64(data.get("distinct_sketch")),
        width=int(data.get("width", 0)),
        nonzero=tuple(int(v) for v in data.get("nonzero", ())),
    )


@dataclass(frozen=True)
class Profile:
    """A model's inputs by label in spec order (and its predictions), over `rows` rows."""

    features: dict[str, FeatureProfile]
    predictions: dict[str, FeatureProfile] = field(default_factory=dict)
    rows: int = 0
    source: str = ""
    model: str | None = None
    created_at: str = field(default_factory=_now)

    def to_json(self) -> dict[str, Any]:
        """Features as lists, so their order survives writers that sort keys."""
        return {
            "format": FORMAT,
            "rows": self.rows,
            "source": self.source,
            "model": self.model,
            "created_at": self.created_at,
            "features": [f.to_json() for f in self.features.values()],
            "predictions": [f.to_json() for f in self.predictions.values()],
        }

    @classmethod
    def from_json(cls, data: Any) -> Profile:
        """Parse `to_json`'s dict (as stored in a registry manifest, say)."""
        try:
            return _parse_profile(data)
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise DataError(
                f"Profile JSON is not a batchscore profile ({_why(exc)}); {HINT}."
            ) from None

    def save(self, directory: str | os.PathLike[str]) -> Path | str:
        """Write DIR/profile.json (atomically: a reader never sees half a profile); DIR may be
        an object-store URI (then the URI of the file is returned)."""
        from batchscore.sinks.storage import is_object_store, join, write_bytes

        text = json.dumps(self.to_json(), indent=1, allow_nan=False)
        if is_object_store(directory):
            location = join(directory, FILE)
            write_bytes(location, text.encode())
            return location
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Profile:
        """Read DIR/profile.json (or that file itself); DataError in one line when it is
        missing or is not a profile."""
        import pyarrow.fs as pafs

        from batchscore.sinks.storage import file_type, join, read_bytes

        path = os.fspath(directory).rstrip("/")
        if path.rsplit("/", 1)[-1] != FILE or file_type(path) == pafs.FileType.Directory:
            path = join(path, FILE)
        if file_type(path) != pafs.FileType.File:
            raise DataError(f"Profile {path} does not exist; {HINT}.")
        try:
            return _parse_profile(json.loads(read_bytes(path).decode()))
        except (OSError, KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise DataError(
                f"Profile {path} is not a batchscore profile ({_why(exc)}); {HINT}."
            ) from None

    def merge(self, other: Profile) -> Profile:
        """The profile of both datasets together, from the two profiles alone."""
        return Profile(
            features=_merge_group(self.features, other.features, "features"),
            predictions=_merge_group(self.predictions, other.predictions, "predictions"),
            rows=self.rows + other.rows,
            source=self.source
            if self.source == other.source
            else f"{self.source} + {other.source}",
            model=self.model if self.model == other.model else (self.model or other.model),
        )

    def lookup(self, label: str) -> FeatureProfile | None:
        """The profile of `label`: the exact label (features, then predictions), else the one
        feature whose bare name matches (after the last '.', keeping `[i]`): a flat training
        table names `age` what a spec names `users.age`."""
        for group in (self.features, self.predictions):
            if label in group:
                return group[label]
        bare = _bare(label)
        found = [f for name, f in self.features.items() if _bare(name) == bare]
        return found[0] if len(found) == 1 else None


def _bare(label: str) -> str:
    head, bracket, index = label.partition("[")
    return head.rsplit(".", 1)[-1] + bracket + index


def _parse_profile(data: Any) -> Profile:
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    marker = data.get("format")
    if marker != FORMAT:
        raise ValueError(f"format is {marker!r}, expected {FORMAT!r}")

    def group(key: str) -> dict[str, FeatureProfile]:
        out: dict[str, FeatureProfile] = {}
        for entry in data.get(key, []):
            try:
                feature = _parse_feature(entry)
            except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
                name = entry.get("feature", "?") if isinstance(entry, Mapping) else "?"
                raise ValueError(f"{key} '{name}': {_why(exc)}") from None
            out[feature.feature] = feature
        return out

    model = data.get("model")
    return Profile(
        features=group("features"),
        predictions=group("predictions"),
        rows=int(data["rows"]),
        source=str(data.get("source", "")),
        model=None if model is None else str(model),
        created_at=str(data.get("created_at", "")),
    )


def _merge_group(
    a: dict[str, FeatureProfile], b: dict[str, FeatureProfile], what: str
) -> dict[str, FeatureProfile]:
    if a.keys() != b.keys():
        only = sorted(a.keys() ^ b.keys())
        raise DataError(
            f"Profiles cannot be merged: their {what} differ ({', '.join(only[:5])} in only one); "
            "merge profiles of the same features."
        )
    return {name: merge_features(a[name], b[name]) for name in a}


# ---------------------------------------------------------------- merging features


def merge_features(a: FeatureProfile, b: FeatureProfile) -> FeatureProfile:
    """The profile of one feature over the rows of `a` and of `b` together."""
    if a.feature != b.feature or a.kind != b.kind:
        raise DataError(
            f"Feature profiles '{a.feature}' ({a.kind}) and '{b.feature}' ({b.kind}) cannot be "
            "merged; merge profiles of the same feature and kind."
        )
    count, mean, m2 = chan(a.count, a.mean, a.m2, b.count, b.mean, b.m2)
    kll = _merge_kll(a, b)
    edges, counts, exact = _merge_bins(a, b, kll)
    categories, other = _merge_categories(a, b)
    return replace(
        a,
        rows=a.rows + b.rows,
        nulls=a.nulls + b.nulls,
        nan=a.nan + b.nan,
        inf=a.inf + b.inf,
        count=count,
        mean=mean,
        m2=m2,
        min=_extreme(min, a.min, b.min),
        max=_extreme(max, a.max, b.max),
        sketch=None if kll is None else bytes(kll.serialize()),
        edges=edges,
        counts=counts,
        counts_exact=exact,
        categories=categories,
        other=other,
        **_merge_distinct(a, b, categories, other),
        **_merge_sparse(a, b),
    )


def chan(
    n_a: int, mean_a: float, m2_a: float, n_b: int, mean_b: float, m2_b: float
) -> tuple[int, float, float]:
    """Count, mean and m2 of two parts together (Chan, Golub & LeVeque): exact merges where
    summing squares would cancel catastrophically."""
    n = n_a + n_b
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


def _extreme(pick: Any, a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return a if b is None else b
    return float(pick(a, b))


def _merge_kll(a: FeatureProfile, b: FeatureProfile) -> Any:
    """The union's sketch; a side without values needs no sketch, a side with values but
    without a sketch leaves the union without one."""
    if b.count == 0 and a.sketch is not None:
        return a.kll()
    if a.count == 0 and b.sketch is not None:
        return b.kll()
    if a.sketch is None or b.sketch is None:
        return None
    merged = a.kll()
    merged.merge(b.kll())
    return merged


def _merge_bins(
    a: FeatureProfile, b: FeatureProfile, kll: Any
) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """Exact counts at the same edges add up (a run's tasks count at the baseline's edges: that
    must stay exact); otherwise the merged sketch re-derives edges and counts; otherwise counts at
    equal edges still add (approximately); otherwise nothing can be said: DataError."""
    if a.kind != "numeric":
        return a.edges, a.counts, a.counts_exact
    same = a.edges == b.edges and len(a.counts) == len(b.counts)
    if same and a.counts_exact and b.counts_exact:
        return a.edges, _add(a.counts, b.counts), True
    if b.count == 0 and not same and b.sketch is None:
        return a.edges, a.counts, a.counts_exact
    if a.count == 0 and not same and a.sketch is None:
        return b.edges, b.counts, b.counts_exact
    if kll is not None:
        edges, counts = sketch_bins(kll)
        return edges, counts, False
    if same:
        return a.edges, _add(a.counts, b.counts), False
    raise DataError(
        f"Feature profile '{a.feature}' cannot be merged: its parts were binned at different "
        "edges and have no sketches; profile both parts at the same edges or with sketches."
    )


def _add(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    return tuple((np.asarray(a, dtype=np.float64) + np.asarray(b, dtype=np.float64)).tolist())


def _merge_categories(a: FeatureProfile, b: FeatureProfile) -> tuple[dict[str, int], int]:
    """Counts add and the top is taken again. Integer numeric columns stop tracking (empty
    dict) once either part stopped or the union passes INT_CATEGORIES values."""
    union = dict(a.categories)
    for key, n in b.categories.items():
        union[key] = union.get(key, 0) + n
    if a.kind == "numeric":
        stopped = (a.count > 0 and not a.categories) or (b.count > 0 and not b.categories)
        if stopped or len(union) > INT_CATEGORIES:
            return {}, 0
        return dict(sorted(union.items(), key=lambda kv: _numeric_key(kv[0]))), 0
    kept, dropped = top_categories(union)
    return kept, a.other + b.other + dropped


def top_categories(counts: Mapping[str, int], top: int = TOP) -> tuple[dict[str, int], int]:
    """The `top` most frequent values (ties by value, for stable output) and the sum of the rest."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(ranked[:top]), sum(n for _, n in ranked[top:])


def _numeric_key(key: str) -> float:
    try:
        return float(key)
    except ValueError:
        return float("inf")


def _merge_distinct(
    a: FeatureProfile, b: FeatureProfile, categories: dict[str, int], other: int
) -> dict[str, Any]:
    if a.kind != "categorical":
        return {"distinct": len(categories), "distinct_sketch": None}
    sketch: bytes | None = None
    if a.distinct_sketch is not None and b.distinct_sketch is not None:
        union = datasketches.cpc_union(CPC_LG_K)
        union.update(datasketches.cpc_sketch.deserialize(a.distinct_sketch))
        union.update(datasketches.cpc_sketch.deserialize(b.distinct_sketch))
        merged = union.get_result()
        sketch = bytes(merged.serialize())
        estimate = round(merged.get_estimate())
    else:
        estimate = max(a.distinct, b.distinct)
    distinct = len(categories) if other == 0 else max(estimate, len(categories) + 1)
    return {"distinct": distinct, "distinct_sketch": sketch}


def _merge_sparse(a: FeatureProfile, b: FeatureProfile) -> dict[str, Any]:
    if a.kind != "sparse":
        return {}
    if a.width != b.width and a.rows and b.rows:
        raise DataError(
            f"Feature profiles of '{a.feature}' cannot be merged: vector widths {a.width} and "
            f"{b.width} differ; profile vectors of one width."
        )
    width = max(a.width, b.width)
    total = np.zeros(width, dtype=np.int64)
    total[: len(a.nonzero)] += np.asarray(a.nonzero, dtype=np.int64)
    total[: len(b.nonzero)] += np.asarray(b.nonzero, dtype=np.int64)
    return {"width": width, "nonzero": tuple(total.tolist())}


# ---------------------------------------------------------------- small helpers


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes | None:
    return None if text is None else base64.b64decode(str(text), validate=True)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    text = " ".join(str(exc).split())
    return text[:160] if text else type(exc).__name__
