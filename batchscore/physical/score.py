"""Scoring inside Spark: one mapInArrow pass that scores every model on each Arrow batch.

The function shipped to executors closes over plain data (kernels, column descriptions,
constants), so nothing Spark-specific is pickled. Each model's matrix is assembled from the
batch once; models reading the same columns share the assembled blocks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from batchscore.errors import BatchScoreError, StepError
from batchscore.kernels.base import Kernel, ScoreOutput
from batchscore.kernels.trees.compiled.toolchain import EXECUTOR_ENV

if TYPE_CHECKING:
    from batchscore.kernels.batched import AffineGroup
    from batchscore.kernels.trees.merged import TreeGroup
    from batchscore.physical.monitoring import MonitorTally, RunMonitor
    from batchscore.physical.validation import InPassChecks, RuleTally
from batchscore.physical.assemble import Block, Column, assemble
from batchscore.physical.columns import (
    constant_strings,
    prediction_columns,
    timestamps,
)
from batchscore.physical.input_stack import InputStack
from batchscore.physical.lookups import LookupJoins
from batchscore.physical.null_counts import NullTally, count_reasons, null_rows
from batchscore.physical.profile import (
    ASSEMBLE,
    MONITOR,
    OUTPUT,
    UPSTREAM,
    VALIDATE,
    WRITE,
    StageClock,
)
from batchscore.physical.roles import ALWAYS, served_mask
from batchscore.physical.task_failures import fail_once


@dataclass(frozen=True)
class ScoringModel:
    """What an executor needs of one model: its kernel, its columns and its output constants."""

    name: str
    version: str
    kernel: Kernel
    proba: bool
    columns: tuple[Column, ...]
    present: tuple[str, ...] = ()
    """Present flags of the joined tables this model reads (null where the left join found no
    row): how a null prediction is attributed to a missing dimension row."""
    role: str = "champion"
    serves: tuple[float, float] = ALWAYS
    """The bucket range of the rows this model serves (physical.roles)."""


@dataclass(frozen=True)
class IdField:
    ref: str
    name: str


@dataclass(frozen=True)
class ScoringGroup:
    """Models (by index into ScoringTask.models) scored from one union matrix."""

    members: tuple[int, ...]
    columns: tuple[Column, ...]
    group: AffineGroup | TreeGroup


@dataclass(frozen=True)
class ScoringTask:
    models: tuple[ScoringModel, ...]
    ids: tuple[IdField, ...]
    layout: str
    run_id: str
    scored_at: datetime
    threads: int
    groups: tuple[ScoringGroup, ...] = ()
    profile_dir: str | None = None
    """Where each task writes its stage times (`batchscore run --profile`), or None."""
    null_dir: str | None = None
    """Where each task writes its null-prediction counts (physical.null_counts), or None."""
    monitor: RunMonitor | None = None
    """What each task profiles of the models' inputs and outputs (physical.monitoring)."""
    checks: InPassChecks | None = None
    """Validation rules counted on the scored rows (`warn` rules; physical.validation)."""
    roles: bool = False
    """Write each model's `role` and `served` (long) or `<model>__served` (wide) columns."""
    lookups: LookupJoins | None = None
    """Small dimensions this task joins to its batches itself (physical.lookups)."""

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        limit_threads(self.threads)
        tally = NullTally() if self.null_dir is not None else None
        watch = self.monitor.start() if self.monitor is not None else None
        rules = self.checks.start() if self.checks is not None else None
        if self.profile_dir is not None:
            yield from self._profiled(batches, self.profile_dir, tally, watch, rules)
        else:
            for raw in batches:
                if raw.num_rows == 0:
                    continue
                batch, cache = self.joined(raw, thin=self._thin)
                outputs = self.score(raw, batch, cache, tally=tally, watch=watch, rules=rules)
                yield (
                    self._long(batch, outputs)
                    if self.layout == "long"
                    else self._wide(batch, outputs)
                )
                fail_once(self.run_id)  # a test hook, inert unless its variable is set
        if tally is not None and self.null_dir is not None:
            tally.dump(self.null_dir)
        if watch is not None:
            watch.dump()
        if rules is not None and self.checks is not None:
            self.checks.dump(rules)

    def _profiled(
        self,
        batches: Iterator[pa.RecordBatch],
        folder: str,
        tally: NullTally | None = None,
        watch: MonitorTally | None = None,
        rules: RuleTally | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The same loop, timed stage by stage (physical.profile)."""
        clock = StageClock()
        source = iter(batches)
        try:
            while True:
                with clock.stage(UPSTREAM):
                    raw = next(source, None)
                    if raw is not None:
                        batch, cache = self.joined(raw, thin=self._thin)
                if raw is None:
                    break
                if raw.num_rows == 0:
                    continue
                clock.rows += raw.num_rows
                clock.batches += 1
                outputs = self.score(raw, batch, cache, clock, tally, watch, rules)
                with clock.stage(OUTPUT):
                    out = (
                        self._long(batch, outputs)
                        if self.layout == "long"
                        else self._wide(batch, outputs)
                    )
                with clock.stage(WRITE):  # the writer writes while this generator waits
                    yield out
        finally:
            clock.dump(folder)

    def joined(self, raw: pa.RecordBatch, *, thin: bool) -> tuple[pa.RecordBatch, dict[str, Block]]:
        """The batch with its lookup joins done, and the blocks they gathered. `thin`: the
        looked-up columns the models read come as blocks alone, for a task that only scores
        (monitoring and validation read the joined columns too)."""
        if self.lookups is None:
            return raw, {}
        return self.lookups.join(raw, self._inputs, thin=thin)

    @property
    def _thin(self) -> bool:
        return self.monitor is None and self.checks is None

    @cached_property
    def _inputs(self) -> tuple[Column, ...]:
        """Every column the models assemble (once per task, not per batch)."""
        columns = [c for g in self.groups for c in g.columns]
        columns += [c for m in self.models for c in m.columns]
        return tuple({c.ref: c for c in columns}.values())

    def _full(self, raw: pa.RecordBatch, batch: pa.RecordBatch) -> pa.RecordBatch:
        """`batch` with every joined column (a thin join leaves some out)."""
        if self.lookups is None or batch.num_columns == len(self.lookups.names):
            return batch
        return self.lookups.join(raw)[0]

    def score(
        self,
        raw: pa.RecordBatch,
        batch: pa.RecordBatch,
        cache: dict[str, Block],
        clock: StageClock | None = None,
        tally: NullTally | None = None,
        watch: MonitorTally | None = None,
        rules: RuleTally | None = None,
    ) -> list[ScoreOutput]:
        """Every model's output for one batch (`raw` before its lookup joins, `cache` the
        blocks they gathered). Numeric warnings (overflow in exp, NaN inputs) never reach
        stderr: such rows are null and counted (`tally`); `watch` profiles inputs and
        outputs for monitoring."""
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            outputs = self._score_models(batch, cache, clock or StageClock())
            if tally is not None:
                full = batch
                for model, out in zip(self.models, outputs, strict=True):
                    null = null_rows(out)
                    if null.any():
                        full = self._full(raw, full)  # joined once, for the first null
                        tally.add(model.name, count_reasons(full, model, null, cache))
            stack = InputStack(batch, cache)  # each input read once, shared by both
            if watch is not None:
                with (clock or StageClock()).stage(MONITOR):
                    watch.observe(stack, [m.name for m in self.models], outputs)
            if rules is not None:
                with (clock or StageClock()).stage(VALIDATE):
                    rules.add(stack)
        return outputs

    def _score_models(
        self, batch: pa.RecordBatch, cache: dict[str, Block], timing: StageClock
    ) -> list[ScoreOutput]:
        done: dict[int, ScoreOutput] = {}
        for group in self.groups:
            with timing.stage(ASSEMBLE):
                matrix = assemble(batch, group.columns, cache)
            flags = [self.models[i].proba for i in group.members]
            names = ", ".join(self.models[i].name for i in group.members)
            try:
                with timing.stage(f"score {names}"):
                    scored = group.group.score(matrix, flags)
            except BatchScoreError:
                raise
            except Exception as exc:
                raise StepError(
                    f"Step 'score[{names}]' failed: {type(exc).__name__}: {exc}"
                ) from exc
            done.update(zip(group.members, scored, strict=True))
        outputs = []
        for index, model in enumerate(self.models):
            if index in done:
                outputs.append(done[index])
                continue
            with timing.stage(ASSEMBLE):
                matrix = assemble(batch, model.columns, cache)
            try:
                with timing.stage(f"score {model.name}"):
                    outputs.append(model.kernel.score(matrix, proba=model.proba))
            except BatchScoreError:
                raise
            except Exception as exc:
                raise StepError(
                    f"Step 'score[{model.name}]' failed: {type(exc).__name__}: {exc}"
                ) from exc
        return outputs

    def _ids(self, batch: pa.RecordBatch) -> list[pa.Array]:
        return [batch.column(batch.schema.get_field_index(i.ref)) for i in self.ids]

    def _long(self, batch: pa.RecordBatch, outputs: Sequence[ScoreOutput]) -> pa.RecordBatch:
        n = batch.num_rows
        ids = self._ids(batch)
        columns: list[list[pa.Array]] = [[] for _ in range(len(ids) + 5 + 2 * self.roles)]
        for model, out in zip(self.models, outputs, strict=True):
            role = []
            if self.roles:
                served = pa.array(served_mask(model.serves, batch), pa.bool_())
                role = [constant_strings(model.role, n), served]
            parts = [
                *ids,
                constant_strings(model.name, n),
                constant_strings(model.version, n),
                *role,
                *prediction_columns(out, n, model.kernel.classes),
            ]
            for i, part in enumerate(parts):
                columns[i].append(part)
        arrays = [pa.concat_arrays(c) for c in columns]
        total = n * len(self.models)
        arrays += [constant_strings(self.run_id, total), timestamps(self.scored_at, total)]
        return pa.RecordBatch.from_arrays(arrays, names=long_names(self.ids, roles=self.roles))

    def _wide(self, batch: pa.RecordBatch, outputs: Sequence[ScoreOutput]) -> pa.RecordBatch:
        n = batch.num_rows
        arrays = self._ids(batch)
        for model, out in zip(self.models, outputs, strict=True):
            arrays.extend(prediction_columns(out, n, model.kernel.classes))
            if self.roles:
                arrays.append(pa.array(served_mask(model.serves, batch), pa.bool_()))
        arrays += [constant_strings(self.run_id, n), timestamps(self.scored_at, n)]
        names = wide_names(self.ids, self.models, roles=self.roles)
        return pa.RecordBatch.from_arrays(arrays, names=names)


def long_names(ids: Sequence[IdField], *, roles: bool = False) -> list[str]:
    return [
        *(i.name for i in ids),
        "model",
        "model_version",
        *(("role", "served") if roles else ()),
        "prediction",
        "label",
        "probability",
        "run_id",
        "scored_at",
    ]


def wide_names(
    ids: Sequence[IdField], models: Sequence[ScoringModel], *, roles: bool = False
) -> list[str]:
    names = [i.name for i in ids]
    for model in models:
        names += [f"{model.name}__prediction", f"{model.name}__label", f"{model.name}__probability"]
        if roles:
            names.append(f"{model.name}__served")
    return [*names, "run_id", "scored_at"]


def limit_threads(threads: int) -> None:
    """BLAS/OpenMP/LightGBM threads follow spark.task.cpus, so executors don't oversubscribe.

    Inside a Spark task the process is also marked as an executor: compiled trees arrive with
    their library's bytes, and a marked process refuses to compile (toolchain.EXECUTOR_ENV).
    """
    os.environ["BATCHSCORE_THREADS"] = str(threads)
    from pyspark import TaskContext

    if TaskContext.get() is not None:
        os.environ[EXECUTOR_ENV] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


ScoreFn = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]
