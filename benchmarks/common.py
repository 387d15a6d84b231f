"""What every benchmark shares: the machine it ran on, peak memory, and ratio bookkeeping.

Why: a figure without its machine and load is meaningless on a shared 2-core box, and every
benchmark states "ours vs the plain way" the same way so the table and the JSON read alike.

Public API:
- `peak_rss_mb() -> float`: this process's peak resident memory so far (VmHWM, else ru_maxrss).
- `comparison(name, unit, ours, baseline, higher_is_better, aim, aim_ratio, detail) -> dict`: one
  row "ours vs baseline" with `ratio = ours / baseline` and whether the aim is met.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: VmHWM from /proc/self/status, because ru_maxrss is inherited across fork + exec (a child
    started by a big parent would report the parent's peak). Elsewhere: ru_maxrss.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def comparison(name: str, unit: str, ours: float, baseline: float, higher_is_better: bool, aim: str,
               aim_ratio: float, detail: str = "") -> dict[str, Any]:
    """One "ours vs plain baseline" row; `aim_ratio` bounds `ours / baseline` (below for rates, above for costs)."""
    ratio = ours / baseline if baseline > 0 else float("inf")
    met = ratio >= aim_ratio if higher_is_better else ratio <= aim_ratio
    return {
        "name": name,
        "unit": unit,
        "ours": ours,
        "baseline": baseline,
        "ratio": ratio,
        "higher_is_better": higher_is_better,
        "aim": aim,
        "aim_met": bool(met),
        "detail": detail,
    }
