"""The whole loop with the real Dagster daemon (slow: about 10-15 minutes on 2 cores).

`scripts/live_campaign_probe.py` runs a tiny pipeline, starts `dagster-daemon` and the labelling app,
lets three annotator clients answer both strategies for two minutes, waits for the automation to
settle and reports what happened; this test holds the figures to what issue 13 asks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmr_assets.settings import PROJECT_ROOT


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_live_campaign_with_the_daemon(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "live_campaign_probe.py"), "--root",
                    str(tmp_path / "campaign"), "--n-scans", "6", "--new-scans", "3", "--annotators", "3",
                    "--minutes", "2", "--answer-interval-s", "3", "--quiet-minutes", "1", "--epochs", "1",
                    "--settle-timeout-minutes", "12", "--out", str(out)],
                   check=True, env=env, cwd=PROJECT_ROOT, timeout=2300, stdout=subprocess.DEVNULL)
    figures = json.loads(out.read_text())
    assert figures["answers_acknowledged"] > 0 and figures["answer_errors"] == 0
    assert figures["acknowledged_not_stored"] == 0  # labels' input holds every acknowledged answer
    assert figures["max_queued"]["relabel"] <= 1 and figures["max_queued"].get("retrain_models", 0) <= 1
    assert figures["max_in_progress"].get("retrain_models", 0) <= 1  # queued + running, together
    assert all(n == 0 for job in figures["left_in_progress"].values() for n in job.values())  # no leftovers
    retrains = sum(figures["runs"]["retrain_models"].values())
    assert retrains == 1 and figures["runs"]["retrain_models"].get("SUCCESS") == 1  # one quiet period, one run
    for model in figures["models"].values():
        assert model["consecutive_same_label_hash"] == 0 and model["promoted_while_worse"] == []
