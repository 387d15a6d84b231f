"""The DuckDB helpers every writer and reader shares: short read-only connections, one transaction
helper, DataFrames in and out of tables. No Dagster here: pure modules that store rows use it too.

Public API:
- `read_only(database) -> context manager of a connection` (closed on exit)
- `transaction(con) -> context manager`: BEGIN, then COMMIT, or ROLLBACK on any error
- `table_exists(con, table)`, `read_table(con, table, columns="*")`, `replace_table(con, table, frame)`,
  `append_rows(con, table, frame)`
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import duckdb
import pandas as pd


@contextmanager
def read_only(database: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short read-only connection (raises `duckdb.Error` while another process holds the write lock)."""
    with closing(duckdb.connect(str(database), read_only=True)) as con:
        yield con


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Everything in the block commits together or not at all."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchall()[0][0])


def read_table(con: duckdb.DuckDBPyConnection, table: str, columns: str = "*") -> pd.DataFrame:
    """The table as a DataFrame, or an empty one when it does not exist yet."""
    if not table_exists(con, table):
        return pd.DataFrame()
    return con.execute(f"SELECT {columns} FROM {table}").df()


def replace_table(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Atomically swap the table's content for `frame` (readers see the old or the new table, never half)."""
    con.register("replacement_frame", frame)
    try:
        with transaction(con):
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM replacement_frame")
    finally:
        con.unregister("replacement_frame")


def append_rows(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Append `frame` to the table, creating it with the frame's schema when missing."""
    if frame.empty and table_exists(con, table):
        return
    con.register("appended_frame", frame)
    try:
        if table_exists(con, table):
            cols = ", ".join(f'"{c}"' for c in frame.columns)
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM appended_frame")
        else:
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM appended_frame")
    finally:
        con.unregister("appended_frame")
