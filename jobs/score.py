"""spark-submit entry point: `spark-submit jobs/score.py SPEC --run-date D`.

The same job as `batchscore run`, on whatever master spark-submit was given.
"""

from __future__ import annotations

import sys

from batchscore.cli import main

if __name__ == "__main__":
    main(["run", *sys.argv[1:]])
