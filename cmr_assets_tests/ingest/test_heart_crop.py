"""The heart box: found where the images move between end-diastole and systole, square in mm."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cmr_assets.ingest.heart_crop import CropBox, crop_positions, heart_box, stack_heart_box, systolic_index

SPACING = (1.5, 1.5)


def _cine(rows: int, cols: int, centre: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three positions of static textured 'chest' with a disc at `centre` that shrinks in systole."""
    rng = np.random.default_rng(seed)
    background = rng.normal(300, 40, (3, rows, cols)).astype(np.float32)
    r, c = np.ogrid[:rows, :cols]
    distance = np.hypot(r - centre[0], c - centre[1])
    end_diastole = background + 600 * (distance < 18)
    systole = background + 600 * (distance < 11)
    return end_diastole, systole


def test_the_box_surrounds_the_moving_heart_with_its_margin() -> None:
    end_diastole, systole = _cine(200, 240, centre=(110, 130))
    box = heart_box(end_diastole, systole, SPACING, margin_mm=30, min_side_mm=100)
    assert box.top < 110 - 18 and box.bottom > 110 + 18 and box.left < 130 - 18 and box.right > 130 + 18
    side = box.bottom - box.top
    assert side == box.right - box.left  # square in mm with square pixels
    assert 36 * 1.5 + 2 * 30 - 15 <= side * 1.5 <= 36 * 1.5 + 2 * 30 + 15
    assert side < 200


def test_a_box_at_the_image_edge_is_shifted_inside_not_shrunk() -> None:
    end_diastole, systole = _cine(160, 160, centre=(30, 140))
    box = heart_box(end_diastole, systole, SPACING, margin_mm=20, min_side_mm=120)
    assert box.top == 0 and box.right == 160 and box.bottom - box.top == box.right - box.left == 80


def test_nothing_moving_or_a_box_larger_than_the_image_gives_the_full_view() -> None:
    end_diastole, _ = _cine(64, 80, centre=(32, 40))
    assert heart_box(end_diastole, end_diastole.copy(), SPACING) == CropBox.full(64, 80)
    end_diastole, systole = _cine(64, 80, centre=(32, 40))
    assert heart_box(end_diastole, systole, SPACING, min_side_mm=200) == CropBox.full(64, 80)


def test_bad_input_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="one shape"):
        heart_box(np.zeros((2, 8, 8)), np.zeros((2, 8, 9)), SPACING)
    with pytest.raises(ValueError, match="two phases"):
        systolic_index(1)
    with pytest.raises(ValueError, match="not a crop box"):
        CropBox(5, 0, 5, 10)


def test_positions_and_phase_choice() -> None:
    assert crop_positions(1) == (0,)
    assert crop_positions(12) == (4, 6, 7)
    assert systolic_index(2) == 1  # an ED/ES export
    assert systolic_index(3) == 1
    assert systolic_index(25) == 9  # about a third into the cycle


def test_stack_heart_box_decodes_only_end_diastole_and_systole_of_mid_positions() -> None:
    end_diastole, systole = _cine(120, 120, centre=(60, 60))
    n_positions, n_phases = 10, 20
    decoded: list[tuple[int, int]] = []

    def decode(header: SimpleNamespace) -> np.ndarray:
        decoded.append((header.position, header.phase))
        return (systole if header.phase else end_diastole)[header.position % 3]

    positions = [SimpleNamespace(files=[SimpleNamespace(position=p, phase=f) for f in range(n_phases)])
                 for p in range(n_positions)]
    box = stack_heart_box(positions, decode, SPACING)
    assert sorted(decoded) == [(p, f) for p in crop_positions(n_positions) for f in (0, systolic_index(n_phases))]
    assert box.top < 60 < box.bottom and box.left < 60 < box.right
