"""A small star schema whose inputs drift on purpose, for validation and monitoring tests.

fact `sales` (Delta, partitioned by ds): id, ds, store_id, f_stable, f_shift, f_null, f_cat
(integer codes 0..3), f_unit (amounts); dimension `stores` (Delta, key store_id): size,
region_vec (array<double>[3]). Three days of `rows` rows each, drawn from one distribution:

- REFERENCE (2026-11-01): the data the models are profiled on;
- STABLE (2026-11-02): a new sample of the same distribution;
- DRIFTED (2026-11-03): f_shift's mean moved by 0.5 standard deviations, f_null 30% null,
  f_cat with a new code 9 in 15% of the rows, f_unit in different units (x1000).

Models: `risk` (LogisticRegression) and `spend` (Ridge) on every feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
from deltalake import write_deltalake
from sklearn.linear_model import LogisticRegression, Ridge

from batchscore.datasets._write import sha256_file

REFERENCE, STABLE, DRIFTED = "2026-11-01", "2026-11-02", "2026-11-03"
DRIFTING = {"sales.f_shift", "sales.f_null", "sales.f_cat", "sales.f_unit"}
FEATURES = [
    "f_stable",
    "f_shift",
    "f_null",
    "f_cat",
    "f_unit",
    "stores.size",
    "stores.region_vec",
]
STORES = 40


@dataclass
class HealthStar:
    root: Path
    spec: Path


def _day(rng: np.random.Generator, ds: str, rows: int, start: int) -> dict[str, object]:
    drift = ds == DRIFTED
    f_null = rng.normal(size=rows)
    null = rng.random(rows) < (0.3 if drift else 0.0)
    f_cat = rng.integers(0, 4, rows)
    if drift:
        f_cat[rng.random(rows) < 0.15] = 9
    f_unit = rng.lognormal(3.0, 0.4, rows) * (1000.0 if drift else 1.0)
    return {
        "id": np.arange(start, start + rows, dtype=np.int64),
        "ds": np.full(rows, ds),
        "store_id": rng.integers(0, STORES, rows).astype(np.int64),
        "f_stable": rng.normal(size=rows),
        "f_shift": rng.normal(0.5 if drift else 0.0, 1.0, rows),
        "f_null": pa.array(f_null, pa.float64(), mask=null),
        "f_cat": f_cat.astype(np.int64),
        "f_unit": f_unit,
    }


def build_health_star(root: Path, *, rows: int = 20_000, seed: int = 11) -> HealthStar:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    days = [_day(rng, ds, rows, i * rows) for i, ds in enumerate((REFERENCE, STABLE, DRIFTED))]
    fact = pa.concat_tables([pa.table(d) for d in days])
    write_deltalake(str(root / "sales"), fact, partition_by=["ds"])
    region = rng.normal(size=(STORES, 3))
    stores = pa.table(
        {
            "store_id": np.arange(STORES, dtype=np.int64),
            "size": rng.normal(100.0, 20.0, STORES),
            "region_vec": pa.array(list(region), pa.list_(pa.float64())),
        }
    )
    write_deltalake(str(root / "stores"), stores)
    reference = fact.filter(pa.compute.equal(fact["ds"], REFERENCE)).to_pandas()
    size = stores["size"].to_numpy()[reference["store_id"]]
    vec = region[reference["store_id"]]
    X = np.column_stack([reference[c].to_numpy(dtype=float) for c in FEATURES[:5]] + [size, vec])
    X = np.nan_to_num(X)
    y = X[:, 0] + 0.5 * X[:, 1] - 0.3 * X[:, 3] + rng.normal(size=len(X))
    models = root / "models"
    models.mkdir(exist_ok=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(X, y > 0), models / "risk.joblib")
    joblib.dump(Ridge().fit(X, y), models / "spend.joblib")
    spec = root / "job.yaml"
    spec.write_text(spec_text(root))
    return HealthStar(root, spec)


def spec_text(root: Path, *, extra: str = "", model_extra: str = "") -> str:
    features = ", ".join(FEATURES)
    models = "\n".join(
        f"  - name: {name}\n    path: models/{name}.joblib\n"
        f"    sha256: {sha256_file(root / 'models' / f'{name}.joblib')}\n"
        f"    features: [{features}]\n{model_extra}"
        for name in ("risk", "spend")
    )
    return (
        "name: health\n"
        "tables:\n"
        "  sales: {path: sales, partition_by: [ds]}\n"
        "  stores: {path: stores, key: store_id}\n"
        "source:\n"
        "  table: sales\n"
        "  where: \"ds = '{run_date}'\"\n"
        "  id_columns: [id, ds]\n"
        "  joins:\n"
        "    - table: stores\n"
        "      on: {store_id: store_id}\n"
        f"models:\n{models}\n"
        "output: {path: out, partition_by: [ds], mode: overwrite_partitions, quarantine: held}\n"
        f"{extra}"
    )


def design_matrix(root: Path, ds: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, X) of one day as the models read it: the job's features in spec order, the join
    done by pandas (null as NaN)."""
    from deltalake import DeltaTable

    sales = DeltaTable(str(root / "sales")).to_pandas()
    stores = DeltaTable(str(root / "stores")).to_pandas()
    day = sales[sales["ds"] == ds].merge(stores, on="store_id", how="left")
    region = np.stack(day["region_vec"].to_numpy())
    X = np.column_stack(
        [day[c].to_numpy(dtype=float) for c in FEATURES[:5]] + [day["size"].to_numpy(), region]
    )
    return day["id"].to_numpy(), X
