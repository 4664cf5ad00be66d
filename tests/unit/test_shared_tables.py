"""A job run's shared DeltaTable handles (sinks.storage.shared_tables): one open per unchanged
table, never a stale one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from batchscore.sinks.log import table_version, transaction_version
from batchscore.sinks.storage import delta_table, shared_tables


def _table(path: Path, rows: int, mode: str = "append") -> str:
    write_deltalake(str(path), pa.table({"x": list(range(rows))}), mode=mode)
    return str(path)


def test_unchanged_table_is_opened_once_within_a_run(tmp_path: Path) -> None:
    path = _table(tmp_path / "t", 3)
    with shared_tables():
        first = delta_table(path)
        assert delta_table(path) is first
        assert table_version(path) == 0 and transaction_version(path, "app") is None
        assert delta_table(path) is first
    assert delta_table(path) is not first  # outside a run nothing is shared


def test_a_commit_is_seen_at_once(tmp_path: Path) -> None:
    path = _table(tmp_path / "t", 3)
    with shared_tables():
        before = delta_table(path)
        _table(tmp_path / "t", 2)
        after = delta_table(path)
        assert after is not before and after.version() == 1
        assert after.to_pyarrow_table().num_rows == 5
        assert delta_table(path) is after


def test_a_table_replaced_at_the_same_version_is_not_served_stale(tmp_path: Path) -> None:
    path = _table(tmp_path / "t", 3)
    with shared_tables():
        old = delta_table(path)
        log = os.path.join(path, "_delta_log", f"{0:020d}.json")
        mtime = os.stat(log).st_mtime_ns
        shutil.rmtree(path)
        _table(tmp_path / "t", 7)
        os.utime(log, ns=(mtime + 1_000, mtime + 1_000))  # even within one clock tick
        new = delta_table(path)
        assert new is not old and new.version() == 0
        assert new.to_pyarrow_table().num_rows == 7


def test_writers_and_time_travel_get_their_own_handles(tmp_path: Path) -> None:
    path = _table(tmp_path / "t", 3)
    with shared_tables():
        shared = delta_table(path)
        assert delta_table(path, fresh=True) is not shared
        assert delta_table(path) is shared  # a fresh handle replaces nothing
        with shared_tables():  # nested: the outer run's tables
            assert delta_table(path) is shared


def test_a_scan_pinned_to_the_held_version_shares_it(tmp_path: Path) -> None:
    path = _table(tmp_path / "t", 3)
    _table(tmp_path / "t", 2)
    with shared_tables():
        latest = delta_table(path)
        assert delta_table(path, version=1) is latest
        older = delta_table(path, version=0)
        assert older is not latest and older.to_pyarrow_table().num_rows == 3
