"""Shared fixtures: temporary data folders, the real Sunnybrook data, and small hand-built DICOM series.

The DICOM builders are independent of the synthetic cohort generator on purpose: each test states
exactly the geometry, timing and defects it needs. Pixel values encode (position, phase) so tests
can check which file ended up where: position k of a series is filled with `100 * (k + 1) + phase`
plus a small ramp (so percentiles are well defined).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from cmr_assets.ingest.deid import KEY_BYTES, KEY_FILE_NAME
from cmr_assets.settings import DataPaths

SUNNYBROOK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sunnybrook"
PHI_MARKER = "ZZPHI"

# A real short-axis orientation (Sunnybrook SCD0000101): row x col points AWAY from the apex, so the
# ordering code has to flip it. SWAPPED has row/col exchanged: its normal points toward the apex.
SA_ORIENTATION = (-0.104592, 0.346381, -0.932245, -0.733192, -0.660188, -0.163037)
SA_ORIENTATION_SWAPPED = SA_ORIENTATION[3:] + SA_ORIENTATION[:3]
AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def unit_normal_toward_apex(orientation) -> np.ndarray:
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    normal /= np.linalg.norm(normal)
    return normal if normal @ np.array([1.0, -1.0, -1.0]) > 0 else -normal


def phi_values(marker: str) -> dict[str, str]:
    """Identifier tags, each carrying the marker (dates carry a marker-free but recognisable date)."""
    return {
        "PatientName": f"{marker}^NAME", "PatientID": f"{marker}ID", "PatientBirthDate": "19450317",
        "PatientAddress": f"{marker} street", "InstitutionName": f"{marker} Hospital",
        "InstitutionAddress": f"{marker} road", "AccessionNumber": f"{marker}ACC",
        "ReferringPhysicianName": f"{marker}^DOC", "OperatorsName": f"{marker}^OP",
        "StudyDescription": f"{marker} study text", "SeriesDescription": f"{marker} series text",
        "ImageComments": f"{marker} comment", "PatientComments": f"{marker} patient comment",
        "StudyID": f"{marker}SID", "StudyDate": "20190704", "SeriesDate": "20190704",
        "AcquisitionDate": "20190704", "ContentDate": "20190704",
    }


@dataclass
class SeriesSpec:
    """What `write_series` writes; defaults give a valid 4-position, 3-phase short-axis cine stack."""

    n_positions: int = 4
    n_phases: int = 3
    rows: int = 24
    cols: int = 32
    spacing_mm: float = 10.0
    orientation: tuple[float, ...] = SA_ORIENTATION
    modality: str = "MR"
    with_trigger_time: bool = True
    tilt_last_position_deg: float = 0.0
    phi_marker: str | None = None
    series_uid: str = field(default_factory=generate_uid)
    origin: tuple[float, float, float] = (30.0, -20.0, 40.0)


def _dataset(spec: SeriesSpec, position: int, phase: int, transfer_syntax=ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = spec.modality
    ds.ManufacturerModelName = "TestScanner"
    orientation = np.asarray(spec.orientation, dtype=float)
    if spec.tilt_last_position_deg and position == spec.n_positions - 1:
        angle = np.radians(spec.tilt_last_position_deg)
        row, col = orientation[:3], orientation[3:]
        orientation = np.concatenate([row * np.cos(angle) + np.cross(col, row) * np.sin(angle), col])
    normal = unit_normal_toward_apex(spec.orientation)
    ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
    position_lps = np.asarray(spec.origin) + normal * spec.spacing_mm * position
    ds.ImagePositionPatient = [round(float(v), 4) for v in position_lps]
    ds.SliceLocation = round(-spec.spacing_mm * position * 0.7 + 5.0, 3)  # deliberately not the order
    ds.PixelSpacing = [1.5, 1.5]
    ds.SliceThickness = 8.0
    ds.SpacingBetweenSlices = spec.spacing_mm
    # phases listed out of time order: phase p has trigger time 40*((p+1) % n): the smallest is the
    # LAST phase index, so "first file" or "first instance" differs from "smallest TriggerTime".
    if spec.with_trigger_time:
        ds.TriggerTime = 40.0 * ((phase + 1) % spec.n_phases)
    ds.InstanceNumber = 1 + position * spec.n_phases + phase
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -10
    ramp = np.add.outer(np.arange(spec.rows), np.arange(spec.cols)) % 7
    ds.PixelData = (100 * (position + 1) + phase + ramp).astype(np.uint16).tobytes()
    if spec.phi_marker:
        for keyword, value in phi_values(spec.phi_marker).items():
            setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, spec: SeriesSpec | None = None) -> list[Path]:
    """Write a series with random file names (position/phase are not in the names)."""
    spec = spec or SeriesSpec()
    written = []
    for position in range(spec.n_positions):
        for phase in range(spec.n_phases):
            written.append(save(_dataset(spec, position, phase), folder / f"{uuid.uuid4().hex[:10]}"))
    return written


@pytest.fixture
def data_paths(tmp_path: Path) -> DataPaths:
    """A fresh runtime data folder under tmp."""
    return DataPaths(tmp_path / "data").ensure()


@pytest.fixture
def sunnybrook() -> Path:
    if not (SUNNYBROOK / "slices_truth.csv").is_file():
        pytest.skip(f"Sunnybrook data not found at {SUNNYBROOK.resolve()} "
                    "(expected ../shared/data/sunnybrook beside the repository)")
    return SUNNYBROOK.resolve()


@pytest.fixture
def series_writer() -> Callable[..., list[Path]]:
    """`write_series(folder, SeriesSpec(...))`."""
    return write_series


@dataclass(frozen=True)
class BadInputFolder:
    """A source folder of good and bad files, and the reason prefix expected for each bad path."""

    root: Path
    good_series_uids: tuple[str, ...]
    expected: dict[str, str]


@pytest.fixture
def bad_input_folder(tmp_path: Path) -> BadInputFolder:
    """One folder with a good stack and every kind of bad input, mixed and nested."""
    root = tmp_path / "source"
    expected: dict[str, str] = {}

    def rel(paths: list[Path] | Path) -> list[str]:
        return [p.relative_to(root).as_posix() for p in (paths if isinstance(paths, list) else [paths])]

    good = SeriesSpec()
    good_files = write_series(root / "good" / "nested", good)

    (root / "notes.txt").write_text("not dicom at all\n")
    (root / "misc").mkdir()
    (root / "misc" / "image.bin").write_bytes(b"\x89PNG\r\n" + bytes(300))
    expected.update(dict.fromkeys(rel([root / "notes.txt", root / "misc" / "image.bin"]), "not a DICOM file"))

    truncated = save(_dataset(SeriesSpec(), 0, 0), root / "truncated.dcm")
    truncated.write_bytes(truncated.read_bytes()[:-200])
    expected[rel(truncated)[0]] = "truncated file"

    no_pixels_ds = _dataset(SeriesSpec(), 0, 0)
    del no_pixels_ds.PixelData
    expected[rel(save(no_pixels_ds, root / "nopix" / "a"))[0]] = "no pixel data"

    # a video syntax: no pydicom pixel-data plugin decodes it, whatever is installed
    compressed = _dataset(SeriesSpec(), 0, 0, transfer_syntax=pydicom.uid.MPEG4HP41)
    compressed.PixelData = encapsulate([b"\x00\x00\x00\x01" + bytes(64)])
    compressed["PixelData"].VR = "OB"
    expected[rel(save(compressed, root / "video.dcm"))[0]] = "unsupported transfer syntax"

    ct = write_series(root / "ct", SeriesSpec(modality="CT", n_phases=1))
    expected.update(dict.fromkeys(rel(ct), "series rejected: not MR"))
    single = write_series(root / "single", SeriesSpec(n_positions=1))
    expected.update(dict.fromkeys(rel(single), "series rejected: too few slice positions"))
    tilted = write_series(root / "tilted", SeriesSpec(tilt_last_position_deg=12.0))
    expected.update(dict.fromkeys(rel(tilted), "series rejected: slices not parallel"))
    axial = write_series(root / "axial", SeriesSpec(orientation=AXIAL_ORIENTATION, n_phases=1))
    expected.update(dict.fromkeys(rel(axial), "series rejected: not a short-axis cine"))

    partly = SeriesSpec()
    partly_files = write_series(root / "partly", partly)
    no_geometry = pydicom.dcmread(partly_files[-1])
    del no_geometry.ImagePositionPatient
    no_geometry.save_as(partly_files[-1])
    expected[rel(partly_files[-1])[0]] = "missing geometry tags"

    duplicate = root / "zz_copies" / "copy_of_good"  # sorts after good/: the copy is the duplicate
    duplicate.parent.mkdir()
    shutil.copyfile(sorted(good_files)[0], duplicate)
    expected[rel(duplicate)[0]] = "duplicate SOPInstanceUID"

    return BadInputFolder(root=root, good_series_uids=(good.series_uid, partly.series_uid), expected=expected)


@contextmanager
def pipeline_environment(root: Path) -> Iterator[pytest.MonkeyPatch]:
    """Data folder, MLflow store and Dagster instance of one test pipeline, all under `root`.

    The data folder gets a fixed scan-id key, so scan ids, and with them the split and the task
    design, are the same on every run (a real data folder gets a random key)."""
    key = DataPaths(root / "data").secret / KEY_FILE_NAME
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(bytes(range(KEY_BYTES)))
        key.chmod(0o600)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMR_DATA_DIR", str(root / "data"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_ARTIFACT_ROOT", (root / "artifacts").as_uri())
        mp.setenv("DAGSTER_HOME", str(root / "dagster_home"))
        (root / "dagster_home").mkdir(exist_ok=True)
        yield mp
