"""Choosing reference-strip examples: typical, from different scans, from outside the annotator's queue first."""

from __future__ import annotations

from cmr_assets.app.reference import Candidate, candidates_from_rows, choose_examples
from cmr_assets_tests.app.conftest import truth_of


def _scan(scan_id: str, n: int = 10) -> list[Candidate]:
    return [Candidate(f"{scan_id}-{k:02d}", scan_id, k, truth_of(k), 1.0) for k in range(n)]


def test_typical_examples_from_distinct_scans() -> None:
    chosen = choose_examples([*_scan("a"), *_scan("b")], avoid=set())
    assert chosen == [("too_basal", "a-00"), ("too_basal", "b-00"), ("lv", "a-04"), ("lv", "b-04"),
                      ("too_apical", "a-09"), ("too_apical", "b-09")]


def test_queue_slices_are_avoided_while_others_are_left() -> None:
    chosen = choose_examples([*_scan("a"), *_scan("b")], avoid={"a-00", "a-04", "b-04", "b-05"}, per_class=1)
    assert chosen == [("too_basal", "b-00"), ("lv", "a-05"), ("too_apical", "a-09")]
    everything = {c.slice_id for c in _scan("a")}
    assert choose_examples(_scan("a"), avoid=everything, per_class=1) == [
        ("too_basal", "a-00"), ("lv", "a-04"), ("too_apical", "a-09")]


def test_reference_rows_win_and_unconfident_labels_are_dropped() -> None:
    reference = [("a-00", "a", 0, "too_basal")]
    labels = [("b-03", "b", 3, "lv", 0.95), ("b-04", "b", 4, "lv", 0.5), ("b-05", "b", 5, "unknown", 1.0)]
    assert [c.slice_id for c in candidates_from_rows(reference, labels)] == ["a-00"]
    assert [c.slice_id for c in candidates_from_rows([], labels)] == ["b-03"]
