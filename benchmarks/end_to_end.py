"""End to end: `make demo` wall time and peak memory per asset, from the demo's own profile.

Why read, not rerun: the demo is minutes of work that `cmr-assets demo` already measures while it
runs (`$CMR_DATA_DIR/reports/demo_profile.json`, written by the lead's demo command: wall_seconds,
peak_rss_mb and one step per asset). The benchmark reports it next to the others, with its age.

Public API:
- `DEMO_PROFILE_NAME`
- `read_demo_profile(reports_dir) -> dict`: the profile plus `status` "measured", or `status`
  "missing" / "invalid" with a message saying what to do.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEMO_PROFILE_NAME = "demo_profile.json"


def read_demo_profile(reports_dir: Path) -> dict[str, Any]:
    """The demo's profile if `make demo` has written one, else why not."""
    path = reports_dir / DEMO_PROFILE_NAME
    if not path.exists():
        return {"status": "missing", "message": f"run make demo first ({path} not found)"}
    try:
        profile = json.loads(path.read_text())
        steps = [{"asset": str(step["asset"]), "seconds": float(step["seconds"]),
                  "peak_rss_mb": float(step["peak_rss_mb"])} for step in profile["steps"]]
        wall, peak = float(profile["wall_seconds"]), float(profile["peak_rss_mb"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return {"status": "invalid", "message": f"{path}: {type(exc).__name__}: {exc}; rerun make demo"}
    measured_at = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return {"status": "measured", "path": str(path), "measured_at": measured_at, "wall_seconds": wall,
            "peak_rss_mb": peak, "steps": sorted(steps, key=lambda step: -step["seconds"])}
