"""`batchscore models register|list`: the model registry from the command line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from batchscore.errors import SpecError

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any) -> dict[str, Handler]:
    models = sub.add_parser("models", help="register and list models in the model registry")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    reg = msub.add_parser("register", help="copy a model file in as its next version")
    reg.add_argument("name")
    reg.add_argument("path")
    reg.add_argument(
        "--training-data",
        dest="training_data",
        metavar="TABLE_OR_FILE",
        help="Parquet file/folder or Delta table to profile (per-column statistics)",
    )
    reg.add_argument("--metric", action="append", default=[], metavar="KEY=VALUE")
    reg.add_argument("--sha256", help="refuse the file unless its sha256 is this")
    reg.add_argument(
        "--store", help="registry folder (default $BATCHSCORE_MODEL_STORE or ./model_registry)"
    )
    lst = msub.add_parser("list", help="every registered version")
    lst.add_argument("--store", help="registry folder")
    lst.add_argument("--json", action="store_true", help="print the manifest entries as JSON")
    return {"models": _cmd_models}


def _cmd_models(args: argparse.Namespace) -> int:
    from batchscore.models.store import ModelStore

    store = ModelStore(args.store)
    if args.models_command == "register":
        mv = store.register(
            args.name,
            args.path,
            training_data=args.training_data,
            metrics=parse_metrics(args.metric),
            sha256=args.sha256,
        )
        sig = mv.signature
        print(
            f"registered {mv.ref}  sha256:{mv.sha256[:12]}  task={sig.get('task')}  "
            f"n_features={sig.get('n_features')}  -> {mv.file}"
        )
        return 0
    versions = store.list()
    if args.json:
        for mv in versions:
            print(json.dumps(mv.to_json(), default=str))
        return 0
    if not versions:
        print(f"no models registered in {store.root}")
        return 0
    for mv in versions:
        sig = mv.signature
        metrics = " ".join(f"{k}={v}" for k, v in sorted(mv.metrics.items()))
        profiled = "profiled" if mv.training_profile else "-"
        print(
            f"{mv.name}@{mv.version}  {mv.registered_at}  sha256:{mv.sha256[:12]}  "
            f"{sig.get('task')}  n_features={sig.get('n_features')}  {profiled}  {metrics}".rstrip()
        )
    return 0


def parse_metrics(values: list[str]) -> dict[str, Any]:
    """`k=v` pairs; numbers become floats, anything else stays a string."""
    out: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise SpecError(f"--metric '{value}' must look like KEY=VALUE (e.g. auc=0.91).")
        try:
            out[key] = float(raw)
        except ValueError:
            out[key] = raw
    return out
