"""Where the heart is in a short-axis cine: the region that moves between end-diastole and end-systole.

Why: in the labelling app the heart filled a small part of each card, the rest was chest wall and
lung. In a cine only the heart (and the blood pool next to it) changes between phases; chest wall,
liver and spine stand still. So the mean absolute difference between the end-diastolic images and
the systolic images of a few mid-stack positions, smoothed over a few millimetres, peaks on the
ventricles, and a square around that peak with a margin shows the heart with its surroundings.
One box per scan: every slice of a stack is shown with the same crop, so the base -> apex change
in the heart stays comparable between cards. A broad prior towards the image centre (scans are
planned on the heart) keeps bright chest wall that moves with the heart at the edge from winning.

Pure module (arrays in, box out); ingestion decodes the extra systolic images only for the
positions `crop_positions` names.

Public API:
- `CropBox(top, left, bottom, right)` - pixel rows/cols, end exclusive; `.as_list()`.
- `crop_positions(n_positions) -> tuple[int, ...]` - the mid-stack positions the box is found from.
- `systolic_index(n_phases) -> int` - which phase of a position to compare with end-diastole.
- `heart_box(end_diastole, systole, pixel_spacing, margin_mm=30, min_side_mm=130) -> CropBox`.
- `stack_heart_box(positions, decode, pixel_spacing) -> CropBox` - the same for a planned stack,
  decoding only the images it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

SYSTOLE_FRACTION = 0.35  # end-systole lies about a third into the R-R interval
MOTION_SMOOTHING_MM = 8.0  # integrates the moving myocardial ring into one blob
CENTRE_PRIOR_SHARE = 0.3  # sd of the prior, as a share of the field of view: scans are planned on the heart
MOTION_THRESHOLD = 0.5  # share of the peak motion that still counts as heart
MIN_RELATIVE_MOTION = 0.02  # below this share of the intensity range nothing moved: keep the full view


@dataclass(frozen=True)
class CropBox:
    """A region of an image in pixels: rows `top:bottom`, columns `left:right`."""

    top: int
    left: int
    bottom: int
    right: int

    def __post_init__(self) -> None:
        if not (0 <= self.top < self.bottom and 0 <= self.left < self.right):
            raise ValueError(f"not a crop box: {self}")

    @classmethod
    def full(cls, rows: int, cols: int) -> CropBox:
        return cls(0, 0, rows, cols)

    def as_list(self) -> list[int]:
        return [self.top, self.left, self.bottom, self.right]


def crop_positions(n_positions: int) -> tuple[int, ...]:
    """Up to three positions around the middle of the stack, where the LV moves most."""
    if n_positions < 1:
        raise ValueError("a stack needs at least one position")
    return tuple(sorted({min(n_positions - 1, int(n_positions * share)) for share in (0.35, 0.5, 0.65)}))


def systolic_index(n_phases: int) -> int:
    """Index of the phase nearest end-systole among `n_phases` in time order, end-diastole first.

    With two phases (an ED/ES export) that is the second one.
    """
    if n_phases < 2:
        raise ValueError("a cine position needs at least two phases to find motion")
    return min(n_phases - 1, max(1, round(SYSTOLE_FRACTION * n_phases)))


def heart_box(end_diastole: np.ndarray, systole: np.ndarray, pixel_spacing: tuple[float, float],
              margin_mm: float = 30.0, min_side_mm: float = 130.0) -> CropBox:
    """A square box (in mm, so square on screen) around the moving region, with `margin_mm` around it.

    `end_diastole` and `systole` are `(positions, rows, cols)` rescaled pixels of the same positions.
    Returns the full image when nothing moves (a static series) or the box would cover it anyway.
    """
    if end_diastole.shape != systole.shape or end_diastole.ndim != 3 or end_diastole.shape[0] == 0:
        raise ValueError(f"need two (positions, rows, cols) stacks of one shape, got {end_diastole.shape} "
                         f"and {systole.shape}")
    rows, cols = end_diastole.shape[1:]
    full = CropBox.full(rows, cols)
    low, high = np.percentile(end_diastole, [1, 99.5])
    if high <= low:
        return full
    motion = np.abs(end_diastole.astype(np.float32) - systole.astype(np.float32)).mean(axis=0) / (high - low)
    sigma = (MOTION_SMOOTHING_MM / pixel_spacing[0], MOTION_SMOOTHING_MM / pixel_spacing[1])
    motion = ndimage.gaussian_filter(motion, sigma) * _centre_prior(rows, cols)
    peak = np.unravel_index(int(np.argmax(motion)), motion.shape)
    if motion[peak] < MIN_RELATIVE_MOTION:
        return full
    regions, _ = ndimage.label(motion >= MOTION_THRESHOLD * motion[peak])
    found_rows, found_cols = np.nonzero(regions == regions[peak])
    centre_row = (found_rows.min() + found_rows.max() + 1) / 2
    centre_col = (found_cols.min() + found_cols.max() + 1) / 2
    extent_mm = max((found_rows.max() + 1 - found_rows.min()) * pixel_spacing[0],
                    (found_cols.max() + 1 - found_cols.min()) * pixel_spacing[1])
    side_mm = max(extent_mm + 2 * margin_mm, min_side_mm)
    top, bottom = _span(centre_row, side_mm / pixel_spacing[0], rows)
    left, right = _span(centre_col, side_mm / pixel_spacing[1], cols)
    return CropBox(top, left, bottom, right)


def _centre_prior(rows: int, cols: int) -> np.ndarray:
    """A broad Gaussian weight around the image centre: outweighs bright moving chest wall at the edge."""
    row_axis = (np.arange(rows) - (rows - 1) / 2) / (CENTRE_PRIOR_SHARE * rows)
    col_axis = (np.arange(cols) - (cols - 1) / 2) / (CENTRE_PRIOR_SHARE * cols)
    return np.exp(-0.5 * np.add.outer(row_axis**2, col_axis**2)).astype(np.float32)


def _span(centre: float, length: float, size: int) -> tuple[int, int]:
    """`length` pixels around `centre`, shifted (not shrunk) to stay inside 0..size."""
    length = min(size, max(1, round(length)))
    start = min(max(0, round(centre - length / 2)), size - length)
    return start, start + length


def stack_heart_box(positions: Sequence, decode: Callable[[Any], np.ndarray],
                    pixel_spacing: tuple[float, float]) -> CropBox:
    """The heart box of one planned stack: `positions` are its slice positions (each with `.files`,
    every phase's header in time order), `decode(header)` gives an image's rescaled pixels.

    Decodes two images at each of `crop_positions` (at most six per scan: end-diastole and the
    phase nearest end-systole), whatever the number of phases.
    """
    chosen = [positions[index] for index in crop_positions(len(positions))]
    systolic = [position.files[systolic_index(len(position.files))] for position in chosen]
    return heart_box(np.stack([decode(position.files[0]) for position in chosen]),
                     np.stack([decode(header) for header in systolic]), pixel_spacing)
