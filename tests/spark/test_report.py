"""`batchscore report`: a monitoring table and a histograms file built here, the CLI run on them,
and the page rendered in a real headless Chromium: every image decodes, no script error fires,
the sections and the latest run's alerts are there, strings from the data are escaped, and a
screenshot is a real picture. No SparkSession: the report reads Delta with delta-rs.

Chromium is a system package (`apt-get install chromium`; .ci/run installs it): without it these
browser checks skip locally and fail under CI, so a CI run never passes without them.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from batchscore.cli import run_cli
from batchscore.jobs.monitoring import SCHEMA
from batchscore.monitor.report import report_html, write_report
from batchscore.monitor.report_challengers import MAX_POINTS, sample_pairs

JOB = "retail_daily"
DATES = [f"2026-11-{day}" for day in range(14, 22)]
"""Eight run dates; the last one is scored twice (a rerun), so nine runs."""
ODD = "tag<i>x</i>"
"""A feature name with markup in it: the page must show it as text."""
BROWSER_SECONDS = 90
CANARY, SHADOW = "basket_v2", "spend<shadow>"
"""Challengers of basket_class (a classifier: agreement and flipped) and of spend_reg (a
regressor, compared from the fourth run on; markup in its name must stay text)."""
IDS = 3_000
"""Input rows of the latest run in the prediction table: more than a scatter draws."""


def _schema() -> pa.Schema:
    """The monitoring table's schema, as the runs write it."""
    return SCHEMA


def _runs() -> list[tuple[str, str, datetime]]:
    """(run_id, run_date, computed_at): one run a day, then a rerun of the last day."""
    start = datetime(2026, 11, 15, 2, 0, tzinfo=UTC)
    runs = [(f"run-{i:02d}", d, start + timedelta(days=i)) for i, d in enumerate(DATES)]
    last = runs[-1]
    return [*runs, ("run-rerun", last[1], last[2] + timedelta(hours=3))]


def _rows_for_run(i: int, run_id: str, date: str, at: datetime) -> list[dict[str, Any]]:
    """Drift that grows on users.age and the odd feature, stays flat on price; a classifier with
    class shares and a regressor without; quarantine counts on the classifier only."""
    out: list[dict[str, Any]] = []

    def add(
        model: str,
        kind: str,
        feature: str,
        metric: str,
        value: float,
        baseline: str,
        threshold: float | None = None,
    ) -> None:
        alert = threshold is not None and value > threshold
        names = "model kind feature metric value baseline threshold alert".split()
        values = (model, kind, feature, metric, value, baseline, threshold, alert)
        row = {"run_id": run_id, "job": JOB, "run_date": date, "model_version": "3"}
        out.append({**row, **dict(zip(names, values, strict=True)), "computed_at": at})

    for model in ("basket_class", "spend_reg"):
        add(model, "feature", "users.age", "psi", 0.03 * i, "training", 0.2)
        add(model, "feature", "users.age", "js", 0.012 * i, "training", 0.1)
        add(model, "feature", "price", "psi", 0.01 + 0.001 * i, "training", 0.2)
        add(model, "feature", "stores.region_vec[3]", "ks", 0.05 * (i % 3), "previous", 0.08)
        add(model, "feature", "users.age", "null_rate", 0.01 * i, "run")
        for j in range(9):  # more features than the drift figure draws
            add(model, "feature", f"products.f{j}", "psi", 0.001 * j, "training", 0.2)
        add(model, "prediction", "prediction", "rows", 3000.0 + 10 * i, "run")
        add(model, "prediction", "prediction", "mean", 0.4 + 0.01 * i, "run")
        add(model, "prediction", "prediction", "std", 0.1, "run")
        add(model, "prediction", "prediction", "psi", 0.02 * i, "training", 0.25)
    add("basket_class", "feature", ODD, "psi", 0.05 * i, "training", 0.25)
    add("basket_class", "prediction", "prediction", "quarantined", 30.0 * i, "run")
    add("basket_class", "prediction", "label", "share[yes]", 0.3 + 0.02 * i, "run")
    add("basket_class", "prediction", "label", "share[no]", 0.7 - 0.02 * i, "run")
    return out


