"""Real-browser tests: headless Debian chromium driven by Playwright, against a live uvicorn server.

A person's path through both pages: log in, rank a batch by dragging, place the dividers by drag and
by keyboard, flag an artefact, submit, and find the record on disk; label single images by keyboard
with an undo. At 1280x720, 1366x768 and 1920x1080: the 8 cards share one row, window/level changes
the rendered pixels and reset restores them, undo of a batch writes the superseding record, a batch
and the single queue are completed by keyboard alone, and axe-core finds no accessibility violation.
Screenshots go to test-artifacts/labelling/ (the README's come from scripts/take_screenshots.py, on
real pipeline data).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmr_assets.labelling.annotation_format import parse_annotation_file
from cmr_assets.settings import PROJECT_ROOT
from cmr_assets_tests.app.conftest import (
    APICAL_FROM,
    BASAL_UP_TO,
    PASSWORD,
    Campaign,
    app_config,
    build_campaign,
    live_server,
)
from cmr_assets_tests.app.page_actions import drag_before, ranking_strip

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "labelling"
VIEWPORTS = [(1280, 720), (1366, 768), (1920, 1080)]


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


def _open_ranking(page, base_url: str) -> None:
    """The ranking page with its first batch on screen and the first-visit reference strip closed."""
    page.goto(f"{base_url}/label/ranking")
    page.wait_for_selector("#strip li[data-kind=image] canvas")
    if page.locator("#reference").is_visible():
        page.keyboard.press("g")
    expect(page.locator("#reference")).to_be_hidden()


def _ticket_on_screen(page) -> str:
    return page.eval_on_selector("#strip canvas", "c => c.dataset.src").split("/")[2]


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
    urls = page.eval_on_selector_all("#strip li canvas", "canvases => canvases.map(c => c.dataset.src)")
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
    _open_ranking(page, base_url)
    first_ticket = _ticket_on_screen(page)

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
    page.click(f"#strip li[data-index='{by_position[0]}'] canvas")
    assert page.locator("#lightbox").is_visible()
    _screenshot(page, "ranking-enlarged.png")
    page.keyboard.press("Escape")
    assert page.locator("#lightbox").is_hidden()
    assert ranking_strip(page) == target
    _screenshot(page, "ranking.png")

    page.keyboard.press("Control+Enter")
    expect(page.locator("#progress-text")).to_have_text("1 of 3 done")
    expect(page.locator("#strip canvas").first).not_to_have_attribute("data-src", re.compile(first_ticket))

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
    page.wait_for_selector("#image[data-src*='/img/']")
    page.keyboard.press("g")  # the reference strip opens on the first visit; G closes it
    expect(page.locator("#reference")).to_be_hidden()
    _screenshot(page, "single.png")

    def press_and_wait(key: str, done_after: int) -> None:
        page.keyboard.press(key)
        expect(page.locator("#progress-text")).to_have_text(f"{done_after} of 6 done")

    # window/level and zoom on the image itself, all in the browser
    original = _pixels(page, "#image")
    fitted = page.eval_on_selector("#image", "c => c.width")
    page.keyboard.press("]")
    page.keyboard.press("+")
    assert _pixels(page, "#image") != original and page.eval_on_selector("#image", "c => c.width") < fitted
    page.keyboard.press("r")
    assert _pixels(page, "#image") == original

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

    # the rest of the queue by keyboard alone, then the end-of-queue page
    for done, key in ((4, "1"), (5, "2"), (6, "3")):
        press_and_wait(key, done)
    expect(page.locator("#finished-title")).to_have_text("All 6 images are done. Thank you!")
    expect(page.locator("#finished-text")).to_contain_text("this session 6 in")
    expect(page.locator("#image")).to_be_hidden()
    assert page.locator("button.answer").first.is_disabled()
    page.close()


# ---------------------------------------------------------------- layout, image adjustment, undo, access


@pytest.fixture
def served_with_reference(tmp_path: Path) -> Iterator[tuple[Campaign, str]]:
    campaign = build_campaign(tmp_path / "data", ("alice",), n_single=3, n_ranking=3, seed=5, with_reference=True)
    with live_server(app_config(campaign.paths)) as base_url:
        yield campaign, base_url


def _pixels(page, selector: str) -> list[str]:
    """What each matching canvas shows, as PNG data URLs (same-origin images: the canvas is readable)."""
    return page.eval_on_selector_all(selector, "canvases => canvases.map(c => c.toDataURL())")


def _accessibility_violations(page) -> list[str]:
    """axe-core (run in the page) on WCAG 2 A/AA rules: contrast, names, roles, keyboard access."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21aa"]}})
    return [f"{v['id']}: {[n['target'] for n in v['nodes']]}" for v in results.response["violations"]]


