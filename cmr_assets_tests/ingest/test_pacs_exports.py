"""Hospital-export look-alikes of the real Sunnybrook series: compressed, Enhanced MR, whole studies.

Each variant is generated at test time (3 of the 20 phases, to stay fast) and must read to the same
slices, in the same order, with pixel-identical images, as the original files it came from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pydicom
import pytest
from libjpeg import decode as libjpeg_decode

from cmr_assets.ingest import dicom_files, pixels
from cmr_assets.ingest.deid import load_or_create_key, scan_id_for, study_key_for
from cmr_assets.ingest.dicom_files import REJECT_UNSUPPORTED_TS, FileRejection, decoder_hint, read_file
from cmr_assets.ingest.dicom_series import OrderedSeries, read_series
from cmr_assets.ingest.ingestion import ingest_folder
from cmr_assets.settings import DataPaths
from cmr_assets.synthetic.pacs_exports import (
    LOSSLESS_SYNTAXES,
    encode_jpeg_lossless,
    select_phases,
    transcode,
    write_enhanced_mr,
    write_legacy_converted_mr,
    write_study,
)
from cmr_assets.training.split import split_group_of_scan, split_new_scans_by_group
from cmr_assets_tests.conftest import SUNNYBROOK, SeriesSpec, write_series

PATIENT = "SCD0000201"  # 13 positions; SliceLocation increases base -> apex here
PHASES = (0, 7, 14)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """3 phases of the real cine, copied unchanged."""
    if not (SUNNYBROOK / "slices_truth.csv").is_file():
        pytest.skip("Sunnybrook data not found beside the repository")
    folder = tmp_path_factory.mktemp("original")
    for path in select_phases(SUNNYBROOK.resolve() / PATIENT, PHASES):
        shutil.copy2(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def reference(original: Path) -> OrderedSeries:
    return read_series(original)


def _assert_same_slices(series: OrderedSeries, reference: OrderedSeries) -> None:
    assert len(series.slices) == len(reference.slices) == 13
    for ours, theirs in zip(series.slices, reference.slices, strict=True):
        assert ours.position_mm == pytest.approx(theirs.position_mm, abs=0.01)
        assert ours.trigger_time_ms == pytest.approx(theirs.trigger_time_ms)
        assert np.array_equal(ours.image, theirs.image)
        assert np.array_equal(ours.image_128, theirs.image_128)


@pytest.mark.parametrize("variant", sorted(LOSSLESS_SYNTAXES))
def test_lossless_transcodes_read_like_the_original(original: Path, reference: OrderedSeries, tmp_path: Path,
                                                    variant: str) -> None:
    syntax = LOSSLESS_SYNTAXES[variant]
    written = transcode(sorted(original.iterdir()), tmp_path / variant, syntax)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in written]
    assert {h.file_meta.TransferSyntaxUID for h in headers} == {syntax}
    assert [h.SOPInstanceUID for h in headers] == [
        pydicom.dcmread(original / p.name, stop_before_pixels=True).SOPInstanceUID for p in written]
    for path in written[:3]:  # stored values survive the round trip exactly
        assert np.array_equal(pydicom.dcmread(path).pixel_array, pydicom.dcmread(original / path.name).pixel_array)
    series = read_series(tmp_path / variant)
    _assert_same_slices(series, reference)
    assert [s.files for s in series.slices] == [s.files for s in reference.slices]


def test_jpeg_lossless_encoder_round_trips_edge_values() -> None:
    rng = np.random.default_rng(1)
    for precision in (8, 12, 16):
        top = (1 << precision) - 1
        image = rng.integers(0, top + 1, size=(19, 23))
        image[0, :4] = [0, top, 0, top]            # largest jumps along the first row
        image[1:5, 0] = [top, 0, 1 << (precision - 1), 0]  # and down the first column
        if precision == 16:
            image[3, 1:3] = [0, 32768]              # the difference 32768 (category 16, no extra bits)
        code = encode_jpeg_lossless(image, precision)
        assert code[:2] == b"\xff\xd8" and code[-2:] == b"\xff\xd9" and b"\xff\xc3" in code
        assert np.array_equal(libjpeg_decode(code).astype(np.int64), image)
    with pytest.raises(ValueError, match="samples"):
        encode_jpeg_lossless(np.full((2, 2), 256), 8)


@pytest.mark.parametrize("shared_orientation", [True, False], ids=["shared-orientation", "per-frame-orientation"])
def test_enhanced_mr_multiframe_reads_like_the_single_frames(original: Path, reference: OrderedSeries,
                                                             tmp_path: Path, shared_orientation: bool) -> None:
    target = write_enhanced_mr(sorted(original.iterdir()), tmp_path / "mf" / "enhanced.dcm",
                               shared_orientation=shared_orientation, shuffle_seed=3)
    header = pydicom.dcmread(target, stop_before_pixels=True)
    assert int(header.NumberOfFrames) == 39 and header.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1"
    assert ("PlaneOrientationSequence" in header.SharedFunctionalGroupsSequence[0]) == shared_orientation
    series = read_series(tmp_path / "mf")
    _assert_same_slices(series, reference)
    per_frame = header.PerFrameFunctionalGroupsSequence
    seen = []
    for ordered, expected in zip(series.slices, reference.slices, strict=True):
        assert ordered.files == ("enhanced.dcm",)
        frames = ordered.frames["enhanced.dcm"]
        assert len(frames) == len(expected.files) == 3
        items = [per_frame[n - 1] for n in frames]
        positions = {tuple(float(v) for v in i.PlanePositionSequence[0].ImagePositionPatient) for i in items}
        assert len(positions) == 1  # one position's frames
        times = [float(i.CardiacSynchronizationSequence[0].NominalCardiacTriggerDelayTime) for i in items]
        assert times == sorted(times) and times[0] == ordered.trigger_time_ms  # end-diastole first
        seen.extend(frames)
    assert sorted(seen) == list(range(1, 40))


def test_compressed_enhanced_mr_decodes_only_the_chosen_frames(original: Path, reference: OrderedSeries,
                                                                tmp_path: Path, monkeypatch) -> None:
    target = write_enhanced_mr(sorted(original.iterdir()), tmp_path / "mf" / "enhanced.dcm")
    ds = pydicom.dcmread(target)
    ds.compress(LOSSLESS_SYNTAXES["jpeg_ls"])
    ds.save_as(target)
    decoded: list[int | None] = []
    real_pixel_array = pixels.pixel_array

    def counting_pixel_array(src, **kwargs):
        decoded.append(kwargs.get("index"))
        return real_pixel_array(src, **kwargs)

    monkeypatch.setattr(pixels, "pixel_array", counting_pixel_array)
    series = read_series(tmp_path / "mf")
    _assert_same_slices(series, reference)
    assert sorted(decoded) == sorted(s.frames["enhanced.dcm"][0] - 1 for s in series.slices)  # 13 of 39


def test_legacy_converted_enhanced_mr_from_highdicom(original: Path, reference: OrderedSeries,
                                                     tmp_path: Path) -> None:
    write_legacy_converted_mr(sorted(original.iterdir()), tmp_path / "legacy" / "legacy.dcm")
    series = read_series(tmp_path / "legacy")
    _assert_same_slices(series, reference)
    assert sorted(n for s in series.slices for n in s.frames["legacy.dcm"]) == list(range(1, 40))


def test_enhanced_mr_ingests_as_one_scan_of_one_file(original: Path, tmp_path: Path) -> None:
    write_enhanced_mr(sorted(original.iterdir()), tmp_path / "src" / "enhanced.dcm")
    paths = DataPaths(tmp_path / "data").ensure()
    report = ingest_folder(tmp_path / "src", paths, paths.duckdb, workers=1, log=lambda _: None)
    assert (report.dicom_files, report.scans_new, report.slices_new, report.rejected) == (1, 1, 13, {})
    with duckdb.connect(str(paths.duckdb), read_only=True) as con:
        assert con.execute("SELECT n_slices, n_files FROM scans").fetchall() == [(13, 1)]
        assert con.execute("SELECT DISTINCT n_phases FROM slices").fetchall() == [(3,)]


def test_study_folder_ingests_only_the_short_axis_cine(original: Path, tmp_path: Path) -> None:
    localizers = SUNNYBROOK.resolve() / "localizers" / PATIENT / "Localizers_1"
    study = write_study(sorted(original.iterdir()), localizers, tmp_path / "study")
    paths = DataPaths(tmp_path / "data").ensure()
    report = ingest_folder(study.root, paths, paths.duckdb, workers=1, log=lambda _: None)
    assert (report.scans_new, report.slices_new) == (1, 13)
    cine_uid = pydicom.dcmread(study.root / study.cine[0], stop_before_pixels=True).SeriesInstanceUID
    with duckdb.connect(str(paths.duckdb), read_only=True) as con:
        rows = dict(con.execute("SELECT path, reason FROM rejected_files").fetchall())
        assert con.execute("SELECT scan_id FROM scans").fetchall() == [
            (scan_id_for(cine_uid, load_or_create_key(paths.secret)),)]
    assert set(rows) == {*study.localizers, *study.long_axis, *study.single_phase, study.dicomdir}
    assert all(rows[p].startswith("series rejected: not a short-axis cine: series 1, 256x256, 5 images: "
                                  "stack normal 55 deg") for p in study.localizers)
    assert all(rows[p].startswith("series rejected: not a short-axis cine: stack normal 90 deg")
               for p in study.long_axis)
    assert all("one phase per position, and the study has a short-axis cine (series 300)" in rows[p]
               for p in study.single_phase)
    assert rows[study.dicomdir].startswith("not an image instance: DICOMDIR")


def test_real_cine_beside_its_localizers_gives_the_short_axis_slices(tmp_path: Path) -> None:
    """The anonymiser gave SCD0000101's localizers the cine's SeriesInstanceUID."""
    if not (SUNNYBROOK / "slices_truth.csv").is_file():
        pytest.skip("Sunnybrook data not found beside the repository")
    patient = "SCD0000101"
    source = SUNNYBROOK.resolve()
    for folder, prefix in ((source / patient, "cine"), (source / "localizers" / patient / "Localizers_1", "scout")):
        (tmp_path / "study" / prefix).mkdir(parents=True)
        for path in folder.iterdir():
            (tmp_path / "study" / prefix / path.name).symlink_to(path)
    series = read_series(tmp_path / "study")
    alone = read_series(source / patient)
    assert len(series.slices) == 12
    assert [tuple(f"cine/{f}" for f in s.files) for s in alone.slices] == [s.files for s in series.slices]
    assert len(series.rejected) == 15
    assert {r.kind for r in series.rejected} == {"series rejected: not a short-axis cine"}


def test_missing_decoder_names_the_syntax_and_the_package(original: Path, tmp_path: Path, monkeypatch) -> None:
    [path] = transcode([sorted(original.iterdir())[0]], tmp_path / "ls", LOSSLESS_SYNTAXES["jpeg_ls"])
    assert not isinstance(read_file(tmp_path / "ls", path), FileRejection)
    monkeypatch.setattr(dicom_files, "_decoder_available", lambda syntax: False)
    rejection = read_file(tmp_path / "ls", path)
    assert rejection.kind == REJECT_UNSUPPORTED_TS
    assert "JPEG-LS Lossless" in rejection.detail and "pyjpegls" in rejection.detail
    assert "pylibjpeg-openjpeg" in decoder_hint("1.2.840.10008.1.2.4.90")
    assert "JPEG XL" in decoder_hint("1.2.840.10008.1.2.4.110")
    assert decoder_hint("1.2.840.10008.1.2.4.94").startswith("none: JPIP")


def test_two_stacks_sharing_one_uid_become_two_scans(tmp_path: Path) -> None:
    """A repeated short-axis cine that an anonymiser gave the same SeriesInstanceUID."""
    first = write_series(tmp_path / "src" / "a", SeriesSpec(series_uid="1.2.826.0.1.77"))
    second = write_series(tmp_path / "src" / "b", SeriesSpec(series_uid="1.2.826.0.1.77", n_positions=6,
                                                             origin=(0.0, 0.0, 0.0)))
    study_uid = "1.2.826.0.1.78"
    for number, files in ((5, first), (9, second)):
        for path in files:
            ds = pydicom.dcmread(path)
            ds.SeriesNumber = number
            ds.StudyInstanceUID = study_uid
            ds.save_as(path)
    paths = DataPaths(tmp_path / "data").ensure()
    report = ingest_folder(tmp_path / "src", paths, paths.duckdb, workers=1, log=lambda _: None)
    assert (report.scans_new, report.slices_new, report.rejected) == (2, 10, {})
    with duckdb.connect(str(paths.duckdb), read_only=True) as con:
        rows = con.execute("SELECT n_slices, study_key FROM scans ORDER BY n_slices").fetchall()
    assert [r[0] for r in rows] == [4, 6]
    # both scans carry the same keyed study id (never the UID itself): the split can keep them together
    assert rows[0][1] == rows[1][1] == study_key_for(study_uid, load_or_create_key(paths.secret))
    assert study_uid not in rows[0][1]
    again = ingest_folder(tmp_path / "src", paths, paths.duckdb, workers=1, log=lambda _: None)
    assert (again.scans_new, again.scans_skipped_existing) == (0, 2)


def test_two_series_of_one_patient_share_a_group_and_a_split(tmp_path: Path) -> None:
    """Two studies of one patient (different StudyInstanceUIDs, same PatientID) plus other patients:
    the scans table holds one keyed patient group for both (never the PatientID) and the split keeps
    them on one side."""
    for k in range(8):
        patient = "PAT-0001" if k < 2 else f"PAT-{k:04d}"
        files = write_series(tmp_path / "src" / f"s{k}", SeriesSpec(series_uid=f"1.2.826.0.1.9{k}",
                                                                    n_positions=4 + k % 3))
        for path in files:
            ds = pydicom.dcmread(path)
            ds.PatientID, ds.StudyInstanceUID = patient, f"1.2.826.0.2.{k}"
            ds.save_as(path)
    paths = DataPaths(tmp_path / "data").ensure()
    ingest_folder(tmp_path / "src", paths, paths.duckdb, workers=1, log=lambda _: None)
    with duckdb.connect(str(paths.duckdb), read_only=True) as con:
        scans = con.execute("SELECT * FROM scans").df()
    key = load_or_create_key(paths.secret)
    pair = scans[scans["scan_id"].isin([scan_id_for(f"1.2.826.0.1.9{k}", key) for k in (0, 1)])]
    assert len(pair) == 2 and pair["patient_group"].nunique() == 1 and pair["study_key"].nunique() == 2
    assert scans["patient_group"].nunique() == 7
    assert not scans.astype(str).apply(lambda column: column.str.contains("PAT-")).any().any()
    groups = split_group_of_scan(scans)
    mix = pd.DataFrame({"scan_id": scans["scan_id"], "too_basal": 1, "lv": 3, "too_apical": 1})
    for seed in range(10):  # whatever the shuffle, the patient's two series land on one side
        split = split_new_scans_by_group(mix, groups, pd.DataFrame(columns=["scan_id", "split"]), seed=seed)
        assert split[split["scan_id"].isin(pair["scan_id"])]["split"].nunique() == 1
    assert set(split["split"]) == {"train", "val", "test"}


def test_filter_gives_the_same_positions_for_every_variant(original: Path, tmp_path: Path) -> None:
    """`cmr-assets filter --json` objects (here via `filter_series`) for a multi-frame and a compressed copy."""
    torch = pytest.importorskip("torch")
    from cmr_assets.inference.slice_filter import filter_series

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(16), torch.nn.Flatten(), torch.nn.Linear(64, 3),
                                torch.nn.Softmax(dim=1)).eval()
    write_enhanced_mr(sorted(original.iterdir()), tmp_path / "mf" / "enhanced.dcm")
    transcode(sorted(original.iterdir()), tmp_path / "jls", LOSSLESS_SYNTAXES["jpeg_ls"])
    expected = filter_series(original, model)
    for variant in ("mf", "jls"):
        decisions = filter_series(tmp_path / variant, model)
        assert [(d.slice_from_base, d.position_mm, d.probabilities, d.keep) for d in decisions] == [
            (d.slice_from_base, d.position_mm, d.probabilities, d.keep) for d in expected]
    multi = filter_series(tmp_path / "mf", model)
    assert all(d.files == ["enhanced.dcm"] and len(d.frames["enhanced.dcm"]) == 3 for d in multi)
    assert [d.files for d in filter_series(tmp_path / "jls", model)] == [d.files for d in expected]


def test_frames_of_another_plane_in_one_file_are_rejected_by_frame_number(original: Path, tmp_path: Path) -> None:
    target = write_enhanced_mr(sorted(original.iterdir()), tmp_path / "mf" / "enhanced.dcm", shared_orientation=False)
    ds = pydicom.dcmread(target)
    basal = min(range(39), key=lambda i: float(
        ds.PerFrameFunctionalGroupsSequence[i].PlanePositionSequence[0].ImagePositionPatient[2]))
    position = ds.PerFrameFunctionalGroupsSequence[basal].PlanePositionSequence[0].ImagePositionPatient
    axial = [i + 1 for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence)
             if item.PlanePositionSequence[0].ImagePositionPatient == position]
    for number in axial:
        item = ds.PerFrameFunctionalGroupsSequence[number - 1]
        item.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(target)
    series = read_series(tmp_path / "mf")
    assert len(series.slices) == 12 and len(axial) == 3
    assert not {n for s in series.slices for n in s.frames["enhanced.dcm"]} & set(axial)
    [rejection] = series.rejected
    assert rejection.path == "enhanced.dcm" and rejection.kind == "series rejected: not a short-axis cine"
    named = rejection.detail.rsplit("(frames ", 1)[1].rstrip(")")  # e.g. "13-14, 24"
    expanded = [n for part in named.split(", ")
                for n in range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1)]
    assert expanded == sorted(axial)
