"""Synthetic cohort: determinism, class mix, DICOM validity, geometry, identifiers, anatomy."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, MRImageStorage, RLELossless

from cmr_assets.domain import CLASS_NAMES
from cmr_assets.synthetic.cohort import (
    APEX_DIRECTION_LPS,
    IDENTIFIER_MARKER,
    IDENTIFIER_TAGS,
    MARKED_IDENTIFIER_TAGS,
    TRUTH_COLUMNS,
    _series_dataset,
    _SeriesEncoder,
    _set_instance,
    generate_cohort,
    plan_scan,
    render_scan,
    truth_rows,
)
from cmr_assets.synthetic.phantom import ARTEFACT_KINDS, apply_artefact, render_position


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[tuple[int, int]]]:
    """A 3-scan cohort written with two worker processes, plus the progress calls it made."""
    root = tmp_path_factory.mktemp("cohort")
    calls: list[tuple[int, int]] = []
    summary = generate_cohort(root / "scans", root / "truth.csv", n_scans=3, seed=7, workers=2,
                              progress=lambda done, total: calls.append((done, total)))
    files = list((root / "scans").rglob("*.dcm"))
    assert summary.n_scans == 3 and summary.n_files == len(files)
    assert summary.total_bytes == sum(f.stat().st_size for f in files)
    return root / "scans", root / "truth.csv", calls


def test_parallel_generation_ends_in_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    """A pipeline started in the background may ignore SIGTERM, and its worker processes with it; the
    workers must still stop (a multiprocessing Pool stops them by SIGTERM and hangs there)."""
    code = ("import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "from cmr_assets.synthetic.cohort import generate_cohort; "
            "generate_cohort(sys.argv[1] + '/scans', sys.argv[1] + '/truth.csv', n_scans=2, seed=1, workers=2)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)  # SIGKILL on timeout
    assert len(list((tmp_path / "scans").rglob("*.dcm"))) > 0


def _read_truth(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_class_mix_artefacts_and_stack_sizes_over_300_plans() -> None:
    plans = [plan_scan(0, k) for k in range(300)]
    classes = Counter(c for p in plans for c in p.true_classes)
    total = sum(classes.values())
    assert 0.10 <= classes["too_basal"] / total <= 0.20
    assert 0.60 <= classes["lv"] / total <= 0.75
    assert 0.10 <= classes["too_apical"] / total <= 0.20
    artefacts = sum(bool(a) for p in plans for a in p.artefact_kinds)
    assert 0.04 <= artefacts / total <= 0.08
    assert {p.n_positions for p in plans} <= set(range(10, 15))
    for p in plans:  # classes are monotone along the stack and match the continuous level
        order = [CLASS_NAMES.index(c) for c in p.true_classes]
        assert order == sorted(order)
        assert np.all(np.diff(p.position01) > 0)


def test_plan_geometry_is_consistent() -> None:
    for k in range(50):
        p = plan_scan(3, k)
        frame = np.stack([p.row_direction, p.col_direction, p.apex_direction])
        np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-9)
        tilt = np.degrees(np.arccos(np.clip(p.apex_direction @ APEX_DIRECTION_LPS, -1, 1)))
        assert tilt <= 20.0 + 1e-6
        steps = np.diff([p.image_position(s) @ p.apex_direction for s in range(p.n_positions)])
        np.testing.assert_allclose(steps, 10.0, atol=1e-9)
        assert 150 <= p.cols <= 256 and p.trigger_times_ms[0] == 0.0
        assert list(p.trigger_times_ms) == sorted(p.trigger_times_ms)


def test_variation_between_scans() -> None:
    plans = [plan_scan(0, k) for k in range(60)]
    assert len({p.base_first_in_instances for p in plans}) == 2
    assert len({p.slice_location_sign for p in plans}) == 2
    assert len({p.transfer_syntax for p in plans}) == 3
    assert len({p.cols for p in plans}) >= 4
    assert len({p.rescale_slope for p in plans}) >= 2
    assert len({round(p.anatomy.lv_length_mm) for p in plans}) >= 10


def test_generation_is_deterministic_and_prefix_stable(cohort, tmp_path: Path) -> None:
    scans, truth, _ = cohort
    generate_cohort(tmp_path / "scans", tmp_path / "truth.csv", n_scans=2, seed=7, workers=1)
    for scan_dir in sorted((tmp_path / "scans").iterdir()):
        files = sorted(p.name for p in scan_dir.iterdir())
        assert files == sorted(p.name for p in (scans / scan_dir.name).iterdir())
        for name in files:
            assert (scan_dir / name).read_bytes() == (scans / scan_dir.name / name).read_bytes()
    small, large = _read_truth(tmp_path / "truth.csv"), _read_truth(truth)
    assert small == large[: len(small)] and len(large) > len(small)
    assert not np.array_equal(render_scan(plan_scan(8, 0)), render_scan(plan_scan(7, 0))[: plan_scan(8, 0).n_positions])


def test_regenerating_smaller_cohort_removes_stale_scans(tmp_path: Path) -> None:
    generate_cohort(tmp_path / "s", tmp_path / "t.csv", n_scans=2, seed=1, workers=1)
    generate_cohort(tmp_path / "s", tmp_path / "t.csv", n_scans=1, seed=1, workers=1)
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["scan_0000"]
    assert {r["scan_index"] for r in _read_truth(tmp_path / "t.csv")} == {"0"}


def test_truth_table_and_progress(cohort) -> None:
    _, truth, calls = cohort
    rows = _read_truth(truth)
    assert tuple(rows[0]) == TRUTH_COLUMNS
    assert calls == [(1, 3), (2, 3), (3, 3)]
    for scan in range(3):
        mine = [r for r in rows if r["scan_index"] == str(scan)]
        assert [int(r["slice_from_base"]) for r in mine] == list(range(len(mine)))
        assert len({r["series_uid"] for r in mine}) == 1
        assert all(r["true_class"] in CLASS_NAMES for r in mine)
        assert all((r["artefact"] == "True") == bool(r["artefact_kind"]) for r in mine)


def test_files_are_valid_mr_cine_with_consistent_geometry(cohort) -> None:
    scans, truth, _ = cohort
    rows = _read_truth(truth)
    for scan_dir in sorted(scans.iterdir()):
        index = int(scan_dir.name[5:])
        plan = plan_scan(7, index)
        datasets = [pydicom.dcmread(f) for f in scan_dir.iterdir()]
        assert len(datasets) == plan.n_positions * plan.n_phases
        assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
        for d in datasets:
            assert d.file_meta.MediaStorageSOPClassUID == d.SOPClassUID == MRImageStorage
            assert d.Modality == "MR" and d.SeriesDescription == "SA CINE"
            assert d.pixel_array.shape == (d.Rows, d.Columns)
            assert float(d.SliceThickness) == 8.0 and float(d.SpacingBetweenSlices) == 10.0
            assert int(d.CardiacNumberOfImages) == plan.n_phases
        assert len({d.SeriesInstanceUID for d in datasets}) == 1
        assert len({d.StudyInstanceUID for d in datasets}) == 1
        assert len({d.FrameOfReferenceUID for d in datasets}) == 1
        orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3)
        np.testing.assert_allclose(orientation @ orientation.T, np.eye(2), atol=1e-5)
        normal = np.cross(*orientation)
        normal = normal if normal @ APEX_DIRECTION_LPS > 0 else -normal
        positions = sorted({round(float(np.array(d.ImagePositionPatient, float) @ normal), 2) for d in datasets})
        assert len(positions) == plan.n_positions
        np.testing.assert_allclose(np.diff(positions), 10.0, atol=0.01)
        # End-diastole is the smallest TriggerTime, and there it is 0 ms.
        times = sorted({float(d.TriggerTime) for d in datasets})
        assert len(times) == plan.n_phases and times[0] == 0.0
        # Instance order runs base->apex or apex->base as planned.
        by_instance = sorted(datasets, key=lambda d: int(d.InstanceNumber))
        projections = [float(np.array(d.ImagePositionPatient, float) @ normal) for d in by_instance[:: plan.n_phases]]
        assert (np.diff(projections) > 0).all() == plan.base_first_in_instances
        mine = [r for r in rows if r["scan_index"] == str(index)]
        assert mine[0]["series_uid"] == datasets[0].SeriesInstanceUID


def test_identifiers_are_planted_with_marker_and_kept_out_of_paths(cohort) -> None:
    scans, _, _ = cohort
    assert set(MARKED_IDENTIFIER_TAGS) < set(IDENTIFIER_TAGS)
    for path in scans.rglob("*.dcm"):
        assert IDENTIFIER_MARKER not in str(path.relative_to(scans))
        d = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in IDENTIFIER_TAGS:
            assert str(d.data_element(keyword).value), keyword
        for keyword in MARKED_IDENTIFIER_TAGS:
            assert IDENTIFIER_MARKER in str(d.data_element(keyword).value), keyword
        assert len(str(d.StudyDate)) == 8 and str(d.StudyDate).isdigit()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, DeflatedExplicitVRLittleEndian])
def test_fast_series_encoder_matches_pydicom(syntax, tmp_path: Path) -> None:
    plan = dataclasses.replace(plan_scan(0, 1), transfer_syntax=syntax)
    pixels = render_scan(plan)
    ds = _series_dataset(plan)
    encoder = _SeriesEncoder(ds)
    _set_instance(ds, plan, 2, 1, 5, pixels[2, 1])
    encoder.write(ds, tmp_path / "fast.dcm")
    ds.save_as(tmp_path / "pydicom.dcm", enforce_file_format=True)
    fast, reference = pydicom.dcmread(tmp_path / "fast.dcm"), pydicom.dcmread(tmp_path / "pydicom.dcm")
    assert fast.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(fast.pixel_array, pixels[2, 1])
    assert [e.tag for e in fast] == [e.tag for e in reference]
    if syntax != DeflatedExplicitVRLittleEndian:  # deflate level differs on purpose
        assert (tmp_path / "fast.dcm").read_bytes() == (tmp_path / "pydicom.dcm").read_bytes()


def _ring_means(level_mm: float, contraction: float = 0.0) -> tuple[float, float, float]:
    """Clean-signal means inside the cavity, within the wall and just outside the epicardium."""
    plan = plan_scan(0, 2)
    grid = plan.plane_grid()
    image = render_position(plan.anatomy, grid, level_mm, [contraction])[0]
    a = plan.anatomy
    cavity = grid.rho < 0.4 * (a.epi_radius_mm - a.wall_mm)
    wall = np.abs(grid.rho - (a.epi_radius_mm - a.wall_mm / 2)) < 1.5
    return float(image[cavity].mean()), float(np.median(image[wall])), float(image[grid.rho < 4].mean())


def test_anatomy_shows_lv_ring_only_between_base_and_apex() -> None:
    a = plan_scan(0, 2).anatomy
    cavity, wall, _ = _ring_means(0.3 * a.lv_length_mm)
    assert cavity > 0.9 and wall < 0.35  # bright blood pool inside a dark myocardial ring
    _, _, centre_beyond_apex = _ring_means(a.lv_length_mm + 25.0)
    assert centre_beyond_apex < 0.6  # no blood pool beyond the apex
    plan = plan_scan(0, 2)
    grid = plan.plane_grid()
    ed, es = render_position(a, grid, 0.4 * a.lv_length_mm, [0.0, 1.0])
    bright = grid.rho < a.epi_radius_mm
    assert (es[bright] > 0.9).sum() < 0.85 * (ed[bright] > 0.9).sum()  # contracted at end-systole


def test_artefacts_change_the_image_and_unknown_kind_fails() -> None:
    plan = plan_scan(0, 2)
    grid = plan.plane_grid()
    clean = render_position(plan.anatomy, grid, 20.0, [0.0])[0]
    for kind in ARTEFACT_KINDS:
        corrupted = apply_artefact(clean, kind, grid, np.random.default_rng(0))
        assert corrupted.shape == clean.shape
        assert (np.abs(corrupted - clean) > 0.1).mean() > 0.01, kind  # a visible share of the image
    with pytest.raises(ValueError, match="unknown artefact kind"):
        apply_artefact(clean, "zipper", grid, np.random.default_rng(0))


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_scans"):
        generate_cohort(tmp_path / "s", tmp_path / "t.csv", n_scans=0)
    with pytest.raises(ValueError, match="n_phases"):
        plan_scan(0, 0, n_phases=0)


def test_each_scan_draws_its_own_contrast_and_appearance() -> None:
    """Domain randomisation: tissue signals, noise, blur, field of view and deformation vary widely."""
    plans = [plan_scan(0, k) for k in range(60)]
    contrast = np.array([p.anatomy.tissue.fat / p.anatomy.tissue.myocardium for p in plans])
    assert contrast.max() / contrast.min() > 4
    assert np.ptp([p.acquisition.noise_fraction for p in plans]) > 0.03
    assert np.ptp([p.acquisition.blur_px for p in plans]) > 0.8
    assert np.ptp([p.cols * p.pixel_spacing[1] for p in plans]) > 100  # field of view in mm
    assert sum(p.acquisition.deformation_mm > 1 for p in plans) > 40
    assert plan_scan(1, 0).anatomy.tissue != plan_scan(2, 0).anatomy.tissue


def test_appearance_changes_the_pixels_but_never_the_class_truth() -> None:
    """Two seeds' contrasts on one geometry: different images, identical truth, the LV ring still visible."""
    plan = plan_scan(0, 2)
    other = plan_scan(5, 9)
    restyled = dataclasses.replace(plan, anatomy=dataclasses.replace(plan.anatomy, tissue=other.anatomy.tissue),
                                   acquisition=other.acquisition)
    assert truth_rows(restyled) == truth_rows(plan)
    first, second = render_scan(plan), render_scan(restyled)
    assert first.shape == second.shape and not np.array_equal(first, second)
    grid = plan.plane_grid()
    a = plan.anatomy
    for anatomy in (plan.anatomy, restyled.anatomy):
        image = render_position(anatomy, grid, 0.3 * a.lv_length_mm, [0.0], partial_volume_mm=8.0)[0]
        cavity = grid.rho < 0.4 * (a.epi_radius_mm - a.wall_mm)
        wall = np.abs(grid.rho - (a.epi_radius_mm - a.wall_mm / 2)) < 1.0
        assert image[cavity].mean() > np.median(image[wall]) + 0.3  # blood pool brighter than its wall


def test_partial_volume_fades_the_ring_toward_the_apex() -> None:
    plan = plan_scan(0, 2)
    grid = plan.plane_grid()
    a = plan.anatomy
    at_apex = a.lv_length_mm + 2.0
    thin = render_position(a, grid, at_apex, [0.0])[0]
    thick = render_position(a, grid, at_apex, [0.0], partial_volume_mm=10.0)[0]
    near_axis = grid.rho < 0.5 * a.epi_radius_mm
    assert not np.allclose(thin[near_axis], thick[near_axis])  # the slab reaches back into the apical cap
