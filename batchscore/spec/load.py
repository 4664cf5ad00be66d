"""Read a job spec from YAML into a validated `JobSpec`.

Three things make this more than `yaml.safe_load` + pydantic:
- `on:` stays the key `on` (YAML 1.1 turns it into True); only `true`/`false` are booleans.
- errors name the key path and the spec line, and suggest the closest valid key;
- relative paths resolve against the spec's folder, so a job runs the same from any cwd.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from batchscore.errors import SpecError, did_you_mean, first_line
from batchscore.spec.model import JobSpec, JoinSpec, ModelSpec, OutputSpec, TableSpec
from batchscore.spec.validate import check_references

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BROKEN_PLACEHOLDER = re.compile(r"\{run_date(?!\})|(?<!\{)run_date\}")
"""{run_date with one brace: a template that would silently match nothing."""
_RUN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PATH_PREFIXES = ("registry:", "models:/", "runs:/")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, so `on`, `yes`, `off` stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _line_index(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each key path (('models', 0, 'features') ...) to its 1-based line in the file."""
    lines: dict[tuple[str | int, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    root = yaml.compose(text, Loader=_Loader)
    if root is not None:
        walk(root, ())
    return lines


def _fmt_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class _Context:
    def __init__(self, source: str, lines: dict[tuple[str | int, ...], int]) -> None:
        self.source = source
        self.lines = lines

    def where(self, path: tuple[str | int, ...]) -> str:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        return f"{self.source} line {line}" if line else self.source

    def error(self, path: tuple[str | int, ...], message: str) -> SpecError:
        return SpecError(f"Spec {self.where(path)}: {message}")


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "tables": TableSpec,
    "models": ModelSpec,
    "output": OutputSpec,
}


def _user_keys(model: type[BaseModel]) -> list[str]:
    return [name for name, field in model.model_fields.items() if not field.exclude]


def _check_keys(
    ctx: _Context, data: Any, model: type[BaseModel], path: tuple[str | int, ...]
) -> None:
    """Unknown keys anywhere in the tree, with a suggestion, before pydantic's generic errors."""
    if not isinstance(data, dict):
        return
    allowed = _user_keys(model)
    for key in data:
        if not isinstance(key, str) or key not in allowed:
            hint = did_you_mean(str(key), allowed)
            raise ctx.error(
                (*path, str(key)),
                f"unknown key '{key}' in {_fmt_path(path)}.{hint} "
                f"Valid keys: {', '.join(allowed)}.",
            )
    for key, value in data.items():
        annotation = model.model_fields[key].annotation
        for sub in _nested_models(annotation):
            if isinstance(value, dict) and sub is not JoinSpec and key != "on":
                if key == "tables":
                    for name, table in value.items():
                        _check_keys(ctx, table, TableSpec, (*path, key, name))
                else:
                    _check_keys(ctx, value, sub, (*path, key))
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    _check_keys(ctx, item, sub, (*path, key, i))


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes mentioned in a field annotation (list[X], dict[str, X], X | None)."""
    found: list[type[BaseModel]] = []
    stack = [annotation]
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            found.append(item)
        stack.extend(getattr(item, "__args__", ()))
    return found


def _pydantic_error(ctx: _Context, exc: ValidationError) -> SpecError:
    err = exc.errors()[0]
    path = tuple(err["loc"])
    where = _fmt_path(path)
    msg = err["msg"]
    if err["type"] == "missing":
        return ctx.error(path[:-1], f"missing required key '{where}'. Add it to the spec.")
    if err["type"] == "literal_error":
        allowed = [str(v).strip("'") for v in _literal_choices(err)]
        given = err.get("input")
        hint = did_you_mean(str(given), allowed)
        return ctx.error(
            path,
            f"invalid value {given!r} for '{where}'; use one of "
            f"{', '.join(repr(a) for a in allowed)}.{hint}",
        )
    given = err.get("input")
    shown = f" {given!r}" if isinstance(given, str | int | float | bool) else ""
    return ctx.error(path, f"invalid value{shown} for '{where}': {msg}.")


def _literal_choices(err: Any) -> list[str]:
    expected = str((err.get("ctx") or {}).get("expected", ""))
    return [p.strip() for p in expected.replace(" or ", ", ").split(",") if p.strip()]


def _resolve(base: Path, value: str) -> str:
    if value.startswith(_PATH_PREFIXES) or (
        _URI.match(value) and not re.match(r"^[A-Za-z]:\\", value)
    ):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _substitute(
    ctx: _Context, text: str, run_date: str | None, where: tuple[str | int, ...]
) -> str:
    names = set(_PLACEHOLDER.findall(text))
    broken = _BROKEN_PLACEHOLDER.search(_PLACEHOLDER.sub("", text))
    if broken:
        raise ctx.error(
            where,
            f"unclosed placeholder '{broken.group(0)}'; write it as {{run_date}}.",
        )
    unknown = names - {"run_date"}
    if unknown:
        raise ctx.error(
            where,
            f"unknown placeholder '{{{sorted(unknown)[0]}}}'; only {{run_date}} is supported.",
        )
    if "run_date" in names and run_date is not None:
        text = text.replace("{run_date}", run_date)
    return text


def parse_spec(
    text: str, *, source: str = "<spec>", base_dir: Path | None = None, run_date: str | None = None
) -> JobSpec:
    """Parse and validate spec text. `base_dir` anchors relative paths (default: cwd)."""
    try:
        raw = yaml.load(text, Loader=_Loader)
        lines = _line_index(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        hint = (
            ' Inside {...} quote ${VAR} references ("${VAR}"), or write the mapping in block '
            "style, one key per line."
            if "${" in line
            else ""
        )
        raise SpecError(
            f"Spec {source}{at}: malformed YAML ({problem}). Fix the syntax.{hint}"
        ) from None
    ctx = _Context(source, lines)
    if not isinstance(raw, dict):
        raise ctx.error(
            (), "a job spec must be a YAML mapping with keys name, tables, source, models, output."
        )
    if run_date is not None and not _RUN_DATE.match(run_date):
        raise SpecError(f"Run date '{run_date}' is not a date. Use the form YYYY-MM-DD.")
    _check_keys(ctx, raw, JobSpec, ())
    _check_joins(ctx, raw)
    base = (base_dir or Path.cwd()).resolve()
    data = _resolved(ctx, raw, base, run_date)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_error(ctx, exc) from None
    digest = hashlib.sha256(
        json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()
    spec = spec.model_copy(
        update={
            "spec_path": source,
            "spec_hash": digest,
            "run_date": run_date,
            "spec_text": text,
            "base_dir": str(base),
        }
    )
    check_references(spec, ctx.error)
    return spec


def _check_joins(ctx: _Context, raw: dict[str, Any]) -> None:
    def walk(joins: Any, path: tuple[str | int, ...]) -> None:
        if not isinstance(joins, list):
            return
        for i, join in enumerate(joins):
            if isinstance(join, dict):
                if True in join and "on" not in join:  # a YAML 1.1 document produced a bool key
                    join["on"] = join.pop(True)
                _check_keys(ctx, join, JoinSpec, (*path, i))
                walk(join.get("joins"), (*path, i, "joins"))

    source = raw.get("source")
    if isinstance(source, dict):
        walk(source.get("joins"), ("source", "joins"))


def _resolved(
    ctx: _Context, raw: dict[str, Any], base: Path, run_date: str | None
) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(raw, default=str))
    for name, table in (data.get("tables") or {}).items():
        if isinstance(table, dict) and isinstance(table.get("path"), str):
            table["path"] = _resolve(
                base, _substitute(ctx, table["path"], run_date, ("tables", name, "path"))
            )
    for i, model in enumerate(data.get("models") or []):
        if isinstance(model, dict) and isinstance(model.get("profile"), str):
            model["profile"] = _resolve(base, model["profile"])
        if isinstance(model, dict) and isinstance(model.get("path"), str):
            model["path"] = _resolve(base, model["path"])
            model.setdefault("name", None)
            if model["name"] is None:
                raise ctx.error(("models", i), "a model needs a 'name'.")
    output = data.get("output")
    if isinstance(output, dict):
        for key in ("path", "quarantine"):
            if isinstance(output.get(key), str):
                output[key] = _resolve(base, output[key])
    monitoring = data.get("monitoring")
    if isinstance(monitoring, dict) and isinstance(monitoring.get("table"), str):
        monitoring["table"] = _resolve(base, monitoring["table"])
    source = data.get("source")
    if isinstance(source, dict) and isinstance(source.get("where"), str):
        source["where"] = _substitute(ctx, source["where"], run_date, ("source", "where"))
    return data


def load_spec(path: str | Path, *, run_date: str | None = None) -> JobSpec:
    """Load a job spec file. Relative paths inside it resolve against the file's folder."""
    spec_path = Path(path)
    try:
        text = spec_path.read_text()
    except FileNotFoundError:
        raise SpecError(f"Spec file '{path}' does not exist. Check the path.") from None
    except OSError as exc:
        raise SpecError(f"Spec file '{path}' cannot be read: {exc.strerror}.") from None
    return parse_spec(
        text, source=str(path), base_dir=spec_path.resolve().parent, run_date=run_date
    )


def with_run_date(spec: JobSpec, run_date: str | None) -> JobSpec:
    """The spec for one run date (the API's `run(spec, run_date=...)`), or a clear error.

    A spec loaded without a date keeps `{run_date}` unresolved; running it needs one.
    """
    if run_date is not None and run_date != spec.run_date:
        spec = parse_spec(
            spec.spec_text,
            source=spec.spec_path or "<spec>",
            base_dir=Path(spec.base_dir) if spec.base_dir else None,
            run_date=run_date,
        )
    if spec.pending_placeholder:
        raise SpecError(
            f"Spec {spec.spec_path or '<spec>'}: source.where uses {{run_date}} but no run date "
            "was given. Pass --run-date YYYY-MM-DD (or run_date=... in the Python API)."
        )
    return spec
