"""Retake the README screenshots of the labelling app on real pipeline data.

Why: the screenshots in docs/screenshots/ should show what an annotator sees, i.e. de-identified
slices of the synthetic CMR cohort as ingested by the pipeline, not test fixtures. Everything runs in
a throw-away folder (its own CMR_DATA_DIR, DAGSTER_HOME and MLflow store), so the project's data/ and
mlflow/ are never touched:

1. copy (hard links) the first N scans of an existing cohort and `cmr-assets ingest` them (the
   heart crop is found there), with the cohort's truth table when it has one;
2. design both campaigns for one person (`labelling_tasks_single`, `labelling_tasks_ranking` with
   `annotators: [dr_lee]`) and map the truth onto the slices (`reference_labels`, the reference
   strip's source), as a recorded Dagster run;
3. `cmr-assets annotators add dr_lee --password-stdin`, start `cmr-assets serve-labelling`, log in
   with Playwright in headless Debian chromium (`scripts/ensure_chromium.sh` installs it), save the
   first-visit reference strip (`reference.png`), rank a batch partially (one image dragged,
   dividers placed), answer two single images, and save `ranking.png` (1366x768: the 8 cards on one
   row of a laptop screen) and `single.png` (1280x860); stop the server.

Usage (in the repository root; PYTHONPATH=.: the page actions come from `cmr_assets_tests`, which is
not installed):
  PYTHONPATH=. .venv/bin/python scripts/take_screenshots.py [--cohort data/scans/synthetic]
       [--truth data/reference/synthetic_truth.csv] [--n-scans 6] [--out docs/screenshots]
       [--work /tmp/some-empty-dir] [--port 8799]
The work folder is deleted at the end unless --work was given.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmr_assets_tests.app.page_actions import drag_before, ranking_strip

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "cmr-assets"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ANNOTATOR = "dr_lee"
RANKING_VIEWPORT = {"width": 1366, "height": 768}
SINGLE_VIEWPORT = {"width": 1280, "height": 860}
TASK_ASSETS = ("labelling_tasks_single", "labelling_tasks_ranking")
REFERENCE_ASSET = "reference_labels"

# Runs in a child process so that Dagster and the settings read the work folder's environment.
DESIGN_CAMPAIGNS = """
import json, sys
import dagster as dg
from cmr_assets.definitions import PIPELINE_JOB, build_definitions
assets, annotator, extra = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
job = build_definitions().resolve_job_def(PIPELINE_JOB).get_subset(
    asset_selection={dg.AssetKey(name) for name in [*assets, *extra]})
