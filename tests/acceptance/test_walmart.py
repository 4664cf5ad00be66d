"""Acceptance on the real Walmart star schema: all 421,570 fact rows, exact parity with sklearn."""

from __future__ import annotations

from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

import batchscore as bs
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.spark


def test_walmart_scores_every_row_exactly(spark: Any, walmart: Any) -> None:
    from batchscore.datasets.morpheus import materialize_walmart

    info = walmart
    result = bs.run(info.conf_path, spark=spark)
    assert result.status == "committed"
    table = pa.table(DeltaTable(str(info.output_path)).to_pyarrow_table())
    X, _ = materialize_walmart(SHARED_DATA)
    model = joblib.load(info.model_paths["walmart_logreg"])
    rows = table.filter(pc.equal(table["model"], "walmart_logreg")).sort_by("sale_id")
    assert rows.num_rows == X.shape[0] == 421_570
    assert rows["sale_id"].to_pylist() == list(range(421_570))
    probability = np.asarray(pc.list_flatten(rows["probability"]).to_numpy(), dtype=float).reshape(
        -1, 7
    )
    assert np.max(np.abs(probability - model.predict_proba(X))) <= 1e-9
    assert rows["label"].to_pylist() == [str(c) for c in model.predict(X)]
    assert table.filter(pc.equal(table["model"], "walmart_lgbm")).num_rows == 421_570
