"""A tiny labelling campaign on disk (DuckDB + PNG slice store + roster) and ways to serve it."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from starlette.testclient import TestClient

from cmr_assets.app.web import AppConfig, create_app
from cmr_assets.labelling.roster import ScryptParams, add_annotator
from cmr_assets.settings import DataPaths

PASSWORD = "correct horse battery"
FAST_HASH = ScryptParams(n=2**10, r=8, p=1)  # production cost is 32x this; tests only need it real
N_SCANS, N_SLICES = 4, 10
HEART_CROP = [24, 24, 104, 104]  # the test pictures' heart region (128 px images, LV in the middle)
BASAL_UP_TO, APICAL_FROM = 1, 8  # the test campaign's truth: slices 0-1 too basal, 8-9 too apical


@dataclass(frozen=True)
class Campaign:
    paths: DataPaths
    annotators: tuple[str, ...]
    single: dict[str, list[tuple[str, str]]]  # annotator -> [(task_id, slice_id)]
    ranking: dict[str, list[tuple[str, list[str]]]]  # annotator -> [(batch_id, slice_ids)]


def _slice_picture(position: float, rng: np.random.Generator) -> Image.Image:
    """A short-axis-like picture: the LV ring shrinks towards the apex, so order is judgeable."""
    size = 128
    noise = rng.normal(40, 12, (size, size)).clip(0, 255).astype(np.uint8)
    picture = Image.fromarray(noise, mode="L")
    draw = ImageDraw.Draw(picture)
    radius = 34 * (1.0 - 0.8 * position)
    centre = size / 2
    draw.ellipse([centre - radius - 9, centre - radius - 9, centre + radius + 9, centre + radius + 9], fill=95)
    draw.ellipse([centre - radius, centre - radius, centre + radius, centre + radius], fill=215)
    if position < 0.2:  # basal slices show the outflow tract
        draw.rectangle([centre - 6, centre - radius - 14, centre + 6, centre], fill=200)
    return picture


def truth_of(slice_from_base: int) -> str:
    return ("too_basal" if slice_from_base <= BASAL_UP_TO
            else "too_apical" if slice_from_base >= APICAL_FROM else "lv")


def build_campaign(root: Path, annotators: tuple[str, ...], n_single: int, n_ranking: int,
                   seed: int = 0, with_reference: bool = False) -> Campaign:
    """DuckDB tables `slices` (with a heart crop), `tasks_single`, `tasks_ranking`, the PNGs and an
    active roster; `with_reference`: also `reference_labels` for the slices of the last scan, which
    no task uses (so the reference strip has examples outside every queue)."""
    paths = DataPaths(root).ensure()
    rng = np.random.default_rng(seed)
    slice_rows = []
    for scan in range(N_SCANS):
        scan_id = f"{scan:016x}"
        for index in range(N_SLICES):
            png = paths.slice_png / scan_id / f"{index:02d}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            _slice_picture(index / (N_SLICES - 1), rng).save(png)
            slice_rows.append((f"{scan_id}-{index:02d}", scan_id, index, N_SLICES, 8.0 * index,
                               str(png.relative_to(root)), HEART_CROP))
    reference_scan = slice_rows[-N_SLICES:] if with_reference else []
    slice_ids = [row[0] for row in slice_rows[:len(slice_rows) - len(reference_scan)]]
    single = {a: [(f"s-{i * 1000 + k:06d}", slice_ids[(i + k) % len(slice_ids)]) for k in range(n_single)]
              for i, a in enumerate(annotators)}
    ranking = {a: [(f"r-{i * 1000 + k:06d}", list(rng.choice(slice_ids, 8, replace=False)))
                   for k in range(n_ranking)] for i, a in enumerate(annotators)}
    with duckdb.connect(str(paths.duckdb)) as connection:
        connection.execute("CREATE TABLE slices(slice_id VARCHAR PRIMARY KEY, scan_id VARCHAR, "
                           "slice_from_base INTEGER, n_slices INTEGER, position_mm DOUBLE, png_path VARCHAR, "
                           "heart_crop INTEGER[])")
        connection.executemany("INSERT INTO slices VALUES (?, ?, ?, ?, ?, ?, ?)", slice_rows)
        if with_reference:
            connection.execute("CREATE TABLE reference_labels(slice_id VARCHAR, label VARCHAR, position01 DOUBLE, "
                               "artefact BOOLEAN, source VARCHAR)")
            connection.executemany("INSERT INTO reference_labels VALUES (?, ?, NULL, false, 'test')",
                                   [(row[0], truth_of(row[2])) for row in reference_scan])
        connection.execute("CREATE TABLE tasks_single(task_id VARCHAR, annotator_id VARCHAR, slice_id VARCHAR, "
                           "kind VARCHAR)")
        connection.executemany("INSERT INTO tasks_single VALUES (?, ?, ?, 'primary')",
                               [(t, a, s) for a, tasks in single.items() for t, s in tasks])
        connection.execute("CREATE TABLE tasks_ranking(batch_id VARCHAR, annotator_id VARCHAR, "
                           "slice_ids VARCHAR[])")
        connection.executemany("INSERT INTO tasks_ranking VALUES (?, ?, ?)",
                               [(b, a, ids) for a, batches in ranking.items() for b, ids in batches])
    for name in annotators:
        add_annotator(paths, name, PASSWORD, FAST_HASH)
    return Campaign(paths, annotators, single, ranking)


@pytest.fixture
def campaign(tmp_path: Path) -> Campaign:
    return build_campaign(tmp_path / "data", ("alice", "bob"), n_single=6, n_ranking=3)


def app_config(paths: DataPaths, **overrides) -> AppConfig:
    return AppConfig(paths, allowed_hosts=("testserver", "127.0.0.1", "localhost"), secret_key="test-secret",
                     **overrides)


@pytest.fixture
def client(campaign: Campaign) -> Iterator[TestClient]:
    with TestClient(create_app(app_config(campaign.paths))) as test_client:
        yield test_client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


def log_in(client: TestClient | httpx.Client, name: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token for API calls."""
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"name": name, "password": password, "csrf": token},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/").text)


@contextmanager
def live_server(config: AppConfig) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 10 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
