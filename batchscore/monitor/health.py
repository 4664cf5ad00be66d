"""What a run checks and measures about each model, settled before Spark starts.

`health_plan` reads every model's training profile (the spec's `profile:`, else the registry's
for a `registry:` model), refuses one that does not describe the model's inputs, derives the
validation rules (monitor.rules) and resolves the drift thresholds (defaults, then the job's
`monitoring`, then the model's, then per feature). A job without `validation:` and `monitoring:`
and without profiles gets an empty plan and runs as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from batchscore.errors import DataError, SpecError, did_you_mean
from batchscore.monitor.drift import DEFAULT_THRESHOLDS
from batchscore.monitor.profile import Profile
from batchscore.monitor.rules import (
    FeatureInput,
    Rule,
    distinct_rules,
    profile_rules,
    type_family,
    user_rules,
)
from batchscore.plan.nodes import LogicalPlan, ModelBinding
from batchscore.spec.model import JobSpec, ModelSpec, MonitoringSpec, ValidationSpec

SPARSE_WIDTH = 64
"""Vectors at least this wide are monitored as per-index non-zero frequencies (the assembler
keeps them sparse from the same width on)."""


@dataclass(frozen=True)
class ModelHealth:
    name: str
    version: str
    inputs: tuple[FeatureInput, ...]
    profile: Profile | None = None
    profile_source: str = ""
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Per feature label (and `prediction`, `label`): metric -> threshold."""
    default_thresholds: Mapping[str, float] = field(default_factory=dict)

    def threshold(self, feature: str, metric: str) -> float | None:
        return self.thresholds.get(feature, self.default_thresholds).get(metric)


@dataclass(frozen=True)
class HealthPlan:
    models: tuple[ModelHealth, ...] = ()
    rules: tuple[Rule, ...] = ()
    monitoring: MonitoringSpec | None = None

    @property
    def monitored(self) -> bool:
        return self.monitoring is not None

    @property
    def row_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.kind not in ("null_rate", "type"))

    @property
    def data_rules(self) -> tuple[Rule, ...]:
        """The rules the data decides (type rules are decided by the schemas)."""
        return tuple(r for r in self.rules if r.kind != "type")

    @property
    def type_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.kind == "type")

    @property
    def counted_rules(self) -> tuple[Rule, ...]:
        """`warn` rules: the scoring task counts them on the rows it scores."""
        return tuple(r for r in self.data_rules if r.action == "warn")

    @property
    def enforced_rules(self) -> tuple[Rule, ...]:
        """`fail` and `quarantine` rules: checked on every selected row before any commit."""
        return tuple(r for r in self.data_rules if r.action != "warn")

    def model(self, name: str) -> ModelHealth:
        return next(m for m in self.models if m.name == name)


def health_plan(plan: LogicalPlan) -> HealthPlan:
    spec = plan.spec
    specs = {m.name: m for m in spec.models}
    models: list[ModelHealth] = []
    rules: list[Rule] = []
    known = {"prediction", "label"}
    for binding in plan.models:
        model_spec = specs[binding.name]
        inputs = model_inputs(binding)
        profile, source = load_profile(model_spec, sha256=binding.model.sha256)
        if profile is not None:
            _check_profile_covers(binding.name, inputs, profile, source)
        section = model_spec.validation or spec.validation
        _check_profile_present(binding.name, section, profile, model_spec)
        if profile is not None and section is None:
            section = ValidationSpec()  # a profile turns its rules on, as warnings
        if section is not None:
            if profile is not None:
                rules += profile_rules(binding.name, _row_inputs(binding), profile, section)
            rules += user_rules(section)
        defaults, per_feature = _thresholds(spec, model_spec, inputs)
        known |= {i.name for i in inputs} | {i.label for i in inputs}
        models.append(
            ModelHealth(
                name=binding.name,
                version=binding.model.version,
                inputs=inputs,
                profile=profile,
                profile_source=source,
                thresholds=per_feature,
                default_thresholds=defaults,
            )
        )
    if spec.monitoring is not None:
        _check_labels(spec.monitoring.features, known, "monitoring")
    return HealthPlan(tuple(models), tuple(distinct_rules(rules)), spec.monitoring)


def model_inputs(binding: ModelBinding) -> tuple[FeatureInput, ...]:
    """The positions monitored: a scalar, each position of an array or a dense vector, and a
    sparse vector as a whole."""
    out: list[FeatureInput] = []
    for f in binding.features:
        if f.kind == "scalar":
            out.append(FeatureInput(f.ref, f.label))
        elif f.kind == "vector" and f.width >= SPARSE_WIDTH:
            out.append(FeatureInput(f.ref, f.label, kind="sparse", width=f.width))
        else:
            out += [
                FeatureInput(f.ref, f.label, i, kind=f.kind, width=f.width) for i in range(f.width)
            ]
    return tuple(out)


