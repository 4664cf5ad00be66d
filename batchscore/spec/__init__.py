"""The job spec: typed, validated, with errors that name the key and the fix."""

from batchscore.spec.load import load_spec, parse_spec, with_run_date
from batchscore.spec.model import JobSpec, JoinSpec, ModelSpec, OutputSpec, PlannerSpec, TableSpec

__all__ = [
    "JobSpec",
    "JoinSpec",
    "ModelSpec",
    "OutputSpec",
    "PlannerSpec",
    "TableSpec",
    "load_spec",
    "parse_spec",
    "with_run_date",
]
