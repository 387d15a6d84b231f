"""Real-browser tests: headless Debian chromium driven by Playwright, against a live uvicorn server.

A person's path through both pages: log in, rank a batch by dragging, place the dividers by drag and
by keyboard, flag an artefact, submit, and find the record on disk; label single images by keyboard
with an undo. Screenshots go to test-artifacts/labelling/ (the README's come from
scripts/take_screenshots.py, on real pipeline data).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmr_assets.app.page_actions import drag_before, ranking_strip
from cmr_assets.labelling.annotation_format import parse_annotation_file
from cmr_assets.settings import PROJECT_ROOT
from cmr_assets_tests.app.conftest import PASSWORD, Campaign, app_config, build_campaign, live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "labelling"
BASAL_UP_TO, APICAL_FROM = 1, 8  # the test campaign's truth: slices 0-1 too basal, 8-9 too apical


def _ensure_browser() -> None:
    """Install chromium + playwright when missing; skip only where that is impossible (never in CI)."""
    try:
        import playwright.sync_api  # noqa: F401

        if CHROMIUM.exists():
            return
    except ImportError:
        pass
    script = PROJECT_ROOT / "scripts" / "ensure_chromium.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0 or not CHROMIUM.exists():
        reason = f"chromium/playwright could not be installed: {result.stderr.strip()[-400:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _ensure_browser()
    from playwright.sync_api import sync_playwright  # installed by _ensure_browser when missing

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Campaign, str]]:
    campaign = build_campaign(tmp_path / "data", ("alice",), n_single=6, n_ranking=3, seed=3)
    with live_server(app_config(campaign.paths)) as base_url:
        yield campaign, base_url


def expect(locator):
    """Playwright's auto-waiting assertions (they poll without eval, which the app's CSP forbids)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def _log_in(page, base_url: str) -> None:
    page.goto(f"{base_url}/login")
    _screenshot(page, "login.png")
    page.fill("input[name=name]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")
    _screenshot(page, "home.png")


def _slice_index_of_each_image(page, campaign: Campaign, base_url: str) -> dict[str, int]:
    """Which slice each presented image is, by comparing its bytes with the slice store."""
    by_bytes = {png.read_bytes(): int(png.stem) for png in campaign.paths.slice_png.glob("*/*.png")}
    urls = page.eval_on_selector_all("#strip li img", "imgs => imgs.map(img => img.getAttribute('src'))")
    cards = page.eval_on_selector_all("#strip li[data-kind=image]", "items => items.map(li => li.dataset.index)")
    return {index: by_bytes[page.request.get(base_url + url).body()] for index, url in zip(cards, urls, strict=True)}