def _row_inputs(binding: ModelBinding) -> list[FeatureInput]:
    """Inputs Spark can check row by row: scalars and array positions."""
    return [i for i in model_inputs(binding) if i.kind in ("scalar", "array")]


def load_profile(model: ModelSpec, *, sha256: str = "") -> tuple[Profile | None, str]:
    """The model's training profile and where it came from ((None, "") when it has none). A
    registry model's is that of the version whose bytes were loaded (`sha256`), even if an
    alias moved since."""
    if model.profile is not None:
        return Profile.load(model.profile), model.profile
    if model.path.startswith("registry:"):
        from batchscore.models.store_reader import StoreReader, parse_ref

        reader = StoreReader()
        version = reader.resolve(model.path)
        if sha256 and version.sha256 != sha256:
            same = [v for v in reader.versions(parse_ref(model.path)[0]) if v.sha256 == sha256]
            version = same[-1] if same else version
        if version.training_profile:
            return Profile.from_json(version.training_profile), f"{version.ref} (registry)"
    return None, ""


def _check_profile_covers(
    model: str, inputs: Sequence[FeatureInput], profile: Profile, source: str
) -> None:
    missing = [i.name for i in inputs if profile.lookup(i.name) is None]
    if missing:
        have = ", ".join(list(profile.features)[:8]) + (
            ", ..." if len(profile.features) > 8 else ""
        )
        raise DataError(
            f"Profile {source} does not describe model '{model}': it has no feature "
            f"'{missing[0]}' ({len(missing)} of {len(inputs)} inputs missing; it has {have}). "
            f"Is it another model's profile? Make this model's with `batchscore profile SPEC "
            f"--run-date D --model {model} --out DIR`."
        )


def _check_profile_present(
    model: str, section: ValidationSpec | None, profile: Profile | None, spec: ModelSpec
) -> None:
    """Settings that only profile-derived rules read, on a model without a profile."""
    if profile is not None or section is None or not section.profile_rules:
        return
    asked = section.model_fields_set & {"actions", "tolerance", "null_rate_tolerance"}
    if "profile_rules" in section.model_fields_set:
        asked = asked | {"profile_rules"}
    if asked:
        raise SpecError(
            f"Model '{model}' has no training profile, but validation sets "
            f"{', '.join(sorted(asked))}, which apply to rules derived from one. Add "
            f"`profile: DIR` to the model (make it with `batchscore profile`), register it "
            f"with --training-data, or set validation.profile_rules: false."
        )


def _thresholds(
    spec: JobSpec, model: ModelSpec, inputs: Sequence[FeatureInput]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(this model's thresholds, per-feature ones): defaults, then the job's monitoring, then
    the model's; a feature override starts from the model's thresholds."""
    defaults = dict(DEFAULT_THRESHOLDS)
    sections = [s for s in (spec.monitoring, model.monitoring) if s is not None]
    for section in sections:
        defaults.update(section.thresholds)
    labels = {i.name for i in inputs} | {i.label for i in inputs} | {"prediction", "label"}
    if model.monitoring is not None:
        _check_labels(model.monitoring.features, labels, f"models.{model.name}.monitoring")
    per_feature: dict[str, dict[str, float]] = {}
    for section in sections:
        for label, overrides in section.features.items():
            if label in labels:
                per_feature.setdefault(label, dict(defaults)).update(overrides)
    expanded = {
        i.name: chosen
        for i in inputs
        if (chosen := per_feature.get(i.name) or per_feature.get(i.label)) is not None
    }
    expanded.update({n: per_feature[n] for n in ("prediction", "label") if n in per_feature})
    return defaults, expanded


def _check_labels(features: Mapping[str, object], labels: set[str], where: str) -> None:
    for label in features:
        if label not in labels:
            raise SpecError(
                f"{where}.features names '{label}', which is not a monitored input."
                f"{did_you_mean(label, sorted(labels))} Use the feature's label as the spec "
                "writes it: table.column, name[i] for a position, prediction or label."
            )


def type_changes(plan: LogicalPlan, rules: Sequence[Rule]) -> list[tuple[Rule, str]]:
    """The type rules whose column's type family differs now, with the type it has now."""
    broken = []
    for rule in rules:
        feature = rule.feature
        if rule.kind != "type" or feature is None:
            continue
        table, column = feature.label.split(".", 1)
        info = plan.tables.get(table)
        if info is None or not info.has_column(column):
            continue
        dtype = info.dtype(column)
        while hasattr(dtype, "value_type"):  # an array position: its values' type
            dtype = dtype.value_type
        if type_family(str(dtype)) != rule.dtype:
            broken.append((rule, str(dtype)))
    return broken
