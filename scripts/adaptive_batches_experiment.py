#!/usr/bin/env python
"""Does spending a third of the ranking budget on adaptive batches give better labels than random ones?

With the simulated experts on the stand-in cohort (`reference_like_cohort`, 300 scans), for a few
seeds: (a) three random rounds of batches, every image seen 3 times (the paper's design); (b) two
random rounds, aggregation, then as many adaptive batches (`design_adaptive_batches`) as (a) had in
its third round. Both go through the real annotation files, parser and `aggregate_ranking`; the
printed figure is each design's label accuracy against the truth. Result recorded in docs/methods.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

from cmr_assets.labelling.annotation_format import parse_annotation_file
from cmr_assets.labelling.campaign import (
    annotator_ids,
    design_adaptive_batches,
    design_ranking_batches,
)
from cmr_assets.labelling.simulator import (
    SimulatorParams,
    reference_like_cohort,
    simulate_ranking_campaign,
)
from cmr_assets.labels.aggregation import PROBABILITY_COLUMNS, aggregate_ranking
from cmr_assets.labels.agreement import label_accuracy

UNLIMITED = SimulatorParams(hours_per_expert=100.0)  # compare designs at equal batch counts, not budgets


def annotate(tasks: pd.DataFrame, reference: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Simulated experts rank `tasks`; their files are parsed back into raw ranking records."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for path in simulate_ranking_campaign(tasks, reference, UNLIMITED, Path(folder), seed=seed):
            for parsed in parse_annotation_file(path).records:
                r = parsed.record
                rows.append({"submission_id": r.submission_id, "annotator_id": r.annotator_id,
                             "batch_id": r.batch_id, "order": list(r.order), "divider_a": r.dividers[0],
                             "divider_b": r.dividers[1], "artefact_ids": list(r.artefact_ids),
                             "started_at": r.started_at, "submitted_at": r.submitted_at,
                             "source_file": path.name, "line": parsed.line})
    return pd.DataFrame(rows)


def compare(seed: int) -> tuple[int, float, int, float]:
    slices, reference = reference_like_cohort(n_scans=300, seed=seed)
    experts = annotator_ids(3)
    random_three = design_ranking_batches(slices, experts, min_views=3, seed=seed)
    accuracy_random = label_accuracy(aggregate_ranking(annotate(random_three, reference, seed), slices).labels,
                                     reference)["accuracy"]
    random_two = design_ranking_batches(slices, experts, min_views=2, seed=seed)
    raw_two = annotate(random_two, reference, seed)
    current = aggregate_ranking(raw_two, slices).labels[["slice_id", *PROBABILITY_COLUMNS]].dropna()
    adaptive = design_adaptive_batches(slices, current, experts, len(random_three) - len(random_two), seed=seed)
    adaptive["batch_id"] = adaptive["batch_id"].str.replace("r-", "r2-")
    raw = pd.concat([raw_two, annotate(adaptive, reference, seed + 100)], ignore_index=True)
    accuracy_adaptive = label_accuracy(aggregate_ranking(raw, slices).labels, reference)["accuracy"]
    return len(random_three), accuracy_random, len(adaptive), accuracy_adaptive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    for seed in parser.parse_args().seeds:
        n, random_accuracy, n_adaptive, adaptive_accuracy = compare(seed)
        print(f"seed {seed}: {n} random batches -> label accuracy {random_accuracy:.4f}; "
              f"{n - n_adaptive} random + {n_adaptive} adaptive -> {adaptive_accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
