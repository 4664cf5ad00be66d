"""Monitoring inside the scoring pass: every model's inputs and outputs profiled as they are
scored, so drift costs no second scan of the fact table.

The scoring task (physical.score) hands each batch's assembled blocks (shared with scoring) and
outputs to `RunMonitor.observe`; accumulators (monitor.accumulate) keep exact counts and
moments, exact counts in the training profile's bins, and, for predictions, a quantile sketch
(a prediction's bins for the next run come from it when no training profile describes the
predictions). Like the null counts, each task writes its accumulators as one JSON file under
`<table>/_batchscore/monitor/<run id>/`, named by its partition so a retried attempt replaces
its predecessor's file; the driver merges them into one profile per model after the commit
(`collect_run_profiles`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from batchscore.errors import DataError
from batchscore.kernels.base import ScoreOutput
from batchscore.monitor.accumulate import FeatureAccumulator, merge_features
from batchscore.monitor.bins import EdgeIndex
from batchscore.monitor.native_bins import InputSet, NativeBins
from batchscore.monitor.profile import FeatureProfile, Profile
from batchscore.monitor.rules import FeatureInput
from batchscore.physical.assemble import Column, assemble
from batchscore.physical.columns import labels
from batchscore.physical.comparison import ComparisonTally, Pairing, merge_comparisons
from batchscore.physical.input_stack import InputColumn, InputStack, assembly_kind
from batchscore.physical.task_files import (
    read_task_files,
    remove_task_files,
    task_dir,
    task_name,
    write_task_file,
)

PREDICTION = "prediction"
LABEL = "label"


def monitor_dir(table_path: str, run_id: str) -> str:
    return task_dir(table_path, "monitor", run_id)


@dataclass(frozen=True)
class MonitoredInput:
    """One monitored input of a model and the bins its training profile gives it."""

    feature: FeatureInput
    edges: tuple[float, ...] | None = None

    @cached_property
    def key(self) -> str:
        """Models that read the same input with the same bins share one accumulator."""
        edges = b"none" if self.edges is None else np.asarray(self.edges, np.float64).tobytes()
        bins = hashlib.sha1(edges).hexdigest()[:12]  # stable across processes
        return f"{self.feature.name}|{bins}"


@dataclass(frozen=True)
class MonitoredModel:
    name: str
    inputs: tuple[MonitoredInput, ...]
    prediction_edges: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RunMonitor:
    """What the scoring task measures (picklable; one per run)."""

    models: tuple[MonitoredModel, ...]
    folder: str
    sketch: bool = False
    """Keep a quantile sketch of every input too (training profiles: their bins come from it)."""
    pairing: Pairing | None = None
    """Challengers to compare with their champions (physical.comparison)."""
    native: NativeBins | None = None
    """The driver's compiled bin counting (monitor.native_bins; None: numpy)."""

    def start(self) -> MonitorTally:
        compare = ComparisonTally(self.pairing) if self.pairing is not None else None
        return MonitorTally(self, compare=compare)


