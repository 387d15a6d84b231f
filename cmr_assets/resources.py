"""Dagster resources, in one place: runtime paths, DuckDB and MLflow."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from cmr_assets.settings import DataPaths, data_dir


class DataPathsResource(dg.ConfigurableResource):
    """The runtime data folder (`CMR_DATA_DIR`, default `data/`)."""

    root: str = ""

    def paths(self) -> DataPaths:
        return DataPaths(Path(self.root).resolve() if self.root else data_dir()).ensure()


def duckdb_resource(paths: DataPaths | None = None) -> DuckDBResource:
    """A DuckDB resource on `$CMR_DATA_DIR/cmr.duckdb`; connections are opened per use and kept short."""
    paths = (paths or DataPaths.default()).ensure()
    return DuckDBResource(database=str(paths.duckdb))
