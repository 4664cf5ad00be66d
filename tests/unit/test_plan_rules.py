"""Each optimizer rule on a synthetic catalog: tables described in memory (schema, partitions,
file list), models fitted in memory. No file is read, no Spark starts: a rule's decision
depends only on the catalog and the models, and these tests pin it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from batchscore.models.compiled import CompiledModel, compile_from_object
from batchscore.plan.bind import bind
from batchscore.plan.catalog import TableInfo
from batchscore.plan.cost import LOOKUP_BYTE_WEIGHT
from batchscore.plan.explain import explain
from batchscore.plan.lookups import ENV as LOOKUP_ENV
from batchscore.plan.nodes import Join, LogicalPlan, Partial, Scan
from batchscore.plan.optimizer import optimize
from batchscore.plan.rules import (
    RULES,
    batch_models,
    eliminate_unused_joins,
    factorize_linear,
    factorize_trees,
    prune_columns,
    prune_partitions,
)
from batchscore.plan.spread import (
    MOVED_SHARE,
    SHUFFLE_FACTOR,
    SPLIT_COST,
    SPLIT_READ_FACTOR,
    STAGE_COST,
    fact_bytes_per_row,
    shuffle_saving,
    split_saving,
    task_cost_per_row,
    worth_spreading,
)
from batchscore.spec.load import parse_spec
from batchscore.spec.model import JobSpec, ModelSpec, TableSpec

DIM_WIDTH = 40
File = tuple[str, dict[str, str | None], int, int]


def _schema(**columns: pa.DataType) -> pa.Schema:
    return pa.schema([pa.field(name, dtype) for name, dtype in columns.items()])


FACT = _schema(id=pa.int64(), ds=pa.string(), dim_id=pa.int64(), other_id=pa.int64(),
               x1=pa.float64(), x2=pa.float64())  # fmt: skip
DIM = _schema(dim_id=pa.int64(), v=pa.list_(pa.float64(), DIM_WIDTH), z=pa.float64())
OTHER = _schema(other_id=pa.int64(), w=pa.float64())


def _catalog(fact_rows: int, dim_rows: int) -> Callable[[str, TableSpec], TableInfo]:
    """Three tables: fact (partitioned by ds, one 8 MB file per day), dim, other."""
    layouts: dict[str, tuple[pa.Schema, list[str], list[File]]] = {
        "fact": (
            FACT,
            ["ds"],
            [
                (f"ds={d}/part-0.parquet", {"ds": d}, 8 << 20, fact_rows // 3)
                for d in ("2026-11-19", "2026-11-20", "2026-11-21")
            ],
        ),
        "dim": (DIM, [], [("part-0.parquet", {}, dim_rows * 8 * DIM_WIDTH, dim_rows)]),
        "other": (OTHER, [], [("part-0.parquet", {}, 1 << 10, 10)]),
    }

    def describe(name: str, spec: TableSpec) -> TableInfo:
        schema, parts, files = layouts[name]
        info = TableInfo(name, spec, schema, parts, 0)
        info.__dict__["files"] = files  # the listing a real table would give
        return info

    return describe


def _spec(models: str, *, where: str = "", joins: str = "") -> JobSpec:
    quarantine = ", quarantine: /nowhere/quarantine" if "quarantine" in joins else ""
    text = f"""
name: synthetic
tables:
  fact: {{path: /nowhere/fact, format: delta, partition_by: [ds]}}
  dim: {{path: /nowhere/dim, format: delta, key: dim_id}}
  other: {{path: /nowhere/other, format: delta, key: other_id}}
source:
  table: fact
  joins:
  - {{table: dim, on: {{dim_id: dim_id}}}}
  - {{table: other, on: {{other_id: other_id}}{joins}}}
  id_columns: [id, ds]
  {where}