def _histograms(run_id: str, date: str) -> dict[str, Any]:
    numeric = {
        "kind": "numeric",
        "edges": [-math.inf, 20.0, 30.0, 40.0, 50.0, math.inf],
        "training": [0.1, 0.3, 0.3, 0.2, 0.1],
        "current": [0.05, 0.15, 0.3, 0.3, 0.2],
        "missing_training": 0.01,
        "missing_current": 0.08,
    }
    categorical = {"kind": "categorical", "categories": ["a", "b<c"], "current": [0.4, 0.6]}
    return {
        "run_id": run_id,
        "job": JOB,
        "run_date": date,
        "models": {"basket_class": {"users.age": numeric, ODD: categorical}},
    }


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A monitoring table of two jobs and the latest run's histograms file."""
    root = tmp_path_factory.mktemp("monitoring") / "monitoring"
    rows = [r for i, run in enumerate(_runs()) for r in _rows_for_run(min(i, 7), *run)]
    other = dict(rows[0], job="weekly_churn", run_id="w-1")
    table = pa.Table.from_pylist([*rows, other], schema=_schema())
    write_deltalake(str(root), table, partition_by=["job"])
    run_id, date, _ = _runs()[-1]
    folder = root / "_batchscore" / "histograms" / JOB
    folder.mkdir(parents=True)
    (folder / f"{date}.json").write_text(json.dumps(_histograms(run_id, date)))
    return root


