"""`batchscore profile`: a training profile that validation and monitoring compare runs with.

batchscore profile SPEC --run-date D [--model M] --out DIR [--master URL]
batchscore profile --data TABLE --features a,b,c --out DIR [--master URL]

With a spec, one profile per model: `DIR/profile.json` for a single model (or `--model`),
`DIR/<model>/profile.json` for several; a spec model points at its own with `profile:`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchscore.errors import SpecError

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any) -> dict[str, Handler]:
    profile = sub.add_parser(
        "profile",
        help="profile a model's training inputs (and predictions) for validation and drift",
    )
    profile.add_argument("spec", nargs="?", help="job spec: profile its models' inputs")
    profile.add_argument(
        "--run-date", help="the reference run date (the data the model was validated on)"
    )
    profile.add_argument("--model", help="only this model of the spec")
    profile.add_argument(
        "--data", help="a flat training table (Delta or Parquet) instead of a spec"
    )
    profile.add_argument("--features", help="with --data: comma-separated columns (default all)")
    profile.add_argument("--out", required=True, help="folder to write the profile into")
    profile.add_argument("--master", help="Spark master (default local[*] or spark-submit's)")
    return {"profile": _cmd_profile}


def _cmd_profile(args: argparse.Namespace) -> int:
    if (args.spec is None) == (args.data is None):
        raise SpecError(
            "batchscore profile takes a SPEC (with --run-date) or --data TABLE, not both or "
            "neither; e.g. `batchscore profile job.yaml --run-date 2026-11-01 --out profiles/`."
        )
    if args.data is not None and (args.model or args.run_date):
        raise SpecError("--model and --run-date go with a SPEC, not with --data.")
    if args.spec is not None and args.features:
        raise SpecError("--features goes with --data; a spec's models name their own features.")
    from batchscore.jobs.profiling import profile_data, profile_spec
    from batchscore.physical.session import get_spark
    from batchscore.sinks.storage import is_object_store, join

    spark = get_spark(args.master)
    out: Path | str = args.out if is_object_store(args.out) else Path(args.out)
    if args.data is not None:
        features = [f.strip() for f in (args.features or "").split(",") if f.strip()]
        profile = profile_data(spark, args.data, features)
        written = [profile.save(out)]
        rows = profile.rows
    else:
        from batchscore.api import load_spec

        spec = load_spec(args.spec, run_date=args.run_date)
        profiles = profile_spec(spark, spec, run_date=args.run_date, model=args.model)
        single = len(profiles) == 1
        written = [p.save(out if single else join(out, name)) for name, p in profiles.items()]
        rows = max((p.rows for p in profiles.values()), default=0)
    print(f"Profiled {rows:,} rows: {', '.join(str(w) for w in written)}")
    return 0
