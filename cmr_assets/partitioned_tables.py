"""The tables that partition runs write (`scans`, `slices`, `rejected_files` by ingestion,
`slice_decisions` by the archive-wide filter) as Parquet files, one per group and bucket, read by
DuckDB as tables of the same names, rebuilt from the files when they change.

Why: partition runs work in separate processes or machines at once. Each writes only its own
files, atomically (temporary file + rename), so no run waits on DuckDB's single writer, a reader
sees a partition's old rows or its new ones, and re-running a partition replaces exactly its rows.
The Parquet files are the truth; the DuckDB file (the single-file default everything downstream
and every person reads) holds the same rows as ordinary tables: `sync_partitioned_tables` rebuilds a
table when its files changed since the last sync, in one short transaction, and the project's
DuckDB resource syncs on every connection. Once, for a database from before partitions, it moves
the rows of the ingestion tables into a `legacy` file (so they stay), and renames `slice_decisions`
(derived: the next filter run decides again) to `slice_decisions_before_partitions`; nothing stored
is lost.

Layout under `DataPaths.table_files` (`<data>/tables/`):
- `<table>/<group>/<bucket>.parquet`: one partition's rows; the group is the keyed hash of the
  source folder for ingestion (`deid.source_root_hash`), `archive_filter` for the decisions;
- `<table>/_schema/empty.parquet`: no rows, the declared types (`tables.py`), so a table has its
  columns before any partition exists;
- `<table>/legacy/rows.parquet`: rows moved out of a pre-partition ingestion table.

Public API:
- `PARTITIONED_TABLES`; `PartitionStore(paths)`: `file`, `bucket_files`, `legacy_file`, `read`,
  `read_partition`, `write_partition`
- `PartitionWriter(store, group)`: `add`, `flush`
- `sync_partitioned_tables(con, paths) -> list[str]`
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cmr_assets.duckdb_io import transaction
from cmr_assets.settings import DataPaths
from cmr_assets.tables import (
    DECISIONS_DDL,
    INGESTION_DDL,
    REJECTED_FILES_COLUMNS,
    SCANS_COLUMNS,
    SLICE_DECISIONS_COLUMNS,
    SLICES_COLUMNS,
)

PARTITIONED_TABLES: dict[str, tuple[str, ...]] = {
    "scans": SCANS_COLUMNS, "slices": SLICES_COLUMNS, "rejected_files": REJECTED_FILES_COLUMNS,
    "slice_decisions": SLICE_DECISIONS_COLUMNS}
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "scans": ("scan_id",), "slices": ("slice_id",), "rejected_files": ("source_root_hash", "path", "reason"),
    "slice_decisions": ("slice_id",)}
DERIVED_TABLES = ("slice_decisions",)  # recomputed, so a pre-partition table is set aside, not carried over
SCHEMA_FOLDER, LEGACY_FOLDER = "_schema", "legacy"


@functools.cache
def _in_memory_database() -> duckdb.DuckDBPyConnection:
    """This process's in-memory DuckDB for reading and writing partition files (opening one costs
    ~25 ms, a cursor on it ~0.3 ms); never the project's file."""
    return duckdb.connect()


def _cursor() -> contextlib.closing[duckdb.DuckDBPyConnection]:
    """A cursor of its own (safe beside other threads' cursors) on the in-memory database."""
    return contextlib.closing(_in_memory_database().cursor())


@functools.cache
def _arrow_schema(table: str) -> pa.Schema:
    """The table's Arrow schema from its declared DuckDB types (`tables.py`), built once per process."""
    with contextlib.closing(duckdb.connect()) as con:
        con.execute(INGESTION_DDL)
        con.execute(DECISIONS_DDL)
        return con.sql(f"SELECT * FROM {table}").to_arrow_table().schema