config = {"ops": {name: {"config": {"annotators": [annotator]}} for name in assets}}
result = job.execute_in_process(run_config=config, instance=dg.DagsterInstance.get(), raise_on_error=False)
sys.exit(0 if result.success else 1)
"""


def work_environment(work: Path) -> dict[str, str]:
    """The environment that points the CLI, Dagster and MLflow at the work folder only."""
    (work / "dagster_home").mkdir(parents=True, exist_ok=True)
    return {**os.environ, "CMR_DATA_DIR": str(work / "data"), "DAGSTER_HOME": str(work / "dagster_home"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "MLFLOW_ARTIFACT_ROOT": (work / "mlflow_artifacts").as_uri()}


def run(command: list[str], env: dict[str, str], stdin: str | None = None) -> None:
    """Run one step; stop with its output when it fails."""
    print("$", " ".join(command[:3]), "...", flush=True)
    result = subprocess.run(command, env=env, input=stdin, text=True, capture_output=True, check=False,
                            cwd=PROJECT_ROOT)
    if result.returncode != 0:
        sys.exit(f"step failed ({result.returncode}): {' '.join(command)}\n{result.stdout[-2000:]}"
                 f"\n{result.stderr[-4000:]}")


def prepare_data(cohort: Path, truth: Path, n_scans: int, work: Path, env: dict[str, str], password: str) -> None:
    """Ingest the first `n_scans` scans, design both campaigns for ANNOTATOR, map the truth (when
    there is one) onto the slices, register ANNOTATOR."""
    scans = sorted(p for p in cohort.iterdir() if p.is_dir())[:n_scans]
    if len(scans) < n_scans:
        sys.exit(f"{cohort}: {len(scans)} scan folders, {n_scans} wanted")
    source = work / "source"
    source.mkdir()
    for scan in scans:
        shutil.copytree(scan, source / scan.name, copy_function=os.link)
    run([str(CLI), "ingest", str(source)], env)
    extra = []
    if truth.is_file():
        (work / "data" / "reference").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(truth, work / "data" / "reference" / "synthetic_truth.csv")
        extra = [REFERENCE_ASSET]
    run([sys.executable, "-c", DESIGN_CAMPAIGNS, json.dumps(TASK_ASSETS), ANNOTATOR, json.dumps(extra)], env)
    run([str(CLI), "annotators", "add", ANNOTATOR, "--password-stdin"], env, stdin=password + "\n")


@contextmanager
def labelling_server(env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """`cmr-assets serve-labelling` in the background until the block ends; yields its base URL."""
    base_url = f"http://127.0.0.1:{port}"
    with log.open("w") as log_file:
        server = subprocess.Popen([str(CLI), "serve-labelling", "--port", str(port)], env=env,
                                  stdout=log_file, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    try:
        for _ in range(200):
            if server.poll() is not None:
                sys.exit(f"serve-labelling exited ({server.returncode}):\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{base_url}/login", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit(f"serve-labelling did not answer on {base_url}")
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=20)


def wait_for_canvases(page, selector: str, count: int, timeout_s: float = 20.0) -> None:
    """Poll until `count` canvases matching `selector` have drawn their image (wait_for_function would
    need eval, which the app's CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(page.eval_on_selector_all(selector, "cs => cs.map(c => Boolean(c.dataset.src))")) >= count:
            return
        time.sleep(0.1)
    sys.exit(f"{count} images {selector} not drawn after {timeout_s:.0f} s")


def take_screenshots(base_url: str, password: str, out: Path) -> None:
    """Log in as ANNOTATOR, put both pages in use and save reference.png, ranking.png and single.png."""
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=RANKING_VIEWPORT)
        page = context.new_page()
        page.goto(f"{base_url}/login")
        page.fill("input[name=name]", ANNOTATOR)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base_url}/")

        # ranking: the strip starts as divider, 8 images, divider; drag one image, place both dividers
        page.goto(f"{base_url}/label/ranking")
        wait_for_canvases(page, "#strip canvas", 8)
        expect(page.locator("#reference")).to_be_visible()  # the first visit opens the reference strip
        wait_for_canvases(page, "#reference-strip canvas", 1)
        page.screenshot(path=str(out / "reference.png"))
        page.keyboard.press("g")
        expect(page.locator("#reference")).to_be_hidden()
        before = ranking_strip(page)
        drag_before(page, "#strip > li:nth-child(7)", "#strip > li:nth-child(2)")
        if ranking_strip(page) == before:
            sys.exit("dragging an image did not reorder the ranking strip")
        page.locator("#strip > li:nth-child(1)").focus()
        for _ in range(2):
            page.keyboard.press("ArrowRight")
        page.locator("#strip > li:nth-child(10)").focus()
        for _ in range(2):
            page.keyboard.press("ArrowLeft")
        page.mouse.move(0, 0)
        page.screenshot(path=str(out / "ranking.png"))

        # single: answer two images so progress shows, then the third one as presented
        page.set_viewport_size(SINGLE_VIEWPORT)
        page.goto(f"{base_url}/label/single")
        page.wait_for_selector("#image[data-src*='/img/']")
        for done, key in enumerate(("2", "1"), start=1):
            page.keyboard.press(key)
            expect(page.locator("#progress-text")).to_contain_text(f"{done} of ")
        page.screenshot(path=str(out / "single.png"))
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=PROJECT_ROOT / "data" / "scans" / "synthetic",
                        help="folder of scan folders to take scans from (default data/scans/synthetic)")
    parser.add_argument("--truth", type=Path, default=PROJECT_ROOT / "data" / "reference" / "synthetic_truth.csv",
                        help="the cohort's truth table, for the reference strip (default data/reference/...)")
    parser.add_argument("--n-scans", type=int, default=6, help="scans to ingest (default 6)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "screenshots",
                        help="where the screenshots go (default docs/screenshots)")
    parser.add_argument("--work", type=Path, help="empty work folder to keep (default: a temporary one)")
    parser.add_argument("--port", type=int, default=8799, help="port of the labelling app (default 8799)")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="cmr-screenshots-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        sys.exit(f"{work} is not empty")
    password = secrets.token_urlsafe(16)
    env = work_environment(work)
    try:
        prepare_data(args.cohort, args.truth, args.n_scans, work, env, password)
        with labelling_server(env, args.port, work / "server.log") as base_url:
            take_screenshots(base_url, password, args.out)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote reference.png, ranking.png and single.png to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
