"""Declared schemas of the tables that are written row by row: by annotation ingestion (DuckDB tables),
by ingestion and the archive-wide filter (Parquet partition files, `partitioned_tables.py`, whose
types these DDLs declare): one place to read such a table's columns and types. Tables written whole
from a DataFrame (tasks, labels, split, agreement, reference labels) take the frame's schema;
docs/architecture.md lists every table.

Public API:
- `SCANS_COLUMNS`, `SLICES_COLUMNS`, `REJECTED_FILES_COLUMNS`, `INGESTION_DDL`: the types of the ingested
  tables' Parquet partition files (`partitioned_tables.py`), which the DuckDB tables copy
- `RAW_SINGLE_COLUMNS`, `RAW_RANKING_COLUMNS`; `ensure_annotation_tables(con)` (`raw_annotations_*`,
  `rejected_annotations`, `annotation_files`)
- `SLICE_DECISIONS_COLUMNS`, `DECISIONS_DDL`: the archive-wide filter's decisions (Parquet per bucket, like
  the ingestion tables)
"""

from __future__ import annotations

import duckdb

SCANS_COLUMNS = ("scan_id", "n_slices", "n_files", "rows", "cols", "manufacturer_model", "ingested_at", "study_key",
                 "patient_group")
SLICES_COLUMNS = (
    "slice_id", "scan_id", "slice_from_base", "n_slices", "position_mm", "spacing_mm", "rows", "cols",
    "pixel_spacing_mm", "slice_thickness_mm", "trigger_time_ms", "n_phases", "phase_rule", "png_path",
    "array_path", "array_index", "ingested_at", "heart_crop",
)
REJECTED_FILES_COLUMNS = ("source_root_hash", "path", "reason", "rejected_at")

INGESTION_DDL = """
CREATE TABLE IF NOT EXISTS scans (
    scan_id VARCHAR PRIMARY KEY,
    n_slices INTEGER NOT NULL,
    n_files INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    cols INTEGER NOT NULL,
    manufacturer_model VARCHAR,
    ingested_at TIMESTAMP NOT NULL,
    study_key VARCHAR,
    patient_group VARCHAR
);
CREATE TABLE IF NOT EXISTS slices (
    slice_id VARCHAR PRIMARY KEY,
    scan_id VARCHAR NOT NULL,
    slice_from_base INTEGER NOT NULL,
    n_slices INTEGER NOT NULL,
    position_mm DOUBLE NOT NULL,
    spacing_mm DOUBLE NOT NULL,
    rows INTEGER NOT NULL,
    cols INTEGER NOT NULL,
    pixel_spacing_mm DOUBLE NOT NULL,
    slice_thickness_mm DOUBLE,
    trigger_time_ms DOUBLE,
    n_phases INTEGER NOT NULL,
    phase_rule VARCHAR NOT NULL,
    png_path VARCHAR NOT NULL,
    array_path VARCHAR NOT NULL,
    array_index INTEGER NOT NULL,
    ingested_at TIMESTAMP NOT NULL,
    heart_crop INTEGER[]
);
CREATE TABLE IF NOT EXISTS rejected_files (
    source_root_hash VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    rejected_at TIMESTAMP NOT NULL,
    PRIMARY KEY (source_root_hash, path, reason)
);
"""


RAW_SINGLE_COLUMNS = ["submission_id", "annotator_id", "task_id", "slice_id", "label", "artefact",
                  "started_at", "submitted_at", "source_file", "line"]
RAW_RANKING_COLUMNS = ["submission_id", "annotator_id", "batch_id", "order", "divider_a", "divider_b",
                   "artefact_ids", "started_at", "submitted_at", "source_file", "line"]

ANNOTATION_DDL = (
    """CREATE TABLE IF NOT EXISTS raw_annotations_single (
        submission_id VARCHAR PRIMARY KEY, annotator_id VARCHAR NOT NULL, task_id VARCHAR NOT NULL,
        slice_id VARCHAR NOT NULL, label VARCHAR, artefact BOOLEAN NOT NULL,
        started_at TIMESTAMPTZ NOT NULL, submitted_at TIMESTAMPTZ NOT NULL,
        source_file VARCHAR NOT NULL, line INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS raw_annotations_ranking (
        submission_id VARCHAR PRIMARY KEY, annotator_id VARCHAR NOT NULL, batch_id VARCHAR NOT NULL,
        "order" VARCHAR[] NOT NULL, divider_a INTEGER NOT NULL, divider_b INTEGER NOT NULL,
        artefact_ids VARCHAR[] NOT NULL, started_at TIMESTAMPTZ NOT NULL,
        submitted_at TIMESTAMPTZ NOT NULL, source_file VARCHAR NOT NULL, line INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rejected_annotations (
        source_file VARCHAR NOT NULL, line INTEGER NOT NULL, reason VARCHAR NOT NULL,
        rejected_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS annotation_files (
        source_file VARCHAR PRIMARY KEY, size BIGINT NOT NULL, sha256 VARCHAR NOT NULL,
        n_valid INTEGER NOT NULL, n_rejected INTEGER NOT NULL, ingested_at TIMESTAMPTZ NOT NULL)""",
)


def ensure_annotation_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the annotation tables if they do not exist (idempotent)."""
    for statement in ANNOTATION_DDL:
        con.execute(statement)


SLICE_DECISIONS_COLUMNS = ("slice_id", "scan_id", "slice_from_base", "registered_model", "model_version",
                           "model_class", "filter_class", "keep", "ood", "ood_score", "p_too_basal", "p_lv",
                           "p_too_apical", "reason", "decided_at")

DECISIONS_DDL = """
CREATE TABLE IF NOT EXISTS slice_decisions (
    slice_id VARCHAR PRIMARY KEY,
    scan_id VARCHAR NOT NULL,
    slice_from_base INTEGER NOT NULL,
    registered_model VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    model_class VARCHAR NOT NULL,
    filter_class VARCHAR NOT NULL,
    keep BOOLEAN NOT NULL,
    ood BOOLEAN NOT NULL,
    ood_score DOUBLE,
    p_too_basal DOUBLE NOT NULL,
    p_lv DOUBLE NOT NULL,
    p_too_apical DOUBLE NOT NULL,
    reason VARCHAR NOT NULL,
    decided_at TIMESTAMP NOT NULL
)
"""
