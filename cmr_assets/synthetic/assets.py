"""The synthetic cohort as an asset: seeded short-axis cine DICOM plus its truth table (see cohort.py).

The asset keeps the `ingest` group (asset and group names are used from outside); `raw_scans`
depends on it by name, so ingestion never imports this package.
"""

import json
import time
from pathlib import Path

import dagster as dg

from cmr_assets.resources import DataPathsResource
from cmr_assets.settings import DataPaths
from cmr_assets.synthetic.cohort import generate_cohort

GROUP = "ingest"


class SyntheticCohortConfig(dg.Config):
    """The embedded default cohort: seeded synthetic short-axis cine DICOM (see synthetic/cohort.py)."""

    enabled: bool = True
    n_scans: int = 300
    seed: int = 0
    n_phases: int = 3
    workers: int = 2


def _cohort_manifest(paths: DataPaths) -> Path:
    return paths.reference / "synthetic_cohort.json"


@dg.asset(group_name=GROUP, kinds={"dicom"})
def synthetic_cohort(context: dg.AssetExecutionContext, config: SyntheticCohortConfig,
                     data_paths: DataPathsResource) -> dg.MaterializeResult:
    """Writes the seeded synthetic cohort as real DICOM plus its truth table (kept apart from the images).

    Skipped when the same cohort (size, seed, phases) is already on disk.
    """
    paths = data_paths.paths()
    wanted = {"n_scans": config.n_scans, "seed": config.seed, "n_phases": config.n_phases}
    manifest = _cohort_manifest(paths)
    if not config.enabled:
        return dg.MaterializeResult(metadata={"generated": False, "reason": "disabled"})
    if manifest.exists() and paths.synthetic_truth.exists():
        previous = json.loads(manifest.read_text())
        if {k: previous.get(k) for k in wanted} == wanted:
            context.log.info(f"synthetic cohort {wanted} already on disk; nothing to do")
            return dg.MaterializeResult(metadata={"generated": False, **previous})
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            rate = done / max(time.perf_counter() - started, 1e-9)
            context.log.info(f"synthetic cohort: {done}/{total} scans written ({rate:.1f} scans/s)")

    summary = generate_cohort(paths.synthetic_scans, paths.synthetic_truth, config.n_scans, config.seed,
                              config.n_phases, config.workers, progress)
    record = {**wanted, "n_files": summary.n_files, "n_slices": summary.n_slices,
              "megabytes": round(summary.total_bytes / 1e6, 1), "seconds": round(summary.seconds, 1)}
    manifest.write_text(json.dumps(record, indent=2))
    return dg.MaterializeResult(metadata={"generated": True, **record,
                                          "folder": dg.MetadataValue.path(str(paths.synthetic_scans))})


synthetic_assets = [synthetic_cohort]