models:
{models}
output: {{path: /nowhere/out{quarantine}}}
"""
    return parse_spec(text)


def _linear(n: int, classifier: bool = False, seed: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, n))
    y = X @ rng.normal(size=n)
    return LogisticRegression().fit(X, y > 0) if classifier else LinearRegression().fit(X, y)


def _trees(n: int) -> Any:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, n))
    return lgb.LGBMRegressor(n_estimators=30, num_leaves=15, verbose=-1).fit(X, X[:, 0] - X[:, 3])


def _loader(objects: dict[str, Any]) -> Callable[[ModelSpec], CompiledModel]:
    def load(model: ModelSpec) -> CompiledModel:
        return compile_from_object(model.name, objects[model.name], output=model.output)

    return load


def _plan(
    spec: JobSpec,
    objects: dict[str, Any],
    rules: Sequence[Any],
    *,
    fact_rows: int = 3_000_000,
    dim_rows: int = 1_000,
) -> LogicalPlan:
    naive = bind(spec, load_model=_loader(objects), describe=_catalog(fact_rows, dim_rows))
    return optimize(naive, rules)


def _scans(plan: LogicalPlan) -> dict[str, Scan]:
    return {n.table: n for n in plan.nodes() if isinstance(n, Scan)}


def _decisions(plan: LogicalPlan, rule: str) -> list[str]:
    return [d.text for d in plan.decisions if d.rule == rule]


WIDE = "[x1, x2, dim.v, dim.z]"  # 2 fact + 41 dimension inputs


def test_eliminate_unused_joins_drops_a_dimension_no_model_reads() -> None:
    spec = _spec(f"- {{name: m, path: m.joblib, features: {WIDE}}}")
    plan = _plan(spec, {"m": _linear(2 + DIM_WIDTH + 1)}, [eliminate_unused_joins])
    joined = {n.table for n in plan.nodes() if isinstance(n, Join)}
    assert joined == {"dim"}
    assert any("other" in text for text in _decisions(plan, "eliminate_unused_joins"))


def test_eliminate_unused_joins_keeps_a_quarantining_join() -> None:
    spec = _spec(f"- {{name: m, path: m.joblib, features: {WIDE}}}",
                 joins=", on_missing: quarantine")  # fmt: skip
    plan = _plan(spec, {"m": _linear(2 + DIM_WIDTH + 1)}, [eliminate_unused_joins])
    assert {n.table for n in plan.nodes() if isinstance(n, Join)} == {"dim", "other"}


def test_prune_partitions_turns_the_where_into_partition_filters() -> None:
    spec = _spec("- {name: m, path: m.joblib, features: [x1, x2]}",
                 where="where: \"ds = '2026-11-21'\"")  # fmt: skip
    plan = _plan(spec, {"m": _linear(2)}, [prune_partitions])
    fact = _scans(plan)["fact"]
    assert list(fact.partition_filters) == [("ds", "=", "2026-11-21")]
    assert len(plan.tables["fact"].select_files(list(fact.partition_filters))) == 1


def test_prune_columns_reads_only_keys_ids_and_features() -> None:
    spec = _spec("- {name: m, path: m.joblib, features: [x1, dim.z]}")
    plan = _plan(spec, {"m": _linear(2)}, [eliminate_unused_joins, prune_columns])
    scans = _scans(plan)
    assert set(scans["fact"].columns or ()) == {"id", "ds", "dim_id", "x1"}
    assert set(scans["dim"].columns or ()) == {"dim_id", "z"}


@pytest.mark.parametrize(
    ("fact_rows", "dim_rows", "factorized"),
    [(3_000_000, 1_000, True), (3_000, 1_000, False)],
    ids=["many-fact-rows-per-dimension-row", "about-one-per-dimension-row"],
)
def test_factorize_linear_follows_the_tuple_ratio(
    fact_rows: int, dim_rows: int, factorized: bool
) -> None:
    spec = _spec(f"- {{name: m, path: m.joblib, features: {WIDE}}}")
    rules = [eliminate_unused_joins, prune_columns, factorize_linear]
    plan = _plan(spec, {"m": _linear(2 + DIM_WIDTH + 1)}, rules, fact_rows=fact_rows,
                 dim_rows=dim_rows)  # fmt: skip
    assert any(isinstance(n, Partial) for n in plan.nodes()) is factorized
    text = " ".join(_decisions(plan, "factorize_linear"))
    assert ("dim: factorize" in text) is factorized, text


@pytest.mark.parametrize(
    ("fact_rows", "factorized"),
    [(3_000_000, True), (3_000, False)],
    ids=["many-fact-rows-per-dimension-row", "about-one-per-dimension-row"],
)
def test_factorize_trees_follows_the_tuple_ratio(
    fact_rows: int, factorized: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dimension joined by Spark (lookup joins off): its features cross the JVM."""
    monkeypatch.setenv(LOOKUP_ENV, "0")
    spec = _spec(f"- {{name: t, path: t.joblib, features: {WIDE}}}")
    rules = [eliminate_unused_joins, prune_columns, factorize_trees]
    plan = _plan(spec, {"t": _trees(2 + DIM_WIDTH + 1)}, rules, fact_rows=fact_rows)
    decided = " ".join(_decisions(plan, "factorize_trees"))
    assert ("dim: factorize" in decided) is factorized, decided
    assert any(isinstance(n, Partial) for n in plan.nodes()) is factorized


def _materialize_mb(decided: str) -> float:
    return float(decided.split("materialize: join ")[1].split(" MB")[0].replace(",", ""))


