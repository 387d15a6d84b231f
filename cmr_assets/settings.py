"""Where runtime data lives. `CMR_DATA_DIR` moves all of it; defaults run on a laptop."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Expert time per annotator and strategy in a campaign (the paper: 5 hours of labelling per strategy).
DEFAULT_HOURS_PER_ANNOTATOR = 5.0
MLFLOW_EXPERIMENT = "cmr-slice-classification"


def data_dir() -> Path:
    """The runtime data folder: `$CMR_DATA_DIR`, else `data/` in the project."""
    return Path(os.environ.get("CMR_DATA_DIR") or PROJECT_ROOT / "data").resolve()


def mlflow_tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI`, else the SQLite store under `mlflow/` in the project."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{PROJECT_ROOT / 'mlflow' / 'mlflow.db'}"


def retrain_quiet_minutes() -> float:
    """How long the annotation inbox must be quiet before retraining (`CMR_RETRAIN_QUIET_MINUTES`, default 10)."""
    raw = os.environ.get("CMR_RETRAIN_QUIET_MINUTES", "").strip()
    try:
        value = float(raw) if raw else 10.0
    except ValueError as error:
        raise ValueError(f"CMR_RETRAIN_QUIET_MINUTES={raw!r} is not a number of minutes") from error
    if not value >= 0:
        raise ValueError(f"CMR_RETRAIN_QUIET_MINUTES={raw!r} must be >= 0")
    return value


def mlflow_artifact_root() -> str:
    """Artifact location for new experiments (`$MLFLOW_ARTIFACT_ROOT` overrides)."""
    return os.environ.get("MLFLOW_ARTIFACT_ROOT") or (PROJECT_ROOT / "mlflow" / "artifacts").as_uri()


@dataclass(frozen=True)
class DataPaths:
    """Every runtime path, derived from one root so tests can point it at a temp dir."""

    root: Path

    @classmethod
    def default(cls) -> DataPaths:
        return cls(data_dir())

    @property
    def scans(self) -> Path:
        return self.root / "scans"

    @property
    def synthetic_scans(self) -> Path:
        return self.scans / "synthetic"

    @property
    def reference(self) -> Path:
        return self.root / "reference"

    @property
    def synthetic_truth(self) -> Path:
        return self.reference / "synthetic_truth.csv"

    @property
    def duckdb(self) -> Path:
        return self.root / "cmr.duckdb"

    @property
    def slice_png(self) -> Path:
        return self.root / "slices" / "png"

    @property
    def slice_arrays(self) -> Path:
        return self.root / "slices" / "arrays"

    @property
    def table_files(self) -> Path:
        """Parquet files of the tables partition runs write, one per group and bucket (`partitioned_tables.py`)."""
        return self.root / "tables"

    @property
    def annotations_incoming(self) -> Path:
        return self.root / "annotations" / "incoming"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def secret(self) -> Path:
        return self.root / "secret"

    def ensure(self) -> DataPaths:
        for path in (self.scans, self.reference, self.slice_png, self.slice_arrays,
                     self.annotations_incoming, self.reports, self.secret):
            path.mkdir(parents=True, exist_ok=True)
        return self
