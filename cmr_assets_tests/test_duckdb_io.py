"""The shared DuckDB helpers: a block commits together or not at all; reads never write."""

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from cmr_assets.duckdb_io import append_rows, read_only, read_table, replace_table, transaction


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    database = tmp_path / "t.duckdb"
    with duckdb.connect(str(database)) as con:
        append_rows(con, "items", pd.DataFrame({"id": [1, 2]}))
        with pytest.raises(RuntimeError), transaction(con):
            con.execute("INSERT INTO items VALUES (3)")
            raise RuntimeError("crash mid-write")
        assert read_table(con, "items")["id"].tolist() == [1, 2]
        with transaction(con):
            con.execute("INSERT INTO items VALUES (3)")
        replace_table(con, "items", pd.DataFrame({"id": [9]}))
    with read_only(database) as con:
        assert read_table(con, "items")["id"].tolist() == [9]
        assert read_table(con, "missing").empty
        with pytest.raises(duckdb.Error):
            con.execute("INSERT INTO items VALUES (4)")