@pytest.mark.parametrize(("width", "height"), VIEWPORTS)
def test_eight_cards_share_one_row_and_the_page_is_accessible(browser, served_with_reference, width: int,
                                                              height: int) -> None:
    _, base_url = served_with_reference
    page = browser.new_page(viewport={"width": width, "height": height})
    _log_in(page, base_url)
    page.goto(f"{base_url}/label/ranking")
    page.wait_for_selector("#strip li[data-kind=image] canvas")
    expect(page.locator("#reference")).to_be_visible()  # first visit: the reference strip and guide
    expect(page.locator("#reference-strip canvas")).to_have_count(3)
    assert _accessibility_violations(page) == []
    page.keyboard.press("g")
    expect(page.locator("#reference")).to_be_hidden()

    boxes = [page.locator(f"#strip li.card >> nth={i}").bounding_box() for i in range(8)]
    assert len({round(box["y"]) for box in boxes}) == 1, boxes  # one row
    assert max(box["x"] + box["width"] for box in boxes) <= width
    card_width = boxes[0]["width"]
    assert card_width >= (120 if width < 1500 else 190)  # the cards grow with the window
    canvas = page.locator("#strip canvas").first.bounding_box()
    assert canvas["height"] == pytest.approx(canvas["width"], abs=1)
    _screenshot(page, f"ranking-{width}x{height}.png")
    assert _accessibility_violations(page) == []

    page.goto(f"{base_url}/label/ranking")  # the second visit goes straight to the batch
    page.wait_for_selector("#strip li[data-kind=image] canvas")
    expect(page.locator("#reference")).to_be_hidden()
    page.goto(f"{base_url}/label/single")
    page.wait_for_selector("#image[data-src*='/img/']")
    assert _accessibility_violations(page) == []
    page.close()


def test_window_level_for_the_batch_or_one_image_and_reset(browser, served: tuple[Campaign, str]) -> None:
    _, base_url = served
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    _log_in(page, base_url)
    _open_ranking(page, base_url)
    original = _pixels(page, "#strip canvas")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    # right-drag on one card: all 8 change together
    box = page.locator("#strip li.card canvas").nth(2).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down(button="right")
    page.mouse.move(box["x"] + box["width"] / 2 - 60, box["y"] + box["height"] / 2 - 40, steps=6)
    page.mouse.up(button="right")
    dragged = _pixels(page, "#strip canvas")
    assert all(after != before for after, before in zip(dragged, original, strict=True))
    assert page.locator("#lightbox").is_hidden()  # a right-drag is not a click
    page.keyboard.press("r")
    assert _pixels(page, "#strip canvas") == original

    # keys: the whole batch; with Shift, the focused image only
    page.keyboard.press("]")
    page.keyboard.press(".")
    assert all(after != before for after, before in zip(_pixels(page, "#strip canvas"), original, strict=True))
    page.keyboard.press("r")
    page.locator("#strip li.card").nth(4).focus()
    page.keyboard.press("Shift+BracketLeft")
    changed = [after != before for after, before in zip(_pixels(page, "#strip canvas"), original, strict=True)]
    focused_index = page.eval_on_selector_all("#strip li.card",
                                              "cards => cards.findIndex(c => c === document.activeElement)")
    assert changed == [i == focused_index for i in range(8)]
    page.keyboard.press("r")
    assert _pixels(page, "#strip canvas") == original

    # the full field of view one key away: the canvas shows the whole 128 px image instead of the crop
    widths = page.eval_on_selector_all("#strip canvas", "cs => cs.map(c => c.width)")
    page.keyboard.press("f")
    assert page.eval_on_selector_all("#strip canvas", "cs => cs.map(c => c.width)") == [128] * 8 != widths
    page.keyboard.press("f")

    # enlarged view: zoom shows a smaller region, 0 fits again, Escape closes
    page.keyboard.press("Enter")
    expect(page.locator("#lightbox")).to_be_visible()
    fitted = page.eval_on_selector("#lightbox-canvas", "c => c.width")
    page.keyboard.press("+")
    page.keyboard.press("+")
    zoomed = page.eval_on_selector("#lightbox-canvas", "c => c.width")
    assert zoomed < fitted
    pixels_zoomed = _pixels(page, "#lightbox-canvas")
    page.keyboard.press("ArrowLeft")
    assert _pixels(page, "#lightbox-canvas") != pixels_zoomed  # panned
    page.keyboard.press("0")
    assert page.eval_on_selector("#lightbox-canvas", "c => c.width") == fitted
    page.keyboard.press("Escape")
    expect(page.locator("#lightbox")).to_be_hidden()
    assert not [url for url in requests if "/img/" in url or "/api/" in url]  # all in the browser
    page.close()


