"""20 annotators submit 25 answers each at once against a real uvicorn server on loopback."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from cmr_assets.labelling.annotation_format import SingleAnnotation, parse_annotation_file
from cmr_assets_tests.app.conftest import app_config, build_campaign, live_server, log_in

N_CLIENTS, N_SINGLE, N_RANKING = 20, 15, 10


def _label_everything(base_url: str, annotator: str, start: threading.Barrier) -> list[bool]:
    """Answer the whole queue, posting each answer twice (every 5th time both posts at once)."""
    duplicates = []
    with httpx.Client(base_url=base_url, timeout=30) as client, ThreadPoolExecutor(2) as pair:
        token = log_in(client, annotator)
        headers = {"X-CSRF-Token": token}
        start.wait()
        for n in range(N_SINGLE + N_RANKING):
            strategy = "single" if n < N_SINGLE else "ranking"
            task = client.get(f"/api/{strategy}/next").json()["task"]
            body = ({"ticket": task["ticket"], "label": "lv"} if strategy == "single" else
                    {"ticket": task["ticket"], "order": [7, 6, 5, 4, 3, 2, 1, 0], "dividers": [1, 7],
                     "artefacts": []})
            url = f"/api/{strategy}/submit"
            if n % 5 == 0:
                posts = list(pair.map(lambda _, url=url, body=body: client.post(url, json=body, headers=headers),
                                      range(2)))
            else:
                posts = [client.post(url, json=body, headers=headers) for _ in range(2)]
            assert [p.status_code for p in posts] == [200, 200], [p.text for p in posts]
            duplicates += [p.json()["duplicate"] for p in posts]
    return duplicates


def test_concurrent_submissions_are_neither_lost_nor_duplicated(tmp_path: Path) -> None:
    annotators = tuple(f"doctor-{i:02d}" for i in range(N_CLIENTS))
    campaign = build_campaign(tmp_path / "data", annotators, N_SINGLE, N_RANKING)
    start = threading.Barrier(N_CLIENTS)
    with live_server(app_config(campaign.paths)) as base_url, ThreadPoolExecutor(N_CLIENTS) as clients:
        results = list(clients.map(lambda name: _label_everything(base_url, name, start), annotators))

    for duplicates in results:  # each answer stored once, its repeat recognised
        assert Counter(duplicates) == Counter({False: N_SINGLE + N_RANKING, True: N_SINGLE + N_RANKING})
    files = sorted(campaign.paths.annotations_incoming.glob("*.jsonl"))
    assert not list(campaign.paths.annotations_incoming.glob("*.tmp"))
    records = []
    for path in files:
        parsed = parse_annotation_file(path)
        assert parsed.rejections == [] and not parsed.partial_last_line
        records += [item.record for item in parsed.records]
    assert len(files) == len(records) == N_CLIENTS * (N_SINGLE + N_RANKING)
    assert len({r.submission_id for r in records}) == len(records)
    answered = Counter((r.annotator_id, r.task_id if isinstance(r, SingleAnnotation) else r.batch_id)
                       for r in records)
    expected = {(a, t) for a in annotators for t, _ in campaign.single[a]} | {
        (a, b) for a in annotators for b, _ in campaign.ranking[a]}
    assert set(answered) == expected and set(answered.values()) == {1}
