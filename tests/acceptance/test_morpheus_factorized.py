"""Factorized == the models' own output on the real star schemas (Walmart and Flights).

`planner.factorize: always` pushes the logistic regression AND the LightGBM model through
every join (dimension-side partial scores and QuickScorer words), whatever the cost model
would choose; each model's output must still equal its own predictions on the materialized
features: probabilities within 1e-9, labels identical. Walmart is restricted to its first
60,000 sales (a `where` on the fact table; the dimension partials still cover every dimension
row) to keep the suite short; Flights is scored whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

import batchscore as bs
from tests.conftest import SHARED_DATA

pytestmark = [
    pytest.mark.spark,
    pytest.mark.usefixtures("shared_data"),
]


def _always(conf: Path, out: Path, where: str | None = None) -> Path:
    text = conf.read_text()
    text = text.replace("factorize: auto", "factorize: always")
    if "factorize: always" not in text:
        text += "planner: {factorize: always}\n"
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  path:") and i and lines[i - 1].startswith("output:"):
            lines[i] = f"  path: {out}"
        if where and line.startswith("  table:") and i and lines[i - 1].startswith("source:"):
            lines.insert(i + 1, f'  where: "{where}"')
    path = conf.with_name(f"always_{out.name}.yaml")
    path.write_text("\n".join(lines) + "\n")
    return path


def _check(spec: Path, info: Any, X: Any, rows: np.ndarray, id_column: str, spark: Any) -> None:
    text = bs.explain(bs.load_spec(spec))
    assert text.count("factorize (planner.factorize: always)") >= 2 * len(info.dim_paths)
    assert "factorized: fact side compiled: walks the split trees" in text
    result = bs.run(spec, spark=spark)
    assert result.status == "committed"
    table = pa.table(DeltaTable(str(bs.load_spec(spec).output.path)).to_pyarrow_table())
    for name, path in info.model_paths.items():
        got = table.filter(pc.equal(table["model"], name)).sort_by(id_column)
        assert got[id_column].to_pylist() == rows.tolist()
        if str(path).endswith(".txt"):
            raw = lgb.Booster(model_file=str(path)).predict(X[rows])
            want = np.c_[1 - raw, raw] if raw.ndim == 1 else raw
            classes = info_classes(got)
            labels = [classes[i] for i in np.argmax(want, axis=1)]
        else:
            model = joblib.load(path)
            want = model.predict_proba(X[rows])
            labels = [str(c) for c in model.predict(X[rows])]
        width = want.shape[1]
        proba = np.asarray(pc.list_flatten(got["probability"]).to_numpy(), dtype=float)
        np.testing.assert_allclose(proba.reshape(-1, width), want, rtol=1e-9, atol=1e-12)
        assert got["label"].to_pylist() == labels, name


def info_classes(rows: pa.Table) -> list[str]:
    """A bare Booster's classes are "0".."k-1" (it has no classes_)."""
    width = len(rows["probability"][0].as_py())
    return [str(i) for i in range(width)]


def test_walmart_factorized_glm_and_trees_equal_the_models(spark: Any, walmart: Any) -> None:
    from batchscore.datasets.morpheus import materialize_walmart

    spec = _always(walmart.conf_path, walmart.root / "out" / "factorized", "sale_id < 60000")
    X, _ = materialize_walmart(SHARED_DATA)
    _check(spec, walmart, X.tocsr(), np.arange(60_000), "sale_id", spark)


def test_flights_factorized_glm_and_trees_equal_the_models(spark: Any, tmp_path: Path) -> None:
    from batchscore.datasets.morpheus import build_flights, materialize_flights

    info = build_flights(tmp_path, conf_path=tmp_path / "conf" / "flights.yaml",
                         shared=SHARED_DATA, spark=spark)  # fmt: skip
    spec = _always(info.conf_path, tmp_path / "out" / "factorized")
    X, _ = materialize_flights(SHARED_DATA)
    _check(spec, info, X.tocsr(), np.arange(info.n_rows), _id_column(info), spark)


def _id_column(info: Any) -> str:
    return str(info.id_columns[0])
