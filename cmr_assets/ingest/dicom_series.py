"""Read one series folder base -> apex, the way ingestion does (`read_series`, for the slice filter
and the real-image check).

It composes the three steps of ingestion: `dicom_files` finds the files by content and reads their
headers, `stack_geometry` groups them into stacks and orders the short-axis cine base -> apex with
its end-diastolic phase, and `pixels` decodes that phase and normalises it exactly as ingestion
stores it.

Public API:
- `read_series(series_dir, workers=1) -> OrderedSeries`: one series folder, base first, with
  images normalised exactly as ingestion stores them, all source files per position and, for
  multi-frame files, their frame numbers (`OrderedSlice.frames`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmr_assets.ingest.dicom_files import DicomHeader, FileRejection, discover_files, read_headers, worker_pool
from cmr_assets.ingest.pixels import render_series
from cmr_assets.ingest.stack_geometry import plan_all_series


@dataclass(frozen=True)
class OrderedSlice:
    """One position of `read_series`: images as ingestion stores them, and all its source files."""

    slice_from_base: int
    position_mm: float
    trigger_time_ms: float | None
    image: np.ndarray
    image_128: np.ndarray
    files: tuple[str, ...]
    frames: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class OrderedSeries:
    """A single series folder read base -> apex (see `read_series`)."""

    series_dir: Path
    phase_rule: str
    spacing_mm: float
    slices: tuple[OrderedSlice, ...]
    rejected: tuple[FileRejection, ...]


def _frames_by_file(images: Sequence[DicomHeader]) -> dict[str, tuple[int, ...]]:
    """Frame numbers (1-based, phase order) per multi-frame file; empty for single-frame files."""
    frames: dict[str, list[int]] = defaultdict(list)
    for header in images:
        if header.frame is not None:
            frames[header.path].append(header.frame)
    return {path: tuple(numbers) for path, numbers in frames.items()}


def read_series(series_dir: Path, workers: int = 1) -> OrderedSeries:
    """Read one series folder base -> apex, the way ingestion does (for the slice filter).

    Raises ValueError naming the folder when it holds no usable short-axis series, or several.
    """
    series_dir = Path(series_dir)
    if not series_dir.is_dir():
        raise NotADirectoryError(f"{series_dir}: not a folder")
    with worker_pool(workers) as pool:
        headers, rejections = read_headers(series_dir, discover_files(series_dir), pool)
    plans, plan_rejections = plan_all_series(headers)
    rejections.extend(plan_rejections)
    if len(plans) != 1:
        reasons = sorted({r.reason for r in rejections})
        raise ValueError(f"{series_dir}: expected one short-axis cine series, found {len(plans)}"
                         + (f"; rejected: {'; '.join(reasons)}" if reasons else ""))
    rendered = render_series(series_dir, plans[0])
    slices = tuple(
        OrderedSlice(
            slice_from_base=index,
            position_mm=position.position_mm,
            trigger_time_ms=position.chosen.trigger_time,
            image=image,
            image_128=small,
            files=tuple(dict.fromkeys(h.path for h in position.files)),
            frames=_frames_by_file(position.files),
        )
        for index, (position, image, small) in enumerate(
            zip(plans[0].positions, rendered.images, rendered.array, strict=True))
    )
    return OrderedSeries(series_dir=series_dir, phase_rule=plans[0].phase_rule,
                         spacing_mm=plans[0].spacing_mm, slices=slices, rejected=tuple(rejections))
