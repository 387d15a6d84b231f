"""Discovery, header reading, base -> apex ordering, phase choice and pixel handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from cmr_assets.ingest.dicom_files import (
    REJECT_NOT_DICOM,
    DicomHeader,
    discover_files,
    read_header,
    read_headers,
    worker_pool,
)
from cmr_assets.ingest.dicom_series import read_series
from cmr_assets.ingest.pixels import normalise_stack, resize_field_of_view
from cmr_assets.ingest.stack_geometry import PHASE_RULE_INSTANCE, PHASE_RULE_TRIGGER, REJECT_DUPLICATE, plan_all_series
from cmr_assets_tests.conftest import SA_ORIENTATION_SWAPPED, SeriesSpec, write_series

PATIENTS = ["SCD0000101", "SCD0000201"]


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _instance(path: Path) -> int:
    return int(path.name.split(".")[0])


@pytest.mark.parametrize("patient", PATIENTS)
def test_sunnybrook_order_and_phase_match_truth(sunnybrook: Path, patient: str) -> None:
    truth = pd.read_csv(sunnybrook / "slices_truth.csv").query("patient_id == @patient")
    series = read_series(sunnybrook / patient)

    assert [s.slice_from_base for s in series.slices] == truth["slice_from_base"].tolist()
    for row, ordered in zip(truth.itertuples(), series.slices, strict=True):
        instances = sorted(_instance(Path(f)) for f in ordered.files)
        assert instances == list(range(row.instance_first, row.instance_last + 1))
        trigger_times = {f: float(_header(sunnybrook / patient / f).TriggerTime) for f in ordered.files}
        chosen = ordered.files[0]
        assert trigger_times[chosen] == min(trigger_times.values()) == ordered.trigger_time_ms
    positions = np.array([s.position_mm for s in series.slices])
    assert positions[0] == 0 and np.all(np.diff(positions) > 9.5)
    # the truth's positions are projections on the apex direction: the same spacing shrunk by cos(angle)
    truth_steps = np.diff(truth["apex_axis_mm"].to_numpy())
    ratios = truth_steps / np.diff(positions)
    assert np.allclose(ratios, np.median(ratios), atol=0.02)
    assert series.phase_rule == PHASE_RULE_TRIGGER
    assert series.slices[0].image.shape == (256, 256) and series.slices[0].image.dtype == np.uint8
    assert series.slices[0].image_128.shape == (128, 128)


def test_sunnybrook_slice_location_runs_opposite_ways_but_order_does_not(sunnybrook: Path) -> None:
    """The trap the README describes: SliceLocation's direction differs between the two patients."""
    directions = []
    for patient in PATIENTS:
        series = read_series(sunnybrook / patient)
        locations = [float(_header(sunnybrook / patient / s.files[0]).SliceLocation) for s in series.slices]
        directions.append(np.sign(locations[-1] - locations[0]))
    assert directions[0] == -directions[1]


@pytest.mark.parametrize("orientation", [SeriesSpec().orientation, SA_ORIENTATION_SWAPPED])
def test_order_from_geometry_not_names_or_slice_location(tmp_path: Path, orientation) -> None:
    spec = SeriesSpec(n_positions=5, orientation=orientation)
    write_series(tmp_path / "s", spec)
    series = read_series(tmp_path / "s")
    # pixel value of position k is 2 * (100 * (k + 1) + phase + ramp) - 10 after rescale: increasing with k
    means = [s.image.astype(float).mean() for s in series.slices]
    assert np.all(np.diff(means) > 0)
    assert [round(s.position_mm, 3) for s in series.slices] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert series.spacing_mm == pytest.approx(10.0)