def test_rank_a_batch_by_drag_and_keyboard(browser, served: tuple[Campaign, str]) -> None:
    campaign, base_url = served
    page = browser.new_page(viewport={"width": 1920, "height": 620})
    console_errors: list[str] = []
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    failed_requests: list[str] = []
    page.on("response", lambda response: failed_requests.append(response.url) if response.status >= 400 else None)
    _log_in(page, base_url)
    page.goto(f"{base_url}/label/ranking")
    page.wait_for_selector("#strip li[data-kind=image] img")
    first_ticket = page.eval_on_selector("#strip img", "img => img.getAttribute('src')").split("/")[2]

    truth = _slice_index_of_each_image(page, campaign, base_url)
    by_position = sorted(truth, key=truth.get)
    n_basal = sum(truth[i] <= BASAL_UP_TO for i in by_position)
    n_before_apical = sum(truth[i] < APICAL_FROM for i in by_position)
    # target: basal images, LV starts, LV images, LV ends, apical images
    target = [*by_position[:n_basal], "D", *by_position[n_basal:n_before_apical], "D",
              *by_position[n_before_apical:]]

    # images by drag and drop, with the dividers pushed to the end first (first by drag, then keyboard)
    drag_before(page, "#strip > li:nth-child(1)", "#strip > li:nth-child(10)")
    assert ranking_strip(page)[8:] == ["D", "D"]
    for position, index in enumerate(by_position):
        if ranking_strip(page)[position] != index:
            drag_before(page, f"#strip li[data-index='{index}']", f"#strip > li:nth-child({position + 1})")
        assert ranking_strip(page)[position] == index, (ranking_strip(page), position, index)

    # dividers by keyboard: one to the start and right past the basal images, the other left from the end
    page.locator("#strip > li:nth-child(9)").focus()
    page.keyboard.press("Home")
    for _ in range(n_basal):
        page.keyboard.press("ArrowRight")
    page.locator("#strip > li:nth-child(10)").focus()
    for _ in range(8 - n_before_apical):
        page.keyboard.press("ArrowLeft")
    assert ranking_strip(page) == target

    # keyboard reorder of an image (and back), artefact flag with 'a', enlarge with a click
    last_image = by_position[-1]
    page.locator(f"#strip li[data-index='{last_image}']").focus()
    page.keyboard.press("ArrowLeft")
    assert ranking_strip(page)[-2] == last_image
    page.keyboard.press("ArrowRight")
    page.keyboard.press("a")
    page.click(f"#strip li[data-index='{by_position[0]}'] img")
    assert page.locator("#lightbox").is_visible()
    _screenshot(page, "ranking-enlarged.png")
    page.keyboard.press("Escape")
    assert page.locator("#lightbox").is_hidden()
    assert ranking_strip(page) == target
    _screenshot(page, "ranking.png")

    page.keyboard.press("Control+Enter")
    expect(page.locator("#progress-text")).to_have_text("1 of 3 done")
    expect(page.locator("#strip img").first).not_to_have_attribute("src", re.compile(first_ticket))

    (file,) = campaign.paths.annotations_incoming.glob("ranking-alice-*.jsonl")
    (item,) = parse_annotation_file(file).records
    record = item.record
    assert record.submission_id == first_ticket
    positions_on_disk = [int(slice_id.rsplit("-", 1)[1]) for slice_id in record.order]
    assert positions_on_disk == sorted(truth.values())
    assert record.dividers == (n_basal, n_before_apical)
    assert record.artefact_ids == (record.image_ids[int(last_image)],)
    assert console_errors == [] and failed_requests == []
    page.close()


def test_label_single_images_by_keyboard_with_undo(browser, served: tuple[Campaign, str]) -> None:
    campaign, base_url = served
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    _log_in(page, base_url)
    page.goto(f"{base_url}/label/single")
    page.wait_for_selector("#image[src*='/img/']")
    _screenshot(page, "single.png")

    def press_and_wait(key: str, done_after: int) -> None:
        page.keyboard.press(key)
        expect(page.locator("#progress-text")).to_have_text(f"{done_after} of 6 done")

    press_and_wait("2", 1)                 # task 1: LV
    assert page.locator("#message").inner_text() == "Saved: LV."
    page.keyboard.press("a")               # task 2: artefact flag, then too basal
    press_and_wait("1", 2)
    press_and_wait("u", 1)                 # undo task 2 ...
    assert page.locator("#undo").is_disabled()
    press_and_wait("3", 2)                 # ... and answer it again: too apical
    press_and_wait("x", 3)                 # task 3: unusable
    assert "of 5:00:00 used" in page.locator("#time-text").inner_text()

    records = sorted((item.record for path in campaign.paths.annotations_incoming.glob("single-alice-*.jsonl")
                      for item in parse_annotation_file(path).records), key=lambda r: r.submitted_at)
    tasks = [task_id for task_id, _ in campaign.single["alice"]]
    assert [(r.task_id, r.label, r.artefact) for r in records] == [
        (tasks[0], "lv", False), (tasks[1], "too_basal", True), (tasks[1], "too_apical", False),
        (tasks[2], None, True)]
    page.close()
