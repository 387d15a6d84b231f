"""Seeded synthetic CMR cohort written as real DICOM short-axis cine series.

Why: the product needs an embedded default cohort (no real patient data can ship) whose files
exercise ingestion exactly like a PACS export would: scattered file names, either stack order,
scanner-dependent SliceLocation sign, several phases, varied geometry, compressed transfer syntaxes,
and planted (fake) identifiers that de-identification must remove. A truth table, kept apart from
the images, records each slice position's continuous level and class for the annotator simulation
and the evaluation only (never for ingestion, aggregation or training).

Public API
- ``generate_cohort(out_dir, truth_csv, n_scans=300, seed=0, n_phases=3, workers=2, progress=None)
  -> CohortSummary``: writes ``out_dir/scan_{k:04d}/IM_{j:04d}.dcm`` (one file per slice position
  per phase, names shuffled) and the truth CSV. Deterministic: same seed -> identical bytes; scan k
  depends only on (seed, k), so a 5-scan cohort is the first 5 scans of the 300-scan one.
  Scan folders of an earlier, larger run beyond ``n_scans`` are removed so folder and truth agree.
- ``plan_scan(seed, index, n_phases=3) -> ScanPlan``: geometry, classes, artefacts, anatomy, UIDs of
  one scan without rendering (cheap; used by tests and by anyone needing the truth alone).
- ``truth_rows(plan) -> list[dict]``; ``TRUTH_COLUMNS``.
- ``IDENTIFIER_MARKER = "ZZPHI"``: every planted text identifier contains it.
  ``IDENTIFIER_TAGS``: every identifier keyword filled; ``MARKED_IDENTIFIER_TAGS``: those carrying
  the marker (DA dates cannot hold letters: tests must read the planted dates from the files).

Geometry (DICOM LPS): the base->apex unit vector is (1,-1,-1)/sqrt(3) tilted per patient by up to
20 degrees. Slices are 8 mm thick at 10 mm spacing, 10-14 positions, starting 2-24 mm above the
base plane and ending 8-30 mm beyond the apex. ``position01`` is the slice centre's level: 0 at the base
plane, 1 at the epicardial apex; class = too_basal (<0), lv (0..1), too_apical (>1). ImageOrientation
follows the usual display (anterior up, patient left on the right) rotated by up to +-35 degrees.
End-diastole has TriggerTime 0 (the smallest); later phases show a contracted LV.

Storage and time budget (measured on the shared 2-core dev machine, default cohort, seed 0:
300 scans, 3,640 slice positions, 10,920 files): 411 MB in 140 s with workers=2 during `make demo`
(the domain-randomised phantom; 128 s for the earlier clean phantom).
Matrix sizes 160-256 weighted toward 160-192 (``MATRIX_SIZES``/``MATRIX_WEIGHTS``), 20% of series
with a rectangular FOV. Per series the transfer syntax is Deflated Explicit VR Little Endian (82%,
zlib level 1, ~0.47 of raw), Explicit VR Little Endian (8%) or RLE Lossless (10%, ~0.51 of raw,
pydicom's pure-Python encoder, ~10 ms per image so kept to a small share); all three decode with
plain pydicom 3, no plugins. ``_SeriesEncoder`` encodes the shared header once per series, which
halved write time; its output is byte-identical to ``dcmwrite`` (tested).

Other public helpers: ``render_scan(plan) -> np.ndarray`` (stored values, positions x phases x rows
x cols, base first), ``stored_slices(plan)`` (the end-diastolic slices as ingestion stores them,
without DICOM: for experiments and tests), ``write_scan(plan, scan_dir) -> (files, bytes)`` and
``domain.SYNTHETIC_MODEL_NAME`` (the ManufacturerModelName that provenance recognises).
``workers > 1`` uses a "spawn" multiprocessing pool (safe under Dagster's threads): scripts that
call ``generate_cohort`` need the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import csv
import multiprocessing
import re
import shutil
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from cmr_assets.domain import CLASS_NAMES, SYNTHETIC_MODEL_NAME
from cmr_assets.ingest.pixels import stored_images
from cmr_assets.synthetic.phantom import (
    ARTEFACT_KINDS,
    Acquisition,
    Anatomy,
    PlaneGrid,
    acquire,
    apply_artefact,
    bias_field,
    coil_shading,
    deform,
    render_position,
    sample_acquisition,
    sample_anatomy,
    scan_textures,
)

IDENTIFIER_MARKER = "ZZPHI"
MARKED_IDENTIFIER_TAGS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientAddress", "InstitutionName", "InstitutionAddress",
    "AccessionNumber", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "StudyDescription", "StudyID", "PatientComments", "AdditionalPatientHistory", "ImageComments",
)
IDENTIFIER_TAGS: tuple[str, ...] = MARKED_IDENTIFIER_TAGS + (
    "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
)
TRUTH_COLUMNS: tuple[str, ...] = (
    "series_uid", "scan_index", "slice_from_base", "position01", "true_class", "artefact", "artefact_kind",
)
APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
SLICE_SPACING_MM = 10.0
SLICE_THICKNESS_MM = 8.0
MIN_POSITIONS, MAX_POSITIONS = 10, 14
ARTEFACT_RATE = 0.06
MATRIX_SIZES = (160, 176, 192, 208, 224, 256)
MATRIX_WEIGHTS = (0.40, 0.25, 0.20, 0.08, 0.04, 0.03)
TRANSFER_SYNTAXES = (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless)
TRANSFER_SYNTAX_WEIGHTS = (0.82, 0.08, 0.10)
DEFLATE_LEVEL = 1  # 3x faster than zlib's default, ~2% larger
_INSTANCE_TAGS = frozenset(Tag(keyword) for keyword in (
    "SOPInstanceUID", "AcquisitionTime", "ContentTime", "TriggerTime", "InstanceNumber", "ImagePositionPatient",
    "SliceLocation", "WindowCenter", "WindowWidth", "PixelData"))
_UID_NAMESPACE = "cmr_assets.synthetic.v1"
_SCAN_DIR = re.compile(r"scan_\d{4}")

_FIRST = ("Jane", "John", "Maria", "Ahmed", "Wei", "Olga", "Kwame", "Priya", "Lars", "Aiko", "Diego", "Fatima")
_LAST = ("Doe", "Smith", "Garcia", "Khan", "Chen", "Ivanova", "Mensah", "Patel", "Nilsson", "Tanaka", "Rossi")
_CITIES = ("Springfield", "Riverton", "Lakeside", "Hillcrest", "Fairview")
_REASONS = ("chest pain", "dyspnoea on exertion", "suspected cardiomyopathy", "follow-up after MI",
            "palpitations", "family history of HCM")


@dataclass(frozen=True)
class CohortSummary:
    """What `generate_cohort` wrote, and how long it took."""

    n_scans: int
    n_files: int
    n_slices: int
    total_bytes: int
    seconds: float


@dataclass(frozen=True)
class ScanPlan:
    """Everything about one synthetic scan except its pixels (arrays are base first)."""

    seed: int
    index: int
    n_phases: int
    levels_mm: np.ndarray  # slice centre level along the LV axis, 0 = base plane
    position01: np.ndarray
    true_classes: tuple[str, ...]
    artefact_kinds: tuple[str, ...]  # "" where the slice has no artefact
    apex_direction: np.ndarray  # unit, LPS
    row_direction: np.ndarray  # ImageOrientationPatient[:3]
    col_direction: np.ndarray  # ImageOrientationPatient[3:]
    heart_x: np.ndarray  # heart-frame unit vectors (x toward the RV), LPS
    heart_y: np.ndarray
    base_centre: np.ndarray  # LV axis at the base plane, LPS mm
    fov_offset: np.ndarray  # image centre minus LV axis, LPS mm (in plane)
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    base_first_in_instances: bool
    slice_location_sign: float
    trigger_times_ms: tuple[float, ...]
    contractions: tuple[float, ...]
    rescale_slope: float
    rescale_intercept: float
    signed_pixels: bool
    transfer_syntax: UID
    file_order: np.ndarray  # file name number of each instance (0-based instance order)
    anatomy: Anatomy
    acquisition: Acquisition
    identifiers: dict[str, str]

    @property
    def n_positions(self) -> int:
        return len(self.levels_mm)

    @property
    def series_uid(self) -> str:
        return self.uid("series")

    def uid(self, *parts: object) -> str:
        """Deterministic UID from the seed, the scan index and a role (study, series, sop ...)."""
        return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, str(self.seed), str(self.index),
                                              *map(str, parts)]))

    def slice_centre(self, slice_from_base: int) -> np.ndarray:
        return self.base_centre + self.levels_mm[slice_from_base] * self.apex_direction

    def image_position(self, slice_from_base: int) -> np.ndarray:
        """ImagePositionPatient: centre of the top-left pixel."""
        half_cols = (self.cols - 1) / 2 * self.pixel_spacing[1]
        half_rows = (self.rows - 1) / 2 * self.pixel_spacing[0]
        return (self.slice_centre(slice_from_base) + self.fov_offset
                - half_cols * self.row_direction - half_rows * self.col_direction)

    def plane_grid(self) -> PlaneGrid:
        """Heart-frame millimetre coordinates of every pixel (same for all planes of the stack)."""
        c = (np.arange(self.cols, dtype=np.float32) - (self.cols - 1) / 2) * self.pixel_spacing[1]
        r = (np.arange(self.rows, dtype=np.float32) - (self.rows - 1) / 2) * self.pixel_spacing[0]
        project = lambda axis: (  # noqa: E731
            float(self.fov_offset @ axis) + c[None, :] * float(self.row_direction @ axis)
            + r[:, None] * float(self.col_direction @ axis)
        ).astype(np.float32)
        in_plane = lambda d: _unit(np.array([d @ self.heart_x, d @ self.heart_y]))  # noqa: E731
        return PlaneGrid(
            x=project(self.heart_x), y=project(self.heart_y),
            pixel_mm=float(np.mean(self.pixel_spacing)),
            anterior=tuple(in_plane(np.array([0.0, -1.0, 0.0]))),
            right=tuple(in_plane(np.array([-1.0, 0.0, 0.0]))),
            inferior=tuple(in_plane(np.array([0.0, 0.0, -1.0]))),
        )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _in_plane(v: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Unit projection of `v` on the plane orthogonal to `normal`."""
    return _unit(v - (v @ normal) * normal)


