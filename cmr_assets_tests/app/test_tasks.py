"""Task snapshots from DuckDB: read-only, tolerant of a pipeline holding the write lock."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb

from cmr_assets.app.tasks import TaskSource, load_task_snapshot, resolve_slice_png
from cmr_assets_tests.app.conftest import HEART_CROP, build_campaign


def test_snapshot_has_queues_in_task_order_and_skips_unknown_slices(tmp_path) -> None:
    campaign = build_campaign(tmp_path / "data", ("alice",), n_single=3, n_ranking=2)
    paths = campaign.paths
    with duckdb.connect(str(paths.duckdb)) as connection:
        connection.execute("INSERT INTO tasks_single VALUES ('s-000000', 'alice', 'ffffffffffffffff-01', 'primary')")
        connection.execute("INSERT INTO slices VALUES ('../../etc', 'x', 0, 1, 0, 'slices/png/x.png', NULL)")
    snapshot = load_task_snapshot(paths.duckdb, paths.slice_png, paths.root)
    assert [t.task_id for t in snapshot.single["alice"]] == [t for t, _ in campaign.single["alice"]]
    assert [t.batch_id for t in snapshot.ranking["alice"]] == [b for b, _ in campaign.ranking["alice"]]
    assert "../../etc" not in snapshot.png_paths
    slice_id = campaign.single["alice"][0][1]
    assert resolve_slice_png(snapshot, slice_id) == paths.slice_png / slice_id[:16] / f"{slice_id[-2:]}.png"
    assert resolve_slice_png(snapshot, "ffffffffffffffff-01") is None


def test_slices_from_before_the_heart_crop_are_served_full_view(tmp_path) -> None:
    campaign = build_campaign(tmp_path / "data", ("alice",), n_single=3, n_ranking=1)
    paths = campaign.paths
    assert set(load_task_snapshot(paths.duckdb, paths.slice_png, paths.root).heart_crops.values()) == {
        tuple(HEART_CROP)}
    with duckdb.connect(str(paths.duckdb)) as connection:
        connection.execute("ALTER TABLE slices DROP COLUMN heart_crop")
    snapshot = load_task_snapshot(paths.duckdb, paths.slice_png, paths.root)
    assert snapshot.heart_crops == {} and len(snapshot.single["alice"]) == 3


def test_reference_candidates_from_confident_labels_when_there_is_no_reference(tmp_path) -> None:
    campaign = build_campaign(tmp_path / "data", ("alice",), n_single=3, n_ranking=1)
    paths = campaign.paths
    slice_ids = [slice_id for _, slice_id in campaign.single["alice"]]
    with duckdb.connect(str(paths.duckdb)) as connection:
        connection.execute("CREATE TABLE labels_ranking(slice_id VARCHAR, label VARCHAR, p_too_basal DOUBLE, "
                           "p_lv DOUBLE, p_too_apical DOUBLE, artefact_excluded BOOLEAN)")
        connection.executemany("INSERT INTO labels_ranking VALUES (?, ?, ?, ?, ?, ?)", [
            (slice_ids[0], "lv", 0.05, 0.9, 0.05, False),      # confident
            (slice_ids[1], "lv", 0.3, 0.6, 0.1, False),        # not confident
            (slice_ids[2], "too_basal", 0.95, 0.05, 0.0, True)])  # excluded as artefact
    candidates = load_task_snapshot(paths.duckdb, paths.slice_png, paths.root).reference_candidates
    assert [(c.slice_id, c.label, c.confidence) for c in candidates] == [(slice_ids[0], "lv", 0.9)]


def test_missing_database_is_an_empty_campaign(tmp_path) -> None:
    snapshot = load_task_snapshot(tmp_path / "absent.duckdb", tmp_path, tmp_path)
    assert snapshot.single == {} and snapshot.ranking == {}


def test_refresh_keeps_last_snapshot_while_pipeline_holds_write_lock(tmp_path, caplog) -> None:
    campaign = build_campaign(tmp_path / "data", ("alice",), n_single=3, n_ranking=1)
    source = TaskSource(campaign.paths, refresh_s=0)
    assert len(source.snapshot().single["alice"]) == 3
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(3)"),
        str(campaign.paths.duckdb)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        assert len(source.snapshot().single["alice"]) == 3  # previous snapshot, no crash
        assert time.monotonic() - started < 2.5  # bounded retry
        assert "task refresh failed, keeping the previous snapshot" in caplog.text
    finally:
        holder.kill()
        holder.wait()