def _as_declared(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """`frame` as an Arrow table of `schema` (time zones dropped after conversion to UTC: the columns
    are TIMESTAMP, UTC by convention)."""
    columns = {}
    for field in schema:
        values = frame[field.name]
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        columns[field.name] = values
    return pa.Table.from_pandas(pd.DataFrame(columns), schema=schema, preserve_index=False)


def _quoted(path: Path | str) -> str:
    """A path as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _parquet_list(files: Sequence[Path]) -> str:
    return "[" + ", ".join(_quoted(f) for f in files) + "]"


@dataclass(frozen=True)
class PartitionStore:
    """The Parquet files of the partitioned tables under one data root."""

    paths: DataPaths

    def folder(self, table: str) -> Path:
        return self.paths.table_files / table

    def file(self, table: str, group: str, bucket: str) -> Path:
        return self.folder(table) / group / f"{bucket}.parquet"

    def bucket_files(self, table: str, bucket: str) -> list[Path]:
        """The bucket's files of every group (e.g. every source folder)."""
        return sorted(self.folder(table).glob(f"*/{bucket}.parquet"))

    def legacy_file(self, table: str) -> Path:
        return self.file(table, LEGACY_FOLDER, "rows")

    def files(self, table: str) -> list[Path]:
        """Every file of the table (its schema file, written on first use, included), sorted."""
        if not self.file(table, SCHEMA_FOLDER, "empty").exists():
            self.write_partition(table, SCHEMA_FOLDER, "empty", pd.DataFrame(columns=list(PARTITIONED_TABLES[table])))
        return sorted(self.folder(table).glob("*/*.parquet"))

    def read(self, table: str, columns: str = "*", files: Sequence[Path] | None = None) -> pd.DataFrame:
        """Rows of the table from `files` (default: every partition), without opening the DuckDB file."""
        chosen = self.files(table) if files is None else [f for f in files if f.exists()]
        if not chosen:
            return pd.DataFrame(columns=list(PARTITIONED_TABLES[table]))
        with _cursor() as con:
            return con.execute(f"SELECT {columns} FROM read_parquet({_parquet_list(chosen)}, union_by_name = true, "
                               "hive_partitioning = false)").df()

    def read_partition(self, table: str, group: str, bucket: str) -> pd.DataFrame:
        return self.read(table, files=[self.file(table, group, bucket)])

    def write_partition(self, table: str, group: str, bucket: str, frame: pd.DataFrame) -> Path:
        """Replace the partition's file with `frame` (declared types; duplicate keys keep the first row),
        atomically: a `.tmp` beside it, renamed over it."""
        rows = frame.reindex(columns=list(PARTITIONED_TABLES[table])).drop_duplicates(list(KEY_COLUMNS[table]),
                                                                                       keep="first")
        target = self.file(table, group, bucket)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        pq.write_table(_as_declared(rows, _arrow_schema(table)), temporary)
        os.replace(temporary, target)
        return target


class PartitionWriter:
    """The rows one ingestion run adds to its partitions (`group`, each bucket), written on top of what
    the partition files hold: `flush` rewrites each partition that gained rows, so an interrupted run
    keeps what it flushed. Memory holds only the rows not flushed yet."""

    def __init__(self, store: PartitionStore, group: str) -> None:
        self.store, self.group = store, group
        self.pending: dict[tuple[str, str], list[dict]] = {}
        self.new_rejections = 0

    def add(self, table: str, bucket: str, rows: Sequence[dict]) -> None:
        self.pending.setdefault((table, bucket), []).extend(rows)

    def flush(self) -> None:
        """Each partition with pending rows: its file's rows, then the new ones (keys already there are kept)."""
        for (table, bucket), rows in sorted(self.pending.items()):
            before = self.store.read_partition(table, self.group, bucket)
            incoming = pd.DataFrame.from_records(rows, columns=list(PARTITIONED_TABLES[table]))
            if table == "rejected_files":
                keys = list(KEY_COLUMNS[table])
                known = set(map(tuple, before[keys].itertuples(index=False))) if len(before) else set()
                fresh = {key for key in map(tuple, incoming[keys].itertuples(index=False)) if key not in known}
                self.new_rejections += len(fresh)
            frames = [frame for frame in (before, incoming) if len(frame)]
            if not frames:
                continue
            self.store.write_partition(table, self.group, bucket, pd.concat(frames, ignore_index=True))
        self.pending.clear()


def _file_stamps(files: Sequence[Path]) -> set[tuple[str, int, int]]:
    stamps = set()
    for file in files:
        info = file.stat()
        stamps.add((file.as_posix(), info.st_size, info.st_mtime_ns))
    return stamps


def _set_aside_pre_partition_table(con: duckdb.DuckDBPyConnection, store: PartitionStore, table: str) -> None:
    """A table from before partitions: ingestion rows move to the `legacy` file (they stay in the
    table, now rebuilt from the files); derived rows are renamed aside (the next run decides again)."""
    if table in DERIVED_TABLES:
        con.execute(f"ALTER TABLE {table} RENAME TO {table}_before_partitions")
        return
    if con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]:
        legacy = store.legacy_file(table)
        legacy.parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY {table} TO {_quoted(legacy)} (FORMAT parquet)")
    con.execute(f"DROP TABLE {table}")


def sync_partitioned_tables(con: duckdb.DuckDBPyConnection, paths: DataPaths) -> list[str]:
    """Make each partitioned table in the DuckDB file hold exactly the rows of its Parquet files under
    `paths`, rebuilding only the tables whose files changed since the last sync (`partition_files`
    records the files, sizes and times each table was built from); returns the tables rebuilt.
    A writer's short transaction per table; readers see the old rows or the new ones."""
    store = PartitionStore(paths)
    con.execute("CREATE TABLE IF NOT EXISTS partition_files (table_name VARCHAR NOT NULL, path VARCHAR NOT NULL, "
                "size BIGINT NOT NULL, mtime_ns BIGINT NOT NULL)")
    rebuilt = []
    for table in PARTITIONED_TABLES:
        files = store.files(table)
        stamps = _file_stamps(files)
        built_from = set(con.execute("SELECT path, size, mtime_ns FROM partition_files WHERE table_name = ?",
                                     [table]).fetchall())
        found = con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = ?", [table]).fetchall()
        kind = found[0][0] if found else None
        if kind == "BASE TABLE" and stamps == built_from:
            continue
        with transaction(con):
            if kind == "BASE TABLE" and not built_from:
                _set_aside_pre_partition_table(con, store, table)
                files = store.files(table)  # with the legacy file just written
                stamps = _file_stamps(files)
            columns = ", ".join(f'"{c}"' for c in PARTITIONED_TABLES[table])
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT {columns} FROM read_parquet("
                        f"{_parquet_list(files)}, union_by_name = true, hive_partitioning = false)")
            con.execute("DELETE FROM partition_files WHERE table_name = ?", [table])
            con.executemany("INSERT INTO partition_files VALUES (?, ?, ?, ?)",
                            [(table, *stamp) for stamp in sorted(stamps)])
        rebuilt.append(table)
    return rebuilt