@dataclass
class MonitorTally:
    """One task's accumulators."""

    monitor: RunMonitor
    features: dict[str, FeatureAccumulator] = field(default_factory=dict)
    outputs: dict[str, dict[str, FeatureAccumulator]] = field(default_factory=dict)
    compare: ComparisonTally | None = None
    buffers: np.ndarray = field(default_factory=lambda: np.empty((2, 0)))
    inputs: dict[tuple[int, ...], InputSet] = field(default_factory=dict)
    """The native summary's fixed arguments per set of accumulators (the same every batch)."""

    def observe(
        self, stack: InputStack, names: Sequence[str], outputs: Sequence[ScoreOutput]
    ) -> None:
        """Add one scored batch: `outputs` of the models `names`, in that order."""
        batch = stack.batch
        by_name = dict(zip(names, outputs, strict=True))
        scratch = self._scratch(batch.num_rows)
        done: set[str] = set()  # models sharing an input and its bins share its accumulator
        native: list[tuple[FeatureAccumulator, InputColumn, FeatureInput]] = []
        for model in self.monitor.models:
            for monitored in model.inputs:
                if monitored.key in done:
                    continue
                done.add(monitored.key)
                if monitored.key not in self.features:
                    self.features[monitored.key] = _accumulator(
                        batch, monitored, sketch=self.monitor.sketch, native=self.monitor.native
                    )
                acc = self.features[monitored.key]
                if acc.summarized_natively and monitored.feature.kind != "sparse":
                    values = stack.column(monitored.feature)
                    if values.may_be_clean():
                        native.append((acc, values, monitored.feature))
                        continue
                _add_input(acc, stack, monitored.feature, scratch)
        if native:
            self._summarize(native, stack, scratch)
        for model in self.monitor.models:
            out = by_name.get(model.name)
            if out is not None:
                self._add_output(model, out, batch.num_rows)
        if self.compare is not None:
            self.compare.observe(batch, by_name)

    def _summarize(
        self,
        native: list[tuple[FeatureAccumulator, InputColumn, FeatureInput]],
        stack: InputStack,
        scratch: np.ndarray,
    ) -> None:
        """The usual case, every clean binned input of the batch in one native call (the
        per-input Python and numpy calls were most of what monitoring cost); an input that
        turns out to hold NaN or infinity takes the exact path alone."""
        assert self.monitor.native is not None
        key = tuple(id(acc) for acc, _, _ in native)
        inputs = self.inputs.get(key)
        if inputs is None:
            inputs = self.inputs[key] = InputSet([cast(EdgeIndex, a.index) for a, _, _ in native])
        n = stack.batch.num_rows
        got = self.monitor.native.summaries(inputs, [values.values for _, values, _ in native])
        for (acc, values, feature), summary in zip(native, got, strict=True):
            if summary is None:
                _add_input(acc, stack, feature, scratch)
            else:
                acc.add_summary(summary, n)
                values.known_clean(summary.low, summary.high)

    def _scratch(self, rows: int) -> np.ndarray:
        """Two reused buffers of `rows` (the sort's and the deviations'), grown as needed."""
        if self.buffers.shape[1] < rows:
            self.buffers = np.empty((2, rows))
        return self.buffers

    def _add_output(self, model: MonitoredModel, out: ScoreOutput, n: int) -> None:
        mine = self.outputs.setdefault(model.name, {})
        prediction = np.asarray(out.prediction, dtype=np.float64)
        if np.isfinite(prediction).any() or PREDICTION in mine:
            if PREDICTION not in mine:
                mine[PREDICTION] = FeatureAccumulator(
                    PREDICTION, "numeric", "double", edges=model.prediction_edges, sketch=True
                )
            mine[PREDICTION].add_numeric(prediction, ~np.isfinite(prediction))
        if out.has_label:
            if LABEL not in mine:
                mine[LABEL] = FeatureAccumulator(LABEL, "categorical", "string")
            if out.codes is not None and model.classes is not None:
                mine[LABEL].add_codes(out.codes, model.classes)
            else:
                mine[LABEL].add_categorical(labels(out, n, model.classes))

    def body(self) -> dict[str, Any]:
        return {
            "features": {k: _slim(a) for k, a in self.features.items()},
            "outputs": {
                m: {k: _slim(a) for k, a in accs.items()} for m, accs in self.outputs.items()
            },
            "comparison": self.compare.body() if self.compare is not None else {},
        }

    def dump(self) -> None:
        write_task_file(self.monitor.folder, task_name(), self.body())


def _accumulator(
    batch: pa.RecordBatch, monitored: MonitoredInput, *, sketch: bool, native: NativeBins | None
) -> FeatureAccumulator:
    feature = monitored.feature
    kind = batch.schema.field(feature.ref).type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    elif pa.types.is_struct(kind):  # a Spark ML vector
        kind = pa.float64()
    if feature.kind == "sparse":
        return FeatureAccumulator(feature.name, "sparse", str(kind), width=feature.width)
    return FeatureAccumulator(
        feature.name, "numeric", str(kind), edges=monitored.edges, sketch=sketch, native=native
    )


def _add_input(
    acc: FeatureAccumulator, stack: InputStack, feature: FeatureInput, scratch: np.ndarray
) -> None:
    """A binned input without nulls, NaN or inf (the usual case) is counted through its
    accumulator's index where that beats sorting (monitor.bins), its bounds shared with
    validation's range rules; else it goes in sorted, the sort shared with them
    (physical.input_stack)."""
    if feature.kind == "sparse":
        column = Column(feature.ref, feature.label, assembly_kind(feature), feature.width)
        block = assemble(stack.batch, (column,), stack.cache)
        null = _nulls(stack.batch.column(stack.batch.schema.get_field_index(feature.ref)))
        acc.add_sparse(sp.csr_matrix(block), null)
        return
    values = stack.column(feature)
    binned = acc.edges is not None or acc.ints is not None
    if acc.counts_unsorted and values.clean():
        acc.add_clean(values.values, *values.bounds(), scratch[1])
        return
    if binned and not values.null_count:
        ordered = values.ordered(scratch[0])  # sorted first: clean() then reads its two ends
        if values.clean():
            acc.add_ordered(ordered, scratch[1])
            return
    acc.add_numeric(values.values, values.null() if values.null_count else None)