@pytest.fixture(scope="module")
def report(monitoring: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "nested" / "report.html"
    argv = ["report", "--monitoring", str(monitoring), "--job", JOB, "--out", str(out)]
    assert run_cli(argv) == 0
    return out


def _challenger_rows(i: int, run_id: str, date: str, at: datetime) -> list[dict[str, Any]]:
    """Comparison rows of the canary every run and of the shadow from the fourth run on, and the
    rows each model served (the canary 5%, the shadow none)."""
    out: list[dict[str, Any]] = []

    def add(model: str, kind: str, metric: str, value: float, baseline: str) -> None:
        out.append(
            {
                "run_id": run_id, "job": JOB, "run_date": date, "model": model,
                "model_version": "4", "kind": kind, "feature": "prediction", "metric": metric,
                "value": value, "baseline": baseline, "threshold": None, "alert": False,
                "computed_at": at,
            }
        )  # fmt: skip

    agreement = 0.95 - 0.005 * i
    for metric, value in (
        ("mean_abs_diff", 0.02 + 0.001 * i),
        ("max_abs_diff", 0.3),
        ("agreement", agreement),
        ("flipped", 1 - agreement),
        ("psi", 0.01 * i),
    ):
        add(CANARY, "comparison", metric, value, "champion:basket_class")
    if i >= 3:
        for metric, value in (("mean_abs_diff", 1.5), ("max_abs_diff", 9.0), ("psi", 0.02)):
            add(SHADOW, "comparison", metric, value, "champion:spend_reg")
    rows = 3000.0 + 10 * i
    for model, served in (
        ("basket_class", 0.95 * rows),
        (CANARY, 0.05 * rows),
        ("spend_reg", rows),
        (SHADOW, 0.0),
    ):
        add(model, "prediction", "served_rows", served, "run")
    return out


def _predictions_table(path: Path, latest: str, before: str) -> None:
    """Long layout, ids (sale_id, store): the latest run's rows of basket_class and the canary
    (a few scores missing), and an older run's rows of all four models."""
    at = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
    rows: list[dict[str, Any]] = []
    for run_id, models, n in (
        (latest, ("basket_class", CANARY), IDS),
        (before, ("basket_class", CANARY, "spend_reg", SHADOW), 50),
    ):
        for model in models:
            for k in range(n):
                score = (k % 100) / 100 + (0.05 if model == CANARY else 0.0)
                rows.append(
                    {
                        "sale_id": k, "store": f"s{k % 7}", "model": model,
                        "model_version": "4", "role": "canary" if model == CANARY else "champion",
                        "served": (k % 20 == 0) == (model == CANARY),
                        "prediction": None if k % 500 == 7 else score,
                        "label": "yes" if score > 0.5 else "no", "probability": None,
                        "run_id": run_id, "scored_at": at,
                    }
                )  # fmt: skip
    schema = pa.schema(
        [
            ("sale_id", pa.int64()), ("store", pa.string()), ("model", pa.string()),
            ("model_version", pa.string()), ("role", pa.string()), ("served", pa.bool_()),
            ("prediction", pa.float64()), ("label", pa.string()),
            ("probability", pa.list_(pa.float64())), ("run_id", pa.string()),
            ("scored_at", pa.timestamp("us", tz="UTC")),
        ]
    )  # fmt: skip
    write_deltalake(str(path), pa.Table.from_pylist(rows, schema=schema))


@pytest.fixture(scope="module")
def challenged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A monitoring table like `monitoring`'s plus two challengers, its histograms file with
    the canary's score distributions (none for the shadow), and a prediction table beside it."""
    root = tmp_path_factory.mktemp("challenged")
    runs = _runs()
    rows = [
        r
        for i, run in enumerate(runs)
        for r in [*_rows_for_run(min(i, 7), *run), *_challenger_rows(min(i, 7), *run)]
    ]
    write_deltalake(str(root / "monitoring"), pa.Table.from_pylist(rows, schema=_schema()))
    run_id, date, _ = runs[-1]
    drawn = _histograms(run_id, date)
    drawn["challengers"] = {
        CANARY: {
            "champion": "basket_class",
            "edges": [0.0, 0.2, 0.4, 0.6, 0.8, 1.05],
            "champion_shares": [0.2, 0.2, 0.2, 0.2, 0.2],
            "challenger_shares": [0.15, 0.2, 0.2, 0.2, 0.25],
        }
    }
    folder = root / "monitoring" / "_batchscore" / "histograms" / JOB
    folder.mkdir(parents=True)
    (folder / f"{date}.json").write_text(json.dumps(drawn))
    _predictions_table(root / "predictions", run_id, runs[-2][0])
    return root


@pytest.fixture(scope="module")
def challenger_report(challenged: Path) -> Path:
    out = challenged / "report.html"
    argv = ["report", "--monitoring", str(challenged / "monitoring"), "--job", JOB]
    argv += ["--predictions", str(challenged / "predictions"), "--out", str(out)]
    assert run_cli(argv) == 0
    return out


# The page itself


def test_the_cli_writes_one_self_contained_page(report: Path) -> None:
    page = report.read_text()
    assert page.count("<img ") >= 8  # 2 models x (drift, predictions, rows) + shares + histograms
    assert "http://" not in page and "https://" not in page
    assert not list(report.parent.glob(".*partial"))
    assert report.stat().st_size < 1_500_000


def test_the_header_counts_runs_and_the_latest_alerts_worst_first(report: Path) -> None:
    page = report.read_text()
    assert "run-rerun (2026-11-21)" in page  # the rerun of the last date is the latest run
    assert "9 (2026-11-14 to 2026-11-21)" in page
    rows = [line for line in page.split("<tr") if 'class="alert-row"' in line]
    # users.age psi 0.21 > 0.2 and js 0.084 < 0.1, prediction psi 0.14 < 0.25, odd 0.35 > 0.25
    features = [r.split("<td>")[2].split("</td>")[0] for r in rows]
    assert features == ["tag&lt;i&gt;x&lt;/i&gt;", "users.age", "users.age"]
    assert "previous" not in rows[0] and "training" in rows[0]


def test_sections_and_notes_for_what_a_model_lacks(report: Path) -> None:
    page = report.read_text()
    for heading in (
        "Alerts in the latest run",
        "Model basket_class (version 3)",
        "Model spend_reg (version 3)",
        "Drift over time",
        "Training vs latest histograms",
        "Predictions over time",
        "Row counts and quarantine rate",
    ):
        assert heading in page, heading
    assert "5 more feature(s) with smaller drift" in page  # 13 features of basket_class
    assert "4 more feature(s) with smaller drift" in page  # 12 of spend_reg
    assert "No class shares" in page  # spend_reg is a regressor
    assert "No quarantine counts recorded" in page  # spend_reg's joins quarantine nothing
    assert "No histogram in the file for: users.age" in page  # spend_reg's alert, no histogram


def test_api_last_model_and_a_missing_histograms_file(monitoring: Path, tmp_path: Path) -> None:
    summary = write_report(
        str(monitoring), JOB, str(tmp_path / "r.html"), model="spend_reg", last=3
    )
    assert (summary.runs, summary.models, summary.alerts) == (3, ("spend_reg",), 1)
    copy = tmp_path / "copy"
    shutil.copytree(monitoring, copy)
    shutil.rmtree(copy / "_batchscore")
    page = report_html(str(copy), JOB, last=2)
    assert "No histograms file for the latest run" in page
    assert "9 (" not in page and "2 (2026-11-21 to 2026-11-21)" in page


def test_without_comparison_rows_the_page_has_no_challenger_section(report: Path) -> None:
    page = report.read_text()
    assert "No champion vs challenger comparisons in these runs" in page
    assert 'class="challenger"' not in page and "<th>challengers</th>" not in page


def test_a_section_per_challenger_with_its_plots_and_notes(challenger_report: Path) -> None:
    page = challenger_report.read_text()
    shadow = "spend&lt;shadow&gt;"
    assert page.count('<h2 class="challenger">') == 2
    assert "Challenger basket_v2 vs champion basket_class</h2>" in page
    assert f"Challenger {shadow} vs champion spend_reg</h2>" in page
    assert SHADOW not in page  # escaped everywhere
    assert f"basket_v2 vs champion basket_class, {shadow} vs champion spend_reg" in page
    canary = page[page.index("Challenger basket_v2") : page.index(f"Challenger {shadow}")]
    for text in (
        "Latest compared run: run-rerun (2026-11-21)",
        "<td>agreement</td><td class=n>0.915</td>",
        "<td>flipped</td>",
        "<td>served rows: basket_v2</td><td class=n>153.5</td>",
        'alt="comparison of basket_v2 with basket_class over time"',
        'alt="rows served per run"',
        'alt="champion and challenger score distributions"',
        f"{MAX_POINTS:,} of 2,994 paired rows",  # 3,000 ids less the 6 with missing scores
    ):
        assert text in canary, text
    assert canary.count("<img ") == 4
    rest = page[page.index(f"Challenger {shadow}") :]
    assert "<td>agreement</td>" not in rest  # a regressor's comparison has none
    assert "has no score distributions for challenger spend&lt;shadow&gt;" in rest
    assert "has no rows of run run-rerun scored by both spend_reg and spend&lt;shadow&gt;" in rest
    assert rest.count("<img ") == 2


def test_without_predictions_the_page_asks_for_them(challenged: Path, tmp_path: Path) -> None:
    page = report_html(str(challenged / "monitoring"), JOB, last=4)
    assert page.count("The scatter of challenger vs champion scores needs the prediction") == 2
    assert "--predictions PATH" in page and "paired rows" not in page


def test_a_chosen_model_keeps_the_pairs_it_is_part_of(challenged: Path, tmp_path: Path) -> None:
    monitoring, predictions = str(challenged / "monitoring"), str(challenged / "predictions")
    page = report_html(monitoring, JOB, model=CANARY, predictions=predictions)
    assert page.count('<h2 class="challenger">') == 1 and "Model basket_class" not in page
    assert "<td>served rows: basket_class</td>" in page  # the champion's, though not chosen
    page = report_html(monitoring, JOB, model="spend_reg", last=3)
    assert page.count('<h2 class="challenger">') == 1 and "vs champion spend_reg" in page
    page = report_html(monitoring, JOB, model=SHADOW)
    assert "Model spend&lt;shadow&gt; (version 4)" in page and "Model spend_reg" not in page
    assert page.count('<h2 class="challenger">') == 1


def test_the_scatter_samples_at_most_max_points_pairs_deterministically() -> None:
    n = 5_000
    ids = list(range(n)) * 2
    table = pa.table(
        {
            "sale_id": ids,
            "store": [f"s{k % 3}" for k in ids],
            "model": ["champ"] * n + ["chal"] * n,
            "served": [False] * n + [k % 10 == 0 for k in range(n)],
            "prediction": [float(k) for k in range(n)] + [2.0 * k for k in range(n)],
            "run_id": ["r"] * (2 * n),
        }
    )
    paired = sample_pairs(table, "champ", "chal")
    assert MAX_POINTS == 2_000 and paired.total == n
    assert len(paired.champion) == len(paired.challenger) == len(paired.by_challenger) == 2_000
    assert (paired.challenger == 2 * paired.champion).all()  # rows paired on their ids
    assert (paired.by_challenger == (paired.champion % 10 == 0)).all()
    assert len(set(paired.champion.tolist())) == 2_000  # a sample without repeats
    shuffled = table.take(pa.array(random.Random(1).sample(range(2 * n), 2 * n)))
    again = sample_pairs(shuffled, "champ", "chal")  # the same sample, whatever the row order
    assert (again.champion == paired.champion).all()
    small = sample_pairs(table, "champ", "chal", limit=10_000)
    assert small.total == len(small.champion) == n
    assert sample_pairs(table, "champ", "nobody").total == 0


# Errors


def test_a_missing_table_is_a_data_error(tmp_path: Path, capsys: Any) -> None:
    argv = ["report", "--monitoring", str(tmp_path / "nope"), "--job", JOB, "--out", "x.html"]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "nope" in err and "--monitoring" in err


def test_an_unknown_job_lists_the_jobs_there(monitoring: Path, capsys: Any) -> None:
    argv = ["report", "--monitoring", str(monitoring), "--job", "retail_dialy", "--out", "x.html"]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert "'retail_dialy' has no rows" in err
    assert "Did you mean 'retail_daily'?" in err and "retail_daily, weekly_churn" in err


def test_an_unknown_model_lists_the_models_of_the_job(monitoring: Path, capsys: Any) -> None:
    argv = ["report", "--monitoring", str(monitoring), "--job", JOB, "--model", "x", "--out", "o"]
    assert run_cli(argv) == 2
    assert "Models there: basket_class, spend_reg" in capsys.readouterr().err


def test_last_below_one_is_a_spec_error(monitoring: Path, capsys: Any) -> None:
    argv = ["report", "--monitoring", str(monitoring), "--job", JOB, "--last", "0", "--out", "o"]
    assert run_cli(argv) == 2
    assert "--last 0" in capsys.readouterr().err


def test_a_bad_predictions_path_is_a_data_error(
    challenged: Path, tmp_path: Path, capsys: Any
) -> None:
    argv = ["report", "--monitoring", str(challenged / "monitoring"), "--job", JOB, "--out"]
    argv += [str(tmp_path / "r.html"), "--predictions", str(tmp_path / "nope")]
    assert run_cli(argv) == 2
    assert "Prediction table" in (err := capsys.readouterr().err) and "does not exist" in err
    wide = tmp_path / "wide"
    write_deltalake(str(wide), pa.table({"sale_id": [1], "m__prediction": [0.5], "run_id": ["r"]}))
    assert run_cli([*argv[:-1], str(wide)]) == 2
    err = capsys.readouterr().err
    assert "lacks column(s) model" in err and "long layout" in err
    assert not (tmp_path / "r.html").exists()


# In a real browser


def _chromium() -> str:
    """The browser, or a skip (a failure under CI: the check must not silently vanish there)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "chromium is not installed: apt-get install chromium (needed to render the report)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _browse(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with a throwaway profile; bounded, and its whole process group
    killed afterwards (the browser leaves helper processes behind otherwise)."""
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=BROWSER_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish in {BROWSER_SECONDS} s: {' '.join(command)}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, err[-2000:]
    return out


def _body_data(dom: str) -> dict[str, str]:
    tag = dom[dom.index("<body") : dom.index(">", dom.index("<body"))]
    pairs = [part.split('="', 1) for part in tag.split()[1:] if part.startswith("data-")]
    return {name: value.rstrip('"') for name, value in pairs}


def test_chromium_loads_every_image_without_a_script_error(report: Path, tmp_path: Path) -> None:
    dom = _browse(tmp_path, "--virtual-time-budget=10000", "--dump-dom", report.as_uri())
    data = _body_data(dom)
    assert data.get("data-checked") == "1", dom[:500]
    assert data["data-errors"] == "0"
    assert int(data["data-images-total"]) == report.read_text().count("<img ")
    assert data["data-images-loaded"] == data["data-images-total"]
    assert "Alerts in the latest run</h2>" in dom and "Row counts and quarantine rate" in dom
    assert dom.count('class="alert-row"') == 3
    assert "tag&lt;i&gt;x&lt;/i&gt;" in dom and "<i>x</i>" not in dom


def test_a_screenshot_of_the_page_is_a_real_picture(report: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    _browse(tmp_path, f"--screenshot={shot}", "--window-size=1280,4000", report.as_uri())
    raw = shot.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    assert struct.unpack(">II", raw[16:24]) == (1280, 4000)
    assert len(raw) > 50_000
    pixels = imread(shot)[::8, ::8, :3]
    assert pixels.std() > 0.05  # text and plots, not a blank page


def test_the_browser_check_notices_a_broken_image_and_a_script_error(
    report: Path, tmp_path: Path
) -> None:
    """The harness itself: a page with an undecodable image and a failing script is caught."""
    page = report.read_text().replace("base64,", "base64,AAAA", 1)
    page = page.replace("</body>", "<script>no_such_function();</script></body>")
    broken = tmp_path / "broken.html"
    broken.write_text(page)
    data = _body_data(
        _browse(tmp_path, "--virtual-time-budget=10000", "--dump-dom", broken.as_uri())
    )
    assert data["data-errors"] == "1"
    assert int(data["data-images-loaded"]) == int(data["data-images-total"]) - 1


def test_chromium_renders_the_challenger_sections(challenger_report: Path, tmp_path: Path) -> None:
    dom = _browse(tmp_path, "--virtual-time-budget=10000", "--dump-dom", challenger_report.as_uri())
    data = _body_data(dom)
    assert data.get("data-checked") == "1", dom[:500]
    assert data["data-errors"] == "0"
    assert int(data["data-images-total"]) == challenger_report.read_text().count("<img ")
    assert data["data-images-loaded"] == data["data-images-total"]
    assert dom.count('<h2 class="challenger">') == 2
    assert "Challenger spend&lt;shadow&gt; vs champion spend_reg" in dom
    assert dom.count('alt="challenger vs champion scores') == 1
