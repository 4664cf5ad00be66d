"""Random star and snowflake schemas with linear (and tree) models, for the factorization tests.

fact (Delta, partitioned by ds): id, fk_a, fk_b, f0, f1 (NaN-able)
  dim_a (Delta, key a_id): a0, a_vec (array<double>), fk_c   -- dim_c hangs below dim_a
    dim_c (Parquet, key c_id): c0
  dim_b (Parquet, key b_id): b0, b_vec (sparse-vector struct)
Some foreign keys are missing from their dimension or null: the left join gives NaN features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import write_deltalake
from sklearn.linear_model import LogisticRegression, Ridge

from batchscore.datasets._write import VECTOR_STRUCT, sha256_file

FEATURES = ["f0", "f1", "dim_a.a0", "dim_a.a_vec", "dim_c.c0", "dim_b.b0", "dim_b.b_vec"]


@dataclass
class Star:
    root: Path
    spec: Path
    X: np.ndarray
    ids: np.ndarray
    models: dict[str, object]


def _vectors(values: np.ndarray) -> pa.Array:
    rows = []
    for row in values:
        nz = np.flatnonzero(row)
        rows.append(
            {"type": 0, "size": len(row), "indices": nz.tolist(), "values": row[nz].tolist()}
        )
    return pa.array(rows, VECTOR_STRUCT)


def build_star(root: Path, *, seed: int, fact_rows: int, a_rows: int, b_rows: int, c_rows: int,
               missing: float, nan_rate: float, mode: str = "always",
               trees: bool = False) -> Star:  # fmt: skip
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    a_vec = rng.normal(size=(a_rows, 3))
    b_vec = (rng.random((b_rows, 8)) < 0.3) * rng.normal(size=(b_rows, 8))

    def keys(rows: int, n: int) -> np.ndarray:
        """Foreign keys into a table of `rows` rows; a share `missing` points past its end."""
        out = rng.integers(0, rows, n)
        out[rng.random(n) < missing] = rows + 7
        return out

    dim_a = {"a_id": np.arange(a_rows, dtype=np.int64), "a0": rng.normal(size=a_rows),
             "fk_c": keys(c_rows, a_rows)}  # fmt: skip
    dim_c = {"c_id": np.arange(c_rows, dtype=np.int64), "c0": rng.normal(size=c_rows)}
    dim_b = {"b_id": np.arange(b_rows, dtype=np.int32), "b0": rng.normal(size=b_rows)}
    fk_a = keys(a_rows, fact_rows)
    fk_b = keys(b_rows, fact_rows).astype(np.int32)
    f0 = rng.normal(size=fact_rows)
    f0[rng.random(fact_rows) < nan_rate] = np.nan
    f1 = rng.normal(size=fact_rows)
    ds = np.where(np.arange(fact_rows) % 2 == 0, "2026-11-20", "2026-11-21")
    null_fk = rng.random(fact_rows) < missing / 2

    fact = pa.table({
        "id": np.arange(fact_rows, dtype=np.int64), "ds": ds,
        "fk_a": pa.array(fk_a, pa.int64(), mask=null_fk), "fk_b": fk_b, "f0": f0, "f1": f1,
    })  # fmt: skip
    write_deltalake(str(root / "fact"), fact, partition_by=["ds"])
    write_deltalake(str(root / "dim_a"), pa.table({**dim_a, "a_vec": pa.array(list(a_vec))}))
    (root / "dim_b").mkdir(exist_ok=True)
    pq.write_table(pa.table({**dim_b, "b_vec": _vectors(b_vec)}), root / "dim_b" / "part-0.parquet")
    (root / "dim_c").mkdir(exist_ok=True)
    pq.write_table(pa.table(dim_c), root / "dim_c" / "part-0.parquet")

    # The materialized left join, in numpy.
    def lookup(keys: np.ndarray, valid: np.ndarray, table: np.ndarray) -> np.ndarray:
        ok = valid & (keys < len(table))
        out = np.full((len(keys), *table.shape[1:]), np.nan)
        out[ok] = table[keys[ok]]
        return out

    valid_a = ~null_fk
    a_cols = np.c_[dim_a["a0"], a_vec]
    c_for_a = lookup(dim_a["fk_c"], np.ones(a_rows, bool), dim_c["c0"][:, None])
    a_full = np.c_[a_cols, c_for_a]
    X = np.c_[
        f0,
        f1,
        lookup(fk_a, valid_a, a_full),
        lookup(fk_b, np.ones(fact_rows, bool), np.c_[dim_b["b0"], b_vec]),
    ]
    complete = ~np.isnan(X).any(axis=1)
    y = X[complete] @ rng.normal(size=X.shape[1])
    classes = np.digitize(y, np.quantile(y, [0.33, 0.66]))
    models = {
        "ridge": Ridge(alpha=0.5).fit(X[complete], y),
        "multi": LogisticRegression(max_iter=2000).fit(X[complete], classes),
        "binary": LogisticRegression(max_iter=2000).fit(
            X[complete], np.where(classes > 0, "yes", "no")
        ),
    }
    if trees:  # tree ensembles see every row: NaN is their missing value
        import lightgbm as lgb
        from sklearn.ensemble import RandomForestRegressor

        target = np.nan_to_num(X) @ rng.normal(size=X.shape[1])
        models["lgbm"] = lgb.LGBMClassifier(
            n_estimators=25, num_leaves=12, min_child_samples=3, verbose=-1, random_state=seed
        ).fit(X, np.digitize(target, np.quantile(target, [0.4, 0.7])))
        models["forest"] = RandomForestRegressor(
            n_estimators=8, max_depth=6, random_state=seed
        ).fit(np.nan_to_num(X), target)
    lines = [
        "name: star_job",
        "tables:",
        "  fact: {path: fact, format: delta, partition_by: [ds]}",
        "  dim_a: {path: dim_a, format: delta, key: a_id}",
        "  dim_b: {path: dim_b, format: parquet, key: b_id}",
        "  dim_c: {path: dim_c, format: parquet, key: c_id}",
        "source:",
        "  table: fact",
        "  where: \"ds = '{run_date}'\"",
        "  joins:",
        "    - table: dim_a",
        "      on: {fk_a: a_id}",
        "      joins: [{table: dim_c, on: {fk_c: c_id}}]",
        "    - {table: dim_b, on: {fk_b: b_id}}",
        "  id_columns: [id, ds]",
        "models:",
    ]
    for name, model in models.items():
        path = root / f"{name}.joblib"
        joblib.dump(model, path)
        lines += [f"  - name: {name}", f"    path: {path.name}", f"    sha256: {sha256_file(path)}",
                  f"    features: [{', '.join(FEATURES)}]"]  # fmt: skip
    lines += ["output: {path: out, partition_by: [ds], mode: overwrite_partitions}",
              f"planner: {{factorize: {mode}}}"]  # fmt: skip
    spec = root / "job.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return Star(root, spec, X, np.arange(fact_rows), models)