def test_end_diastole_is_smallest_trigger_time_not_first_instance(tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", SeriesSpec(n_phases=3))
    series = read_series(tmp_path / "s")
    for ordered in series.slices:
        chosen = pydicom.dcmread(tmp_path / "s" / ordered.files[0], stop_before_pixels=True)
        assert float(chosen.TriggerTime) == 0.0
        assert int(chosen.InstanceNumber) % 3 == 0  # the third phase written, not the first instance
        assert len(ordered.files) == 3
    assert sorted(f for s in series.slices for f in s.files) == sorted(p.name for p in files)


def test_phase_fallback_is_smallest_instance_number(tmp_path: Path) -> None:
    write_series(tmp_path / "s", SeriesSpec(with_trigger_time=False))
    series = read_series(tmp_path / "s")
    assert series.phase_rule == PHASE_RULE_INSTANCE
    for ordered in series.slices:
        numbers = [int(pydicom.dcmread(tmp_path / "s" / f, stop_before_pixels=True).InstanceNumber)
                   for f in ordered.files]
        assert numbers[0] == min(numbers) and ordered.trigger_time_ms is None


def test_compressed_transfer_syntaxes_decode_like_native(tmp_path: Path) -> None:
    write_series(tmp_path / "native", SeriesSpec(series_uid="1.2.826.0.1.99.1"))
    write_series(tmp_path / "rle", SeriesSpec(series_uid="1.2.826.0.1.99.1"))
    for path in (tmp_path / "rle").iterdir():
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    write_series(tmp_path / "deflated", SeriesSpec(series_uid="1.2.826.0.1.99.1"))
    for path in (tmp_path / "deflated").iterdir():
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path)
    reference = read_series(tmp_path / "native")
    for variant in ("rle", "deflated"):
        series = read_series(tmp_path / variant)
        for a, b in zip(reference.slices, series.slices, strict=True):
            assert np.array_equal(a.image, b.image)


def test_preamble_less_dicom_is_accepted_and_junk_is_not(tmp_path: Path) -> None:
    [path] = write_series(tmp_path / "s", SeriesSpec(n_positions=1, n_phases=1))
    ds = pydicom.dcmread(path)
    raw = tmp_path / "raw_stream"
    ds.preamble = None
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.save_as(raw, implicit_vr=True, little_endian=True)
    assert raw.read_bytes()[:2] == b"\x08\x00" and raw.read_bytes()[128:132] != b"DICM"
    header = read_header(tmp_path, raw)
    assert isinstance(header, DicomHeader) and header.series_uid == ds.SeriesInstanceUID
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x08\x00" + b"garbage" * 40)
    rejection = read_header(tmp_path, junk)
    assert not isinstance(rejection, DicomHeader) and rejection.kind == REJECT_NOT_DICOM


def test_discovery_finds_nested_files_and_headers_in_a_process_pool(tmp_path: Path) -> None:
    write_series(tmp_path / "a" / "b" / "c", SeriesSpec(n_positions=3, n_phases=2))
    (tmp_path / "a" / "readme").write_text("hello")
    files = discover_files(tmp_path)
    assert len(files) == 7
    with worker_pool(2) as pool:
        headers, rejections = read_headers(tmp_path, files, pool, log=lambda message: None)
    assert len(headers) == 6 and [r.path for r in rejections] == ["a/readme"]
    plans, _ = plan_all_series(headers)
    assert len(plans) == 1 and len(plans[0].positions) == 3


