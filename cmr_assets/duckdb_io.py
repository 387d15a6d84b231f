"""Small DuckDB helpers shared by the Dagster layer: DataFrames in and out of tables, in one transaction."""

from __future__ import annotations

import duckdb
import pandas as pd


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
        con.execute("BEGIN TRANSACTION")
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM replacement_frame")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
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
