"""`batchscore models register|list|promote|history`: the model registry from the command line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from batchscore.errors import SpecError

if TYPE_CHECKING:
    from batchscore.models.store import ModelStore

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any) -> dict[str, Handler]:
    models = sub.add_parser(
        "models", help="register, list and promote models in the model registry"
    )
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
    pro = msub.add_parser(
        "promote", help="point an alias (default champion) at a registered version"
    )
    pro.add_argument("name")
    pro.add_argument("--version", type=int, required=True, metavar="V", help="version number")
    pro.add_argument(
        "--alias", default="champion", help="alias to move (default champion): registry:NAME@ALIAS"
    )
    pro.add_argument("--reason", help="why, kept in the model's history")
    pro.add_argument("--store", help="registry folder")
    his = msub.add_parser("history", help="the model's promotions, newest first")
    his.add_argument("name")
    his.add_argument("--store", help="registry folder")
    his.add_argument("--json", action="store_true", help="one JSON object per promotion")
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
    if args.models_command == "promote":
        return _promote(store, args)
    if args.models_command == "history":
        return _history(store, args)
    return _list(store, args)


def _list(store: ModelStore, args: argparse.Namespace) -> int:
    versions = store.list()
    aliases = {name: _by_version(store.aliases(name)) for name in store.names()}
    if args.json:
        for mv in versions:
            entry = {**mv.to_json(), "aliases": aliases[mv.name].get(mv.version, [])}
            print(json.dumps(entry, default=str))
        return 0
    if not versions:
        print(f"no models registered in {store.root}")
        return 0
    for mv in versions:
        sig = mv.signature
        metrics = " ".join(f"{k}={v}" for k, v in sorted(mv.metrics.items()))
        profiled = "profiled" if mv.training_profile else "-"
        named = aliases[mv.name].get(mv.version)
        tag = f" [{','.join(named)}]" if named else ""
        print(
            f"{mv.name}@{mv.version}{tag}  {mv.registered_at}  sha256:{mv.sha256[:12]}  "
            f"{sig.get('task')}  n_features={sig.get('n_features')}  {profiled}  {metrics}".rstrip()
        )
    return 0


def _by_version(aliases: dict[str, int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        out.setdefault(version, []).append(alias)
    return out


def _promote(store: ModelStore, args: argparse.Namespace) -> int:
    promotion = store.promote(args.name, args.version, alias=args.alias, reason=args.reason)
    if promotion is None:
        print(
            f"registry:{args.name}@{args.alias} already points at version {args.version}; "
            "nothing changed."
        )
        return 0
    previous = "unset" if promotion.from_version is None else str(promotion.from_version)
    print(
        f"promoted registry:{args.name}@{promotion.alias}: {previous} -> {promotion.to_version}  "
        f"by {promotion.by} at {promotion.at}"
    )
    return 0


def _history(store: ModelStore, args: argparse.Namespace) -> int:
    promotions = store.history(args.name)
    if args.json:
        for p in promotions:
            print(json.dumps({"model": args.name, **p.to_json()}))
        return 0
    if not promotions:
        print(
            f"'{args.name}' has never been promoted in {store.root}; "
            f"use `batchscore models promote {args.name} --version V`."
        )
        return 0
    for p in promotions:
        previous = "-" if p.from_version is None else str(p.from_version)
        reason = f"  {p.reason}" if p.reason else ""
        print(f"{p.at}  {p.by}  {p.alias}  {previous} -> {p.to_version}{reason}")
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