def _ranking_records(campaign: Campaign) -> list:
    return sorted((item.record for path in campaign.paths.annotations_incoming.glob("ranking-alice-*.jsonl")
                   for item in parse_annotation_file(path).records), key=lambda r: r.submitted_at)


def test_keyboard_only_batch_then_undo_writes_a_superseding_record(browser, served: tuple[Campaign, str]) -> None:
    campaign, base_url = served
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    _log_in(page, base_url)
    _open_ranking(page, base_url)
    first_ticket = _ticket_on_screen(page)

    # keyboard only: Tab from the top of the page reaches every control, each with a visible focus ring
    page.locator("a.brand").focus()
    reached = []
    for _ in range(20):
        focused = page.evaluate("() => { const e = document.activeElement; return e === document.body ? "
                                "['(page end)', 'n/a'] : [e.id || e.dataset.kind || e.textContent.trim(), "
                                "getComputedStyle(e).outlineStyle]; }")
        reached.append(focused[0])
        assert focused[1] not in ("none", ""), focused
        page.keyboard.press("Tab")
    assert {"Rank batches", "One image at a time", "Log out", "reference-button", "review-button", "image",
            "divider", "submit"} <= set(reached)
    assert reached.count("image") == 8 and reached.count("divider") == 2
    # back to the strip: the first divider to after two images, submit with Ctrl+Enter
    page.locator("#strip > li").first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#progress-text")).to_have_text("1 of 3 done")
    expect(page.locator("#undo")).to_be_enabled()
    (first,) = _ranking_records(campaign)
    assert first.submission_id == first_ticket and first.dividers == (2, 8)

    # U takes it back: the batch returns as answered; move the second divider and answer again
    page.keyboard.press("u")
    expect(page.locator("#progress-text")).to_have_text("0 of 3 done")
    assert ranking_strip(page)[2] == "D" and ranking_strip(page)[-1] == "D"
    page.locator("#strip > li").last.focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#progress-text")).to_have_text("1 of 3 done")
    earlier, later = _ranking_records(campaign)
    assert later.batch_id == earlier.batch_id and later.submitted_at > earlier.submitted_at
    assert later.order == earlier.order and later.dividers == (2, 7)

    # the review list shows both, the first marked as replaced
    page.keyboard.press("h")
    expect(page.locator("#review-list > li")).to_have_count(2)
    expect(page.locator("#review-list > li").nth(1)).to_contain_text("replaced by a later answer")
    expect(page.locator("#review-list > li").first.locator("img")).to_have_count(8)
    _screenshot(page, "ranking-review.png")
    page.keyboard.press("Escape")
    expect(page.locator("#review")).to_be_hidden()

    # the rest of the queue by keyboard, then the end-of-queue page
    for done in (2, 3):
        page.locator("#strip li.card").first.focus()
        page.keyboard.press("Control+Enter")
        expect(page.locator("#progress-text")).to_have_text(f"{done} of 3 done")
    expect(page.locator("#finished-title")).to_have_text("All 3 batches are done. Thank you!")
    expect(page.locator("#finished-title")).to_be_focused()
    expect(page.locator("#strip")).to_be_hidden()
    _screenshot(page, "ranking-finished.png")
    assert len(_ranking_records(campaign)) == 4
    page.reload()  # the server says what undo can still take back: the last batch, even after a reload
    expect(page.locator("#finished-title")).to_be_visible()
    expect(page.locator("#undo")).to_be_enabled()
    page.keyboard.press("u")
    expect(page.locator("#progress-text")).to_have_text("2 of 3 done")
    expect(page.locator("#strip li.card")).to_have_count(8)
    page.close()
