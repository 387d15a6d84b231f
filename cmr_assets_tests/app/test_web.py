"""API tests of the labelling app through Starlette's TestClient."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from starlette.testclient import TestClient

from cmr_assets.app.web import create_app
from cmr_assets.labelling.annotation_format import AnnotationContext, parse_annotation_file
from cmr_assets.labelling.roster import add_annotator, disable_annotator
from cmr_assets.settings import DataPaths
from cmr_assets_tests.app.conftest import (
    FAST_HASH,
    HEART_CROP,
    PASSWORD,
    Campaign,
    app_config,
    build_campaign,
    csrf_of,
    log_in,
    truth_of,
)


def _records(campaign: Campaign) -> list:
    """Every record in the incoming folder, validated against the campaign in DuckDB."""
    with duckdb.connect(str(campaign.paths.duckdb), read_only=True) as connection:
        context = AnnotationContext.from_tasks(connection.execute("SELECT * FROM tasks_single").df(),
                                               connection.execute("SELECT * FROM tasks_ranking").df(),
                                               set(campaign.annotators))
    records = []
    for path in sorted(campaign.paths.annotations_incoming.glob("*.jsonl")):
        parsed = parse_annotation_file(path, context)
        assert parsed.rejections == [], (path, parsed.rejections)
        records += [item.record for item in parsed.records]
    return records


def _api(client: TestClient, token: str, url: str, body: dict):
    return client.post(url, content=json.dumps(body), headers={"X-CSRF-Token": token,
                                                               "Content-Type": "application/json"})


def test_login_and_logout(client: TestClient) -> None:
    token = log_in(client, "alice")
    assert "alice" in client.get("/").text
    assert client.post("/logout", data={"csrf": "wrong"}, follow_redirects=False).status_code == 403
    assert client.post("/logout", data={"csrf": token}, follow_redirects=False).status_code == 303
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_wrong_password_and_missing_csrf_are_refused(client: TestClient) -> None:
    token = csrf_of(client.get("/login").text)
    assert client.post("/login", data={"name": "alice", "password": "nope-nope", "csrf": token}).status_code == 401
    assert client.post("/login", data={"name": "alice", "password": PASSWORD}).status_code == 403
    assert client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf": "forged"}).status_code == 403


def test_everything_needs_a_session(client: TestClient) -> None:
    for url in ("/", "/label/ranking", "/label/single"):
        assert client.get(url, follow_redirects=False).headers["location"] == "/login"
    assert client.get("/api/ranking/next").status_code == 401
    assert client.get("/img/00000000-0000-0000-0000-000000000000/0").status_code == 401
    assert client.post("/api/single/submit", json={}).status_code == 401


def test_security_headers(client: TestClient) -> None:
    headers = client.get("/login").headers
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_foreign_host_header_refused(client: TestClient) -> None:
    assert client.get("/login", headers={"host": "evil.example"}).status_code == 400


def test_api_post_needs_csrf_header(client: TestClient, campaign: Campaign) -> None:
    token = log_in(client, "alice")
    ticket = client.get("/api/single/next").json()["task"]["ticket"]
    body = {"ticket": ticket, "label": "lv", "artefact": False}
    assert client.post("/api/single/submit", json=body).status_code == 403
    assert client.post("/api/single/submit", json=body, headers={"X-CSRF-Token": token[:-1]}).status_code == 403
    assert _records(campaign) == []
    assert _api(client, token, "/api/single/submit", body).status_code == 200


def test_images_only_through_own_tickets(client: TestClient, campaign: Campaign) -> None:
    log_in(client, "alice")
    task = client.get("/api/ranking/next").json()["task"]
    assert len(task["images"]) == 8
    image = client.get(task["images"][0])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert image.headers["x-content-type-options"] == "nosniff"
    for url in (f"/img/{task['ticket']}/8", f"/img/{task['ticket']}/-1", "/img/../../cmr.duckdb",
                "/img/..%2F..%2Fcmr.duckdb/0", f"/img/{task['ticket']}/..%2F..%2Fcmr.duckdb",
                "/static/../accounts.py", "/static/..%2Faccounts.py", "/img/not-a-ticket/0"):
        assert client.get(url).status_code == 404, url
    # a slice id never reaches the client: it would reveal the slice's position in its stack
    all_slice_ids = {s for _, ids in campaign.ranking["alice"] for s in ids}
    assert not any(slice_id in json.dumps(task) for slice_id in all_slice_ids)

    with TestClient(create_app(app_config(campaign.paths))) as other:
        log_in(other, "bob")
        assert other.get(task["images"][0]).status_code == 404


def test_image_path_outside_slice_store_refused(client: TestClient, campaign: Campaign) -> None:
    secret = campaign.paths.root / "outside.png"
    secret.write_bytes(b"\x89PNG not for annotators")
    with duckdb.connect(str(campaign.paths.duckdb)) as connection:
        connection.execute("UPDATE slices SET png_path = '../data/outside.png'")
    with TestClient(create_app(app_config(campaign.paths))) as fresh:
        log_in(fresh, "alice")
        task = fresh.get("/api/single/next").json()["task"]
        assert fresh.get(task["images"][0]).status_code == 404


def test_ranking_submit_writes_one_valid_record_and_double_post_is_not_duplicated(
        client: TestClient, campaign: Campaign) -> None:
    token = log_in(client, "alice")
    first = client.get("/api/ranking/next").json()
    assert first["progress"] == {"done": 0, "total": 3, "seconds_used": 0.0, "budget_s": 5 * 3600.0,
                                 "session_done": 0, "session_seconds": 0.0, "seconds_per_task": None,
                                 "seconds_left_estimate": None}
    assert first["task"]["crops"] == [HEART_CROP] * 8 and first["task"]["initial"] is None
    body = {"ticket": first["task"]["ticket"], "order": [3, 1, 0, 2, 7, 6, 5, 4], "dividers": [2, 6],
            "artefacts": [5]}
    response = _api(client, token, "/api/ranking/submit", body)
    assert response.status_code == 200 and response.json()["duplicate"] is False
    assert response.json()["task"]["ticket"] != first["task"]["ticket"]  # the next batch, at once
    again = _api(client, token, "/api/ranking/submit", body)
    assert again.status_code == 200 and again.json()["duplicate"] is True

    (record,) = _records(campaign)
    assert record.annotator_id == "alice" and record.submission_id == first["task"]["ticket"]
    batch_id, slice_ids = campaign.ranking["alice"][0]
    assert record.batch_id == batch_id and sorted(record.image_ids) == sorted(slice_ids)
    assert record.order == tuple(record.image_ids[i] for i in body["order"])
    assert record.dividers == (2, 6) and record.artefact_ids == (record.image_ids[5],)
    assert record.tool_version.endswith(" web") and record.started_at <= record.submitted_at


def test_bad_ranking_payloads_are_rejected(client: TestClient, campaign: Campaign) -> None:
    token = log_in(client, "alice")
    ticket = client.get("/api/ranking/next").json()["task"]["ticket"]
    good = {"ticket": ticket, "order": list(range(8)), "dividers": [2, 6], "artefacts": []}
    for change in ({"order": [0] * 8}, {"order": list(range(7))}, {"dividers": [6, 2]}, {"dividers": [0, 9]},
                   {"dividers": [True, 3]}, {"artefacts": [8]}, {"artefacts": [1, 1]}, {"order": "01234567"}):
        response = _api(client, token, "/api/ranking/submit", {**good, **change})
        assert response.status_code == 400, change
    assert client.post("/api/ranking/submit", content=b"{not json", headers={"X-CSRF-Token": token}).status_code == 400
    assert _api(client, token, "/api/ranking/submit", {**good, "ticket": "forged"}).status_code == 404
    assert _records(campaign) == []


def test_single_labelling_undo_supersedes(client: TestClient, campaign: Campaign) -> None:
    token = log_in(client, "alice")
    first = client.get("/api/single/next").json()["task"]
    second = _api(client, token, "/api/single/submit", {"ticket": first["ticket"], "label": "lv",
                                                         "artefact": False}).json()
    assert second["progress"]["done"] == 1
    undone = _api(client, token, "/api/single/undo", {}).json()
    assert undone["progress"]["done"] == 0
    assert _api(client, token, "/api/single/undo", {}).status_code == 409  # one level
    redo = undone["task"]
    # the undone image comes back first, under a new ticket
    assert client.get(redo["images"][0]).content == client.get(first["images"][0]).content
    _api(client, token, "/api/single/submit", {"ticket": redo["ticket"], "label": "too_basal", "artefact": True})
    assert _api(client, token, "/api/single/submit", {"ticket": second["task"]["ticket"], "label": None,
                                                      "artefact": False}).status_code == 400
    _api(client, token, "/api/single/submit", {"ticket": second["task"]["ticket"], "label": None, "artefact": True})

    records = sorted(_records(campaign), key=lambda r: r.submitted_at)
    assert [(r.task_id, r.label, r.artefact) for r in records] == [
        (campaign.single["alice"][0][0], "lv", False),
        (campaign.single["alice"][0][0], "too_basal", True),  # supersedes the first (later submitted_at)
        (campaign.single["alice"][1][0], None, True)]


def test_ranking_undo_brings_the_batch_back_as_answered_and_the_new_record_supersedes(
        client: TestClient, campaign: Campaign) -> None:
    token = log_in(client, "alice")
    assert _api(client, token, "/api/ranking/undo", {}).status_code == 409  # nothing answered yet
    first = client.get("/api/ranking/next").json()["task"]
    order, dividers = [3, 1, 0, 2, 7, 6, 5, 4], [2, 6]
    submitted = _api(client, token, "/api/ranking/submit", {"ticket": first["ticket"], "order": order,
                                                            "dividers": dividers, "artefacts": [5]}).json()
    assert submitted["can_undo"] is True and client.get("/api/ranking/next").json()["can_undo"] is True
    undone = _api(client, token, "/api/ranking/undo", {}).json()
    assert undone["progress"]["done"] == 0 and undone["can_undo"] is False
    assert _api(client, token, "/api/ranking/undo", {}).status_code == 409  # one level
    again = undone["task"]
    assert again["initial"] == {"dividers": dividers, "artefacts": [order.index(5)]}
    first_images = [client.get(url).content for url in first["images"]]
    assert [client.get(url).content for url in again["images"]] == [first_images[i] for i in order]
    _api(client, token, "/api/ranking/submit", {"ticket": again["ticket"], "order": list(range(8)),
                                                "dividers": [3, 6], "artefacts": []})

    earlier, later = sorted(_records(campaign), key=lambda r: r.submitted_at)
    assert earlier.batch_id == later.batch_id == campaign.ranking["alice"][0][0]
    assert later.order == earlier.order and later.dividers == (3, 6) and later.artefact_ids == ()
    recent = client.get("/api/ranking/recent").json()["answers"]
    assert [(a["ticket"], a["superseded"], a["undoable"]) for a in recent] == [
        (again["ticket"], False, True), (first["ticket"], True, False)]
    assert recent[1]["order"] == order and recent[1]["dividers"] == dividers and recent[1]["artefacts"] == [5]
    assert client.get(f"/img/{first['ticket']}/0").status_code == 200  # reviewed images stay visible


def test_review_list_and_progress_pace_survive_a_restart(client: TestClient, campaign: Campaign) -> None:
    token = log_in(client, "bob")
    for label in ("lv", "too_basal"):
        ticket = client.get("/api/single/next").json()["task"]["ticket"]
        _api(client, token, "/api/single/submit", {"ticket": ticket, "label": label})
    progress = client.get("/api/single/next").json()["progress"]
    assert progress["session_done"] == 2 and progress["seconds_per_task"] is not None
    assert progress["seconds_left_estimate"] == round(progress["seconds_per_task"] * 4)
    with TestClient(create_app(app_config(campaign.paths))) as restarted:
        log_in(restarted, "bob")
        recent = restarted.get("/api/single/recent").json()["answers"]
        assert [a["label"] for a in recent] == ["too_basal", "lv"] and not any(a["undoable"] for a in recent)
        assert restarted.get("/api/single/next").json()["progress"]["session_done"] == 0  # a new session
        assert restarted.get(f"/img/{recent[0]['ticket']}/0").status_code == 200
    assert client.get("/api/nonsense/recent").status_code == 404


def test_reference_strip_shows_typical_examples_outside_the_queue(tmp_path: Path) -> None:
    campaign = build_campaign(tmp_path / "data", ("alice",), n_single=4, n_ranking=2, with_reference=True)
    with TestClient(create_app(app_config(campaign.paths))) as client:
        assert client.get("/api/reference").status_code == 401
        log_in(client, "alice")
        examples = client.get("/api/reference").json()["examples"]
        assert [e["label"] for e in examples] == ["too_basal", "lv", "too_apical"]  # one reference scan
        assert all(e["crop"] == HEART_CROP for e in examples)
        by_bytes = {png.read_bytes(): png for png in campaign.paths.slice_png.glob("*/*.png")}
        shown = [by_bytes[client.get(e["image"]).content] for e in examples]
        # typical: the slice furthest from the class boundary in its stack
        assert [int(png.stem) for png in shown] == [0, 4, 9]
        assert [truth_of(int(png.stem)) for png in shown] == [e["label"] for e in examples]
        assert client.get(f"/ref/{len(examples)}").status_code == 404


def test_task_answered_in_another_tab_is_not_answered_twice(client: TestClient, campaign: Campaign) -> None:
    token = log_in(client, "alice")
    tab_one = client.get("/api/single/next").json()["task"]["ticket"]
    tab_two = client.get("/api/single/next").json()["task"]["ticket"]
    assert _api(client, token, "/api/single/submit", {"ticket": tab_one, "label": "lv"}).status_code == 200
    assert _api(client, token, "/api/single/submit", {"ticket": tab_two, "label": "lv"}).status_code == 409
    assert len(_records(campaign)) == 1


def test_progress_survives_a_restart(client: TestClient, campaign: Campaign) -> None:
    token = log_in(client, "bob")
    for _ in range(2):
        ticket = client.get("/api/single/next").json()["task"]["ticket"]
        _api(client, token, "/api/single/submit", {"ticket": ticket, "label": "lv"})
    with TestClient(create_app(app_config(campaign.paths))) as restarted:
        log_in(restarted, "bob")
        assert restarted.get("/api/single/next").json()["progress"]["done"] == 2
        restarted_ticket = restarted.get("/api/single/next").json()["task"]["ticket"]
        assert restarted_ticket
    done_tasks = {r.task_id for r in _records(campaign)}
    assert done_tasks == {task_id for task_id, _ in campaign.single["bob"][:2]}


def test_finished_queue_says_so(client: TestClient, campaign: Campaign) -> None:
    token = log_in(client, "bob")
    for _ in range(len(campaign.single["bob"])):
        ticket = client.get("/api/single/next").json()["task"]["ticket"]
        response = _api(client, token, "/api/single/submit", {"ticket": ticket, "label": "too_apical"})
    assert response.json()["task"] is None
    assert response.json()["progress"]["done"] == response.json()["progress"]["total"] == 6


def test_login_rate_limited(campaign: Campaign) -> None:
    with TestClient(create_app(app_config(campaign.paths, login_max_failures=3))) as client:
        token = csrf_of(client.get("/login").text)
        for _ in range(3):
            assert client.post("/login", data={"name": "alice", "password": "guess-123",
                                               "csrf": token}).status_code == 401
        blocked = client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf": token})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0


def test_disabled_annotator_session_ends(client: TestClient, campaign: Campaign) -> None:
    log_in(client, "alice")
    assert client.get("/api/single/next").status_code == 200
    disable_annotator(campaign.paths, "alice")
    assert client.get("/api/single/next").status_code == 401
    token = csrf_of(client.get("/login").text)
    assert client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf": token}).status_code == 401


def test_no_campaign_yet(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    add_annotator(paths, "carol", PASSWORD, FAST_HASH)
    with TestClient(create_app(app_config(paths))) as client:
        log_in(client, "carol")
        assert client.get("/api/ranking/next").json() == {
            "task": None, "progress": {"done": 0, "total": 0, "seconds_used": 0.0, "budget_s": 18000.0,
                                       "session_done": 0, "session_seconds": 0.0, "seconds_per_task": None,
                                       "seconds_left_estimate": None}, "can_undo": False}
        assert client.get("/api/reference").json() == {"examples": []}