def test_a_looked_up_dimension_counts_its_bytes_gathered_not_joined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With lookup joins (the default) the small dimension ships with the scoring task:
    materializing it moves LOOKUP_BYTE_WEIGHT of the bytes a Spark join moves, so the trees
    that factorize with Spark's join keep the dimension whole, and explain says where it joins."""
    spec = _spec(f"- {{name: t, path: t.joblib, features: {WIDE}}}")
    rules = [eliminate_unused_joins, prune_columns, factorize_trees]
    plan = _plan(spec, {"t": _trees(2 + DIM_WIDTH + 1)}, rules, fact_rows=3_000_000)
    decided = " ".join(_decisions(plan, "factorize_trees"))
    assert "dim: materialize" in decided, decided
    assert not any(isinstance(n, Partial) for n in plan.nodes())
    assert "LeftJoin dim ON fact.dim_id = dim.dim_id  (in the scoring task" in explain(plan)
    monkeypatch.setenv(LOOKUP_ENV, "0")
    spark_joined = _plan(spec, {"t": _trees(2 + DIM_WIDTH + 1)}, rules, fact_rows=3_000_000)
    by_spark = " ".join(_decisions(spark_joined, "factorize_trees"))
    expected = LOOKUP_BYTE_WEIGHT * _materialize_mb(by_spark)
    assert _materialize_mb(decided) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize(
    ("fact_rows", "model", "spread"),
    [(3_000_000, "glm", True), (200_000, "glm", False), (1_000_000, "trees", True),
     (30_000, "trees", False)],
    ids=["glm-many-rows", "glm-fewer-rows", "trees-more-rows", "trees-few-rows"],
)  # fmt: skip
def test_spreading_the_fact_scan_follows_the_task_work(
    fact_rows: int, model: str, spread: bool
) -> None:
    """Spreading pays when the share of the scoring task's work it takes off the clock
    outweighs what the split re-decodes (or the shuffle moves) plus its fixed cost. The split
    is the cheaper way wherever the reader allows it; the shuffle pays for none of these."""
    spec = _spec(f"- {{name: m, path: m.joblib, features: {WIDE}}}")
    obj = _linear(2 + DIM_WIDTH + 1) if model == "glm" else _trees(2 + DIM_WIDTH + 1)
    plan = _plan(spec, {"m": obj}, [eliminate_unused_joins, prune_columns], fact_rows=fact_rows)
    assert worth_spreading(plan) is spread
    assert (split_saving(plan) > 0) is spread
    assert shuffle_saving(plan) < split_saving(plan)
    line = next(x for x in explain(plan).splitlines() if "[spread]" in x)
    assert line.split("fact: ")[1].startswith("spread" if spread else "not spread"), line
    assert ("split by row position saves" in line) is spread, line
    moved = MOVED_SHARE * task_cost_per_row(plan)
    width = fact_bytes_per_row(plan)
    rows = 3 * (fact_rows // 3)  # the where-less scan reads all three days
    split = rows * (moved - SPLIT_READ_FACTOR * width) - SPLIT_COST
    assert split_saving(plan) == pytest.approx(split)
    shuffle = rows * (moved - SHUFFLE_FACTOR * width) - STAGE_COST
    assert shuffle_saving(plan) == pytest.approx(shuffle)


def test_batch_models_groups_glms_over_the_same_inputs() -> None:
    models = "\n".join(f"- {{name: m{i}, path: m{i}.joblib, features: [x1, x2]}}" for i in range(3))
    spec = _spec(models)
    objects = {f"m{i}": _linear(2, classifier=i == 1, seed=i) for i in range(3)}
    plan = _plan(spec, objects, [eliminate_unused_joins, batch_models])
    assert [sorted(g.names) for g in plan.groups] == [["m0", "m1", "m2"]]


def test_every_rule_is_registered_once_in_order() -> None:
    assert RULES == (
        eliminate_unused_joins,
        prune_partitions,
        factorize_linear,
        factorize_trees,
        batch_models,
        prune_columns,
    )


def test_explain_of_the_synthetic_plan_is_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden lines of `explain` for the whole rule set on one synthetic job (its join
    done by Spark)."""
    monkeypatch.setenv(LOOKUP_ENV, "0")
    spec = _spec(f"- {{name: m, path: m.joblib, features: {WIDE}}}",
                 where="where: \"ds = '2026-11-21'\"")  # fmt: skip
    plan = _plan(spec, {"m": _linear(2 + DIM_WIDTH + 1)}, RULES)
    text = explain(plan)
    for line in (
        "Write delta /nowhere/out",
        "[eliminate_unused_joins]",
        "[prune_partitions] fact:",
        "[factorize_linear] dim: factorize",
        "[prune_columns] fact:",
    ):
        assert line in text, text
