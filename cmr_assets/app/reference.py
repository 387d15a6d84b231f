"""The reference strip: typical too basal, LV and too apical images from the campaign's own data.

Why: a new annotator should see what each class looks like on these scans before the first batch,
and be able to look again at any time. Examples come from the most trustworthy labels there are:
the `reference_labels` table when the team gave one (or the synthetic truth), else aggregated labels
that are confident (a class probability of at least `MIN_CONFIDENCE`). "Typical" means far from the
class boundary in its own stack: the slice whose nearest slice of another class is furthest away.
Slices outside the annotator's own queue come first, so a reference image does not prime an
answer; when the campaign gives every image to everyone (a small one), queue slices fill in.

Public API:
- `Candidate(slice_id, scan_id, slice_from_base, label, confidence)`
- `candidates_from_rows(reference_rows, label_rows) -> tuple[Candidate, ...]`
- `choose_examples(candidates, avoid, per_class=2) -> list[tuple[str, str]]` - (label, slice_id),
  classes base -> apex, each from a different scan, slices in `avoid` only when nothing else is left.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cmr_assets.domain import CLASS_NAMES

MIN_CONFIDENCE = 0.8
TYPICALITY_CAP = 3  # slices from the boundary; beyond this, confidence decides


@dataclass(frozen=True)
class Candidate:
    slice_id: str
    scan_id: str
    slice_from_base: int
    label: str
    confidence: float


def candidates_from_rows(reference_rows: Sequence[tuple], label_rows: Sequence[tuple]) -> tuple[Candidate, ...]:
    """Reference rows `(slice_id, scan_id, slice_from_base, label)` win when there are any; else label
    rows `(slice_id, scan_id, slice_from_base, label, confidence)` at or above `MIN_CONFIDENCE`."""
    if reference_rows:
        return tuple(Candidate(s, scan, int(k), label, 1.0) for s, scan, k, label in reference_rows
                     if label in CLASS_NAMES)
    return tuple(Candidate(s, scan, int(k), label, float(p)) for s, scan, k, label, p in label_rows
                 if label in CLASS_NAMES and p is not None and p >= MIN_CONFIDENCE)


def _typicality(candidates: Iterable[Candidate]) -> dict[str, int]:
    """Per slice: distance (in slices, capped) to the nearest slice of its scan with another label."""
    by_scan: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_scan[candidate.scan_id].append(candidate)
    distance = {}
    for members in by_scan.values():
        for candidate in members:
            others = [abs(o.slice_from_base - candidate.slice_from_base) for o in members if o.label != candidate.label]
            distance[candidate.slice_id] = min([TYPICALITY_CAP, *others])
    return distance


def choose_examples(candidates: Sequence[Candidate], avoid: set[str], per_class: int = 2) -> list[tuple[str, str]]:
    """Up to `per_class` typical slices per class, from different scans; slices in `avoid` last."""
    typicality = _typicality(candidates)
    chosen: list[tuple[str, str]] = []
    for label in CLASS_NAMES:
        ranked = sorted((c for c in candidates if c.label == label),
                        key=lambda c: (c.slice_id in avoid, -typicality[c.slice_id], -c.confidence, c.scan_id,
                                       c.slice_from_base))
        scans: set[str] = set()
        for candidate in ranked:
            if candidate.scan_id in scans:
                continue
            scans.add(candidate.scan_id)
            chosen.append((label, candidate.slice_id))
            if len(scans) == per_class:
                break
    return chosen
