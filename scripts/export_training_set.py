#!/usr/bin/env python
"""Export the pipeline's training data (after `make demo`) to one .npz for a bare GPU machine.

The GPU machine has torch but neither DuckDB nor the pipeline's other dependencies, so this script
gathers, with the pipeline's own dataset functions, exactly what the model assets train and test
on: train/val images with each strategy's labels (hard and soft) and the common test set with its
reference labels. No identifiers: images and class indices only.
"""

from __future__ import annotations

import argparse
import sys

import duckdb
import numpy as np

from cmr_assets.duckdb_io import read_table
from cmr_assets.settings import DataPaths
from cmr_assets.training.dataset import (
    PROBABILITY_COLUMNS,
    evaluation_rows,
    labelled_rows,
    load_slice_images,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .npz to write")
    args = parser.parse_args()
    paths = DataPaths.default()
    with duckdb.connect(str(paths.duckdb), read_only=True) as con:
        slices = read_table(con, "slices", "slice_id, scan_id, array_path, array_index")
        split = read_table(con, "dataset_split")
        reference = read_table(con, "reference_labels")
        labels = {s: read_table(con, f"labels_{s}") for s in ("single", "ranking")}
    parts = {f"{strategy}_{which}": labelled_rows(slices, split, table, which)
             for strategy, table in labels.items() for which in ("train", "val")}
    parts["test"] = evaluation_rows(slices, split, reference)
    # Each image is stored once; every part refers to it by index (the strategies share most images).
    used = sorted(set().union(*(set(rows["slice_id"]) for rows in parts.values())))
    index = {slice_id: i for i, slice_id in enumerate(used)}
    arrays: dict[str, np.ndarray] = {
        "images": load_slice_images(paths.root, slices.set_index("slice_id").loc[used].reset_index())}
    for name, rows in parts.items():
        arrays[f"{name}_index"] = rows["slice_id"].map(index).to_numpy()
        arrays[f"{name}_targets"] = rows["target"].to_numpy()
        if name != "test":
            arrays[f"{name}_soft"] = rows[PROBABILITY_COLUMNS].to_numpy(dtype=np.float32)
    arrays["test_groups"] = parts["test"]["scan_id"].factorize()[0]
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: {len(used)} images; " + ", ".join(f"{k} {len(v)}" for k, v in arrays.items()
                                                              if k.endswith("_index")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