def _slim(acc: FeatureAccumulator) -> dict[str, Any]:
    """The accumulator's profile without the bin edges it was given: the driver's RunMonitor
    holds them (`known_edges`), and a training profile's few hundred edges per input, written
    by every task and parsed back, were most of the files' bytes and of the merge's time. Its
    exact counts go packed (`_packed`): as JSON numbers they were most of the rest."""
    data = acc.result().to_json()
    if acc.edges is not None:
        del data["edges"]
        data["counts"] = _packed(acc.bins)
    return data


PACKED: dict[str, np.dtype[Any]] = {"i4": np.dtype("<i4"), "i8": np.dtype("<i8")}


def _packed(counts: np.ndarray) -> str:
    """Integer counts as `<dtype>:<base64 of little-endian integers>`: the driver decodes a
    task's 200 inputs x 200 bins in well under a millisecond, against ~10 ms as JSON numbers."""
    code = "i4" if not len(counts) or int(counts.max()) < 2**31 else "i8"
    return f"{code}:" + base64.b64encode(counts.astype(PACKED[code]).tobytes()).decode("ascii")


def _unpacked(text: str) -> list[float]:
    code, _, data = text.partition(":")
    if code not in PACKED:
        raise DataError(f"Monitoring task file holds counts packed as '{code}'; rerun the job.")
    counts = np.frombuffer(base64.b64decode(data), dtype=PACKED[code])
    return cast(list[float], counts.astype(np.float64).tolist())


def _parsed(value: dict[str, Any], edges: tuple[float, ...] | None) -> FeatureProfile:
    """A task's feature profile; `edges` restores those `_slim` left out."""
    if isinstance(value.get("counts"), str):
        value = {**value, "counts": _unpacked(value["counts"])}
    return FeatureProfile.from_json(value, edges=edges)


def _nulls(array: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    if array.null_count == 0:
        return None
    return np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)


# ---------------------------------------------------------------- driver side


def collect_run_profiles(
    monitor: RunMonitor, *, source: str, created_at: str
) -> tuple[dict[str, Profile], dict[str, Any]]:
    """Merge the tasks' files into one profile per model and the challenger comparisons
    (physical.comparison), then delete them."""
    bodies = read_task_files(monitor.folder)
    remove_task_files(monitor.folder)
    profiles = merge_bodies(monitor, bodies, source=source, created_at=created_at)
    return profiles, merge_comparisons(bodies)


def merge_bodies(
    monitor: RunMonitor,
    bodies: Sequence[dict[str, Any] | str],
    *,
    source: str,
    created_at: str,
) -> dict[str, Profile]:
    """One profile per model from the tasks' accumulators (JSON text or parsed)."""
    features: dict[str, FeatureProfile] = {}
    outputs: dict[str, dict[str, FeatureProfile]] = {}
    input_edges = {i.key: i.edges for m in monitor.models for i in m.inputs}
    prediction_edges = {m.name: m.prediction_edges for m in monitor.models}
    for raw in bodies:
        body = json.loads(raw) if isinstance(raw, str) else raw
        for key, value in (body.get("features") or {}).items():
            parsed = _parsed(value, input_edges.get(key))
            features[key] = _merged(features.get(key), parsed)
        for model, accs in (body.get("outputs") or {}).items():
            mine = outputs.setdefault(model, {})
            for key, value in accs.items():
                edges = prediction_edges.get(model) if key == PREDICTION else None
                mine[key] = _merged(mine.get(key), _parsed(value, edges))
    profiles = {}
    for model in monitor.models:
        inputs = {m.feature.name: features[m.key] for m in model.inputs if m.key in features}
        predictions = outputs.get(model.name, {})
        rows = next(iter(inputs.values())).rows if inputs else 0
        profiles[model.name] = Profile(
            features=inputs,
            predictions=dict(predictions),
            rows=rows,
            source=source,
            model=model.name,
            created_at=created_at,
        )
    return profiles


def _merged(held: FeatureProfile | None, new: FeatureProfile) -> FeatureProfile:
    return new if held is None else merge_features(held, new)


def discard(monitor: RunMonitor | None) -> None:
    if monitor is not None:
        remove_task_files(monitor.folder)


def monitored_model(
    name: str,
    inputs: Sequence[FeatureInput],
    training: Profile | None,
    classes: tuple[str, ...] | None,
) -> MonitoredModel:
    """The model's inputs with their training bins (none without a training profile)."""

    def edges(label: str, profiles: dict[str, Any] | None = None) -> tuple[float, ...] | None:
        if training is None:
            return None
        found = training.lookup(label) if profiles is None else profiles.get(label)
        if found is None or found.kind != "numeric" or not found.edges:
            return None
        return tuple(float(e) for e in found.edges)

    return MonitoredModel(
        name=name,
        inputs=tuple(
            MonitoredInput(i, edges(i.name) if i.kind != "sparse" else None) for i in inputs
        ),
        prediction_edges=edges(PREDICTION, training.predictions if training else None),
        classes=classes,
    )