def _tilted(direction: np.ndarray, max_degrees: float, rng: np.random.Generator) -> np.ndarray:
    """`direction` tilted by up to `max_degrees` toward a random perpendicular (uniform on the cap)."""
    angle = np.deg2rad(max_degrees) * np.sqrt(rng.random())
    perpendicular = _in_plane(rng.standard_normal(3), direction)
    return _unit(np.cos(angle) * direction + np.sin(angle) * perpendicular)


def _contraction(phase_fraction: float) -> float:
    """LV contraction (0 at end-diastole, 1 at end-systole) at a fraction of the R-R interval."""
    if phase_fraction <= 0.35:
        return float(np.sin(np.pi / 2 * phase_fraction / 0.35))
    return float(max(0.0, 1.0 - (phase_fraction - 0.35) / 0.4))


def _identifiers(index: int, rng: np.random.Generator) -> dict[str, str]:
    """Realistic but fake identifiers; every text value carries `IDENTIFIER_MARKER`."""
    m = IDENTIFIER_MARKER
    first, last = _FIRST[rng.integers(len(_FIRST))], _LAST[rng.integers(len(_LAST))]
    doctor = _LAST[rng.integers(len(_LAST))]
    study_day = np.datetime64("2012-01-01") + int(rng.integers(0, 12 * 365))
    birth_day = study_day - int(rng.integers(20 * 365, 85 * 365))
    city = _CITIES[rng.integers(len(_CITIES))]
    study_date = str(study_day).replace("-", "")
    return {
        "PatientName": f"{m}^{last}^{first}-{index:04d}",
        "PatientID": f"{m}{int(rng.integers(10**6, 10**7))}",
        "PatientBirthDate": str(birth_day).replace("-", ""),
        "PatientAddress": f"{m} {int(rng.integers(1, 200))} Elm Street, {city}",
        "InstitutionName": f"{m} {city} General Hospital",
        "InstitutionAddress": f"{m} 1 Hospital Road, {city}",
        "StudyDate": study_date, "SeriesDate": study_date, "AcquisitionDate": study_date, "ContentDate": study_date,
        "AccessionNumber": f"{m}{int(rng.integers(10**8, 10**9))}",
        "ReferringPhysicianName": f"{m}^{doctor}^Alex",
        "PerformingPhysicianName": f"{m}^Okafor^Sam",
        "OperatorsName": f"{m}^Radiographer^Lee",
        "StudyDescription": f"{m} CMR {first} {last} {_REASONS[rng.integers(len(_REASONS))]}",
        "StudyID": f"{m}{index:04d}",
        "PatientComments": f"{m} {first} {last}, born {birth_day}, call {int(rng.integers(10**9, 10**10))}",
        "AdditionalPatientHistory": f"{m} referred by Dr {doctor} for {_REASONS[rng.integers(len(_REASONS))]}",
        "ImageComments": f"{m} {last} {first} scanned {study_day}",
    }