def test_duplicate_sop_instances_keep_the_first_path(tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", SeriesSpec(n_positions=3, n_phases=1))
    (tmp_path / "z_copy").write_bytes(files[0].read_bytes())
    headers, _ = read_headers(tmp_path, discover_files(tmp_path))
    plans, rejections = plan_all_series(headers)
    assert [(r.path, r.kind) for r in rejections] == [("z_copy", REJECT_DUPLICATE)]
    assert plans[0].n_files == 3


def test_normalise_stack_is_robust_to_outliers() -> None:
    stack = np.tile(np.linspace(0, 1000, 10_000, dtype=np.float32), (2, 1)).reshape(2, 100, 100)
    stack[0, 0, 0] = 1e9
    normalised = normalise_stack(stack)
    assert normalised.dtype == np.uint8 and normalised.min() == 0 and normalised.max() == 255
    assert 120 < np.median(normalised) < 135  # a single hot pixel does not squash the range


def test_resize_keeps_physical_aspect_of_the_full_field_of_view() -> None:
    image = np.full((64, 128), 200, dtype=np.uint8)
    resized = resize_field_of_view(image, (1.0, 1.0))
    assert resized.shape == (128, 128)
    filled_rows = np.flatnonzero(resized.max(axis=1) > 0)
    assert filled_rows.min() == 32 and filled_rows.max() == 95  # 64 rows of content, centred
    anisotropic = resize_field_of_view(np.full((100, 100), 200, dtype=np.uint8), (2.0, 1.0))
    assert np.flatnonzero(anisotropic.max(axis=0) > 0).size == 64  # 100 mm wide of 200 mm tall


@pytest.mark.parametrize("layout", ["u16_stored12", "s16_stored12", "s16", "u8_odd", "monochrome1_implicit",
                                    "deflated", "rle"])
def test_native_fast_decode_matches_pydicom(tmp_path: Path, layout: str) -> None:
    """Pixels are read (native) or decoded (compressed) from the offset found in the header pass; the
    values must be pydicom's."""
    from dataclasses import replace

    from cmr_assets.ingest.pixels import decode_image

    [path] = write_series(tmp_path, SeriesSpec(n_positions=1, n_phases=1, rows=7, cols=9))
    ds = pydicom.dcmread(path)
    rng = np.random.default_rng(0)
    if layout.startswith(("u16", "s16")):
        ds.BitsStored = 12 if "stored12" in layout else 16
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if layout.startswith("s") else 0
        ds.PixelData = rng.integers(0, 1 << 16, size=(7, 9)).astype(np.uint16).tobytes()  # bits above BitsStored set
    elif layout == "u8_odd":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = rng.integers(0, 256, size=(7, 9)).astype(np.uint8).tobytes()  # 63 bytes: one pad byte
    save_kwargs = {}
    if layout == "monochrome1_implicit":
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        save_kwargs = {"implicit_vr": True, "little_endian": True}
    elif layout == "deflated":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    elif layout == "rle":
        ds.compress(RLELossless)
    ds.save_as(path, **save_kwargs)
    header = read_header(tmp_path, path)
    assert isinstance(header, DicomHeader)
    assert header.pixel_location is not None and header.pixel_location.encapsulated == (layout == "rle")
    fast, reference = decode_image(tmp_path, header), decode_image(tmp_path, replace(header, pixel_location=None))
    assert fast.dtype == reference.dtype == np.float32 and np.array_equal(fast, reference)
    assert header.monochrome1 == (layout == "monochrome1_implicit") and header.rescale == (2.0, -10.0)


def test_fast_header_scan_gives_pydicoms_headers(tmp_path: Path, sunnybrook: Path, monkeypatch) -> None:
    """The one-read header scan must give exactly what the pydicom path gives, file by file."""
    from cmr_assets.ingest import dicom_files

    files = write_series(tmp_path / "explicit", SeriesSpec(n_positions=2, n_phases=2, phi_marker="ZZ"))
    for name, syntax, kwargs in (("implicit", ImplicitVRLittleEndian, {"implicit_vr": True}),
                                 ("deflated", DeflatedExplicitVRLittleEndian, {}), ("rle", RLELossless, {})):
        for path in files:
            ds = pydicom.dcmread(path)
            if syntax == RLELossless:
                ds.compress(RLELossless, generate_instance_uid=False)
            else:
                ds.file_meta.TransferSyntaxUID = syntax
            (tmp_path / name).mkdir(exist_ok=True)
            ds.save_as(tmp_path / name / path.name, **kwargs)
    real = sorted((sunnybrook / "SCD0000101").iterdir())[:3] + sorted(
        (sunnybrook / "localizers" / "SCD0000101" / "Localizers_1").iterdir())[:2]
    for path in real:  # GE files with an empty PerFrameFunctionalGroupsSequence, odd UIDs, nested sequences
        (tmp_path / "real" / path.name).parent.mkdir(exist_ok=True)
        (tmp_path / "real" / path.name).write_bytes(path.read_bytes())
    paths = discover_files(tmp_path)
    scanned = 0
    real_fast = dicom_files._fast_header

    def counting(handle, size):
        nonlocal scanned
        result = real_fast(handle, size)
        scanned += result is not None
        return result

    monkeypatch.setattr(dicom_files, "_fast_header", counting)
    fast = [dicom_files.read_file(tmp_path, p) for p in paths]
    assert scanned == len(paths) == 4 * 4 + 5  # every file here took the fast scan
    monkeypatch.setattr(dicom_files, "_fast_header", lambda handle, size: None)
    assert [dicom_files.read_file(tmp_path, p) for p in paths] == fast