def plan_scan(seed: int, index: int, n_phases: int = 3) -> ScanPlan:
    """Draw one scan's geometry, truth, anatomy and header values from (seed, index) alone."""
    if n_phases < 1:
        raise ValueError(f"n_phases must be >= 1, got {n_phases}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    anatomy = sample_anatomy(rng)
    acquisition = sample_acquisition(rng)
    length = anatomy.lv_length_mm
    first_level = -rng.uniform(2.0, 24.0)
    overshoot = rng.uniform(8.0, 30.0)
    n_positions = int(np.clip(np.floor((length + overshoot - first_level) / SLICE_SPACING_MM) + 1,
                              MIN_POSITIONS, MAX_POSITIONS))
    levels = first_level + SLICE_SPACING_MM * np.arange(n_positions)
    position01 = levels / length
    true_classes = tuple(CLASS_NAMES[0] if p < 0 else CLASS_NAMES[2] if p > 1 else CLASS_NAMES[1] for p in position01)
    artefact_kinds = tuple(str(rng.choice(ARTEFACT_KINDS)) if rng.random() < ARTEFACT_RATE else ""
                           for _ in range(n_positions))

    apex = _tilted(APEX_DIRECTION_LPS, 20.0, rng)
    heart_x = _in_plane(np.array([-1.0, -1.0, 0.0]), apex)  # toward the RV: patient right-anterior
    heart_y = np.cross(apex, heart_x)
    down = -_in_plane(np.array([0.0, -1.0, 0.0]), apex)  # image rows run anterior -> posterior
    across = np.cross(apex, down)
    across = across if across[0] > 0 else -across  # patient left on the image right
    theta = np.deg2rad(rng.uniform(-35.0, 35.0))
    row_direction = np.cos(theta) * across + np.sin(theta) * down
    col_direction = -np.sin(theta) * across + np.cos(theta) * down

    size = int(rng.choice(MATRIX_SIZES, p=MATRIX_WEIGHTS))
    rows = size if rng.random() < 0.8 else int(round(size * rng.uniform(0.75, 0.9) / 16) * 16)
    spacing = round(float(rng.uniform(260.0, 420.0)) / size, 4)
    offset_2d = rng.uniform(-40.0, 40.0, size=2)
    rr_ms = rng.uniform(700.0, 1100.0)
    trigger_times = tuple(round(rr_ms * p / n_phases, 2) for p in range(n_phases))
    contractions = tuple(_contraction(p / n_phases) for p in range(n_phases))
    slope = 1.0 if rng.random() < 0.6 else round(float(rng.uniform(0.5, 3.0)), 4)
    intercept = 0.0 if rng.random() < 0.8 else -float(rng.integers(1, 50))
    n_files = n_positions * n_phases
    return ScanPlan(
        seed=seed, index=index, n_phases=n_phases, levels_mm=levels, position01=position01,
        true_classes=true_classes, artefact_kinds=artefact_kinds, apex_direction=apex,
        row_direction=row_direction, col_direction=col_direction, heart_x=heart_x, heart_y=heart_y,
        base_centre=rng.normal([10.0, 0.0, 20.0], 20.0),
        fov_offset=offset_2d[0] * row_direction + offset_2d[1] * col_direction,
        rows=rows, cols=size, pixel_spacing=(spacing, spacing),
        base_first_in_instances=bool(rng.random() < 0.5),
        slice_location_sign=float(rng.choice([-1.0, 1.0])),
        trigger_times_ms=trigger_times, contractions=contractions,
        rescale_slope=slope, rescale_intercept=intercept, signed_pixels=bool(rng.random() < 0.3),
        transfer_syntax=UID(rng.choice(TRANSFER_SYNTAXES, p=TRANSFER_SYNTAX_WEIGHTS)),
        file_order=rng.permutation(n_files),
        anatomy=anatomy, acquisition=acquisition, identifiers=_identifiers(index, rng),
    )


def truth_rows(plan: ScanPlan) -> list[dict[str, object]]:
    """One truth row per slice position, base first (columns `TRUTH_COLUMNS`)."""
    return [
        {"series_uid": plan.series_uid, "scan_index": plan.index, "slice_from_base": k,
         "position01": round(float(plan.position01[k]), 4), "true_class": plan.true_classes[k],
         "artefact": bool(plan.artefact_kinds[k]), "artefact_kind": plan.artefact_kinds[k]}
        for k in range(plan.n_positions)
    ]


def render_scan(plan: ScanPlan) -> np.ndarray:
    """Stored pixel values, shape (n_positions base first, n_phases, rows, cols)."""
    rng = np.random.default_rng(np.random.SeedSequence([plan.seed, plan.index, 1]))
    grid = deform(plan.plane_grid(), plan.acquisition.deformation_mm, rng)
    shading = coil_shading(grid, plan.acquisition) * bias_field((plan.rows, plan.cols), plan.acquisition, rng)
    texture = scan_textures((plan.rows, plan.cols), rng)
    dtype = np.int16 if plan.signed_pixels else np.uint16
    limit = np.iinfo(dtype).max
    out = np.empty((plan.n_positions, plan.n_phases, plan.rows, plan.cols), dtype=dtype)
    for k, level in enumerate(plan.levels_mm):
        shifted_texture = np.roll(texture, (7 * k, 11 * k), axis=(0, 1))
        for p, clean in enumerate(render_position(plan.anatomy, grid, float(level), list(plan.contractions),
                                                  plan.acquisition.partial_volume_mm)):
            if plan.artefact_kinds[k]:
                clean = apply_artefact(clean, plan.artefact_kinds[k], grid, rng)
            value = acquire(clean, plan.acquisition, shading, shifted_texture, rng)
            stored = np.rint((value - plan.rescale_intercept) / plan.rescale_slope)
            out[k, p] = np.clip(stored, 0, limit)
    return out


def stored_slices(plan: ScanPlan) -> np.ndarray:
    """End-diastolic slices as ingestion stores them (uint8, one window per scan, 128 px field of view),
    rendered without writing DICOM: for experiments, tests and benchmarks that need images fast."""
    end_diastole = render_scan(replace(plan, n_phases=1, trigger_times_ms=(0.0,), contractions=(0.0,)))[:, 0]
    return stored_images(end_diastole.astype(np.float32) * plan.rescale_slope + plan.rescale_intercept,
                         plan.pixel_spacing)[1]


def _series_dataset(plan: ScanPlan) -> Dataset:
    """The header shared by every file of a series: MR Image Storage, identifiers, geometry basics."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyTime, ds.SeriesTime = "101500", "102300"
    ds.Modality = "MR"
    ds.Manufacturer = "SYNTHETIC"
    ds.ManufacturerModelName = SYNTHETIC_MODEL_NAME
    ds.SeriesDescription = "SA CINE"
    ds.ProtocolName = "SA CINE SSFP"
    for keyword, value in plan.identifiers.items():
        setattr(ds, keyword, value)
    ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SS", "2D"
    ds.SliceThickness = SLICE_THICKNESS_MM
    ds.SpacingBetweenSlices = SLICE_SPACING_MM
    ds.RepetitionTime, ds.EchoTime, ds.FlipAngle, ds.MagneticFieldStrength = 3.2, 1.4, 55, 1.5
    ds.CardiacNumberOfImages = plan.n_phases
    ds.StudyInstanceUID = plan.uid("study")
    ds.SeriesInstanceUID = plan.series_uid
    ds.FrameOfReferenceUID = plan.uid("frame-of-reference")
    ds.SeriesNumber = 5 + plan.index % 7
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [round(float(v), 6) for v in (*plan.row_direction, *plan.col_direction)]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = plan.rows, plan.cols
    ds.PixelSpacing = list(plan.pixel_spacing)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(plan.signed_pixels)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = plan.rescale_intercept, plan.rescale_slope, "US"
    return ds


def _set_instance(ds: Dataset, plan: ScanPlan, slice_from_base: int, phase: int, instance: int,
                  pixels: np.ndarray) -> None:
    """Fill the per-file tags (UID, position, timing, window, pixels) of a series header in place."""
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(plan.uid("sop", instance))
    ds.AcquisitionTime = ds.ContentTime = f"1024{slice_from_base:02d}"
    ds.TriggerTime = plan.trigger_times_ms[phase]
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [round(float(v), 4) for v in plan.image_position(slice_from_base)]
    centre = plan.slice_centre(slice_from_base) + plan.fov_offset
    normal = np.cross(plan.row_direction, plan.col_direction)
    ds.SliceLocation = round(plan.slice_location_sign * float(centre @ normal), 4)
    low, high = np.percentile(pixels[::4, ::4], [1, 99.5]) * plan.rescale_slope + plan.rescale_intercept
    ds.WindowCenter, ds.WindowWidth = round(float(low + high) / 2, 1), round(float(max(high - low, 1.0)), 1)
    if plan.transfer_syntax == RLELossless:
        ds.compress(RLELossless, pixels)
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = plan.transfer_syntax


class _SeriesEncoder:
    """Part 10 writer that encodes the series header once and only the instance tags per file.

    Why: pydicom spends ~70 us per element; re-encoding ~75 identical elements for each of ~11,000
    files dominated generation time. Static elements are pre-encoded in runs between the instance
    tags, so the byte stream stays in ascending tag order exactly as `dcmwrite` would write it.
    """

    def __init__(self, header: Dataset) -> None:
        self.runs: list[bytes] = []
        run = _explicit_buffer()
        boundaries = sorted(_INSTANCE_TAGS)
        position = 0
        for element in header:
            if element.tag in _INSTANCE_TAGS:
                raise ValueError(f"instance tag {element.keyword} must not be in the series header")
            while position < len(boundaries) and element.tag > boundaries[position]:
                self.runs.append(run.getvalue())
                run = _explicit_buffer()
                position += 1
            write_data_element(run, element)
        self.runs.append(run.getvalue())
        self.runs.extend([b""] * (len(boundaries) + 1 - len(self.runs)))

    def write(self, ds: Dataset, path: Path) -> None:
        """Write `ds` (the header plus its instance tags) to `path` in its file meta's transfer syntax."""
        body = _explicit_buffer()
        for run, tag in zip(self.runs, sorted(_INSTANCE_TAGS), strict=False):
            body.write(run)
            write_data_element(body, ds[tag])
        body.write(self.runs[-1])
        head = _explicit_buffer()
        head.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(head, ds.file_meta, enforce_standard=True)
        encoded = body.getvalue()
        if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
            compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
            encoded = compressor.compress(encoded) + compressor.flush()
            encoded += b"\0" * (len(encoded) % 2)
        path.write_bytes(head.getvalue() + encoded)


def _explicit_buffer() -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    return buffer


def write_scan(plan: ScanPlan, scan_dir: Path) -> tuple[int, int]:
    """Render and write one scan's files into a fresh `scan_dir`; returns (files, bytes)."""
    if scan_dir.exists():
        shutil.rmtree(scan_dir)
    scan_dir.mkdir(parents=True)
    pixels = render_scan(plan)
    positions = range(plan.n_positions) if plan.base_first_in_instances else reversed(range(plan.n_positions))
    ds = _series_dataset(plan)
    encoder = _SeriesEncoder(ds)
    total = 0
    for order, k in enumerate(positions):
        for phase in range(plan.n_phases):
            instance = order * plan.n_phases + phase + 1
            path = scan_dir / f"IM_{plan.file_order[instance - 1]:04d}.dcm"
            _set_instance(ds, plan, k, phase, instance, pixels[k, phase])
            encoder.write(ds, path)
            total += path.stat().st_size
    return plan.n_positions * plan.n_phases, total


def _generate_one(args: tuple[Path, int, int, int]) -> tuple[list[dict[str, object]], int, int]:
    """Pool worker: plan, render and write scan `index`; return its truth rows and counts."""
    out_dir, seed, index, n_phases = args
    plan = plan_scan(seed, index, n_phases)
    n_files, n_bytes = write_scan(plan, out_dir / f"scan_{index:04d}")
    return truth_rows(plan), n_files, n_bytes


def generate_cohort(out_dir: Path, truth_csv: Path, n_scans: int = 300, seed: int = 0, n_phases: int = 3,
                    workers: int = 2, progress: Callable[[int, int], None] | None = None) -> CohortSummary:
    """Write the synthetic cohort and its truth table; `progress(done, total)` after each scan."""
    if n_scans < 1:
        raise ValueError(f"n_scans must be >= 1, got {n_scans}")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        if stale.is_dir() and _SCAN_DIR.fullmatch(stale.name) and int(stale.name[5:]) >= n_scans:
            shutil.rmtree(stale)
    jobs = [(out_dir, seed, k, n_phases) for k in range(n_scans)]
    rows: list[dict[str, object]] = []
    n_done = n_files = n_bytes = 0

    def collect(result: tuple[list[dict[str, object]], int, int]) -> None:
        nonlocal n_done, n_files, n_bytes
        rows.extend(result[0])
        n_done += 1
        n_files += result[1]
        n_bytes += result[2]
        if progress is not None:
            progress(n_done, n_scans)

    if workers > 1:
        # An executor's shutdown stops its workers by message, never by SIGTERM (which a parent started
        # in the background may ignore, and its children with it: a Pool's terminate() then hangs).
        with ProcessPoolExecutor(min(workers, n_scans), mp_context=multiprocessing.get_context("spawn")) as pool:
            for result in pool.map(_generate_one, jobs):
                collect(result)
    else:
        for job in jobs:
            collect(_generate_one(job))
    truth_csv = Path(truth_csv)
    truth_csv.parent.mkdir(parents=True, exist_ok=True)
    with truth_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TRUTH_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return CohortSummary(n_scans=n_scans, n_files=n_files, n_slices=len(rows), total_bytes=n_bytes,
                         seconds=time.perf_counter() - start)
