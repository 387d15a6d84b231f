"""Find DICOM files by content, group them into short-axis cine stacks, order them base -> apex,
pick the end-diastolic phase and decode + normalise its pixels.

Why this shape: a PACS export is a folder of arbitrary names, nesting and junk. Everything here
works from file content and DICOM geometry, never from names or SliceLocation (whose sign differs
between scanners). Header reading uses `stop_before_pixels=True` and runs in a process pool; only
the chosen phase of a scan is ever decoded. Every file that cannot be used becomes a `Rejection`
(path relative to the source folder + reason) instead of stopping the run.

Rules (documented choices):
- Discovery: a file is DICOM if it has the 128-byte preamble + b"DICM"; a preamble-less file is
  accepted only if it starts with a group 0x0002/0x0008 tag and then parses with `force=True`.
- Only whitelisted technical header fields are kept (`DicomHeader`); nothing identifying is read
  into memory beyond pydicom's own dataset, and pydicom value validation is switched off while
  reading so its warnings cannot echo tag values into logs.
- A series is kept if: Modality MR; files with complete geometry (ImagePositionPatient,
  ImageOrientationPatient, PixelSpacing; others are rejected one by one); one matrix size; all
  slice normals within `PARALLEL_TOLERANCE_DEG`; the stack normal within `SHORT_AXIS_MAX_ANGLE_DEG`
  of the LV long-axis direction (1, -1, -1)/sqrt(3) (LPS; canonical axial/coronal/sagittal stacks
  lie at 54.7 deg and are rejected); at least `MIN_POSITIONS` slice positions.
- Order: ImagePositionPatient projected on the unit normal (row x column cosines) flipped to have a
  positive dot product with the apex direction; ascending projection = base first. Files are
  grouped into positions by gaps larger than `POSITION_TOLERANCE_FRACTION` x the nominal slice
  spacing (SpacingBetweenSlices, else SliceThickness, else `DEFAULT_POSITION_TOLERANCE_MM`).
- Phase: end-diastole = smallest TriggerTime at each position (`phase_rule='min_trigger_time'`);
  if any file of the series lacks TriggerTime, the smallest InstanceNumber at each position
  (`'min_instance_number'`, ties and missing numbers broken by relative path).
- Duplicate SOPInstanceUIDs: the first file (by relative path) is kept, later copies are rejected.
- Pixels: pydicom decoders (native, RLE, deflate; JPEG/JPEG 2000 via Pillow, pylibjpeg/gdcm when
  installed). A transfer syntax without an available decoder is rejected at header time, naming it.
  RescaleSlope/Intercept applied; MONOCHROME1 inverted; the series' chosen-phase pixels are mapped
  from their 1st..99.5th percentiles to 0..255 uint8 (one window per scan, so intensity relations
  between slices survive). Multi-frame and colour files are rejected (not cine short-axis input).
- 128 x 128 array: the full field of view is scaled (Lanczos, i.e. antialiased) so its longer
  physical side (rows x row spacing, cols x column spacing) fills 128 px, centred on black padding,
  so anatomy keeps its aspect ratio.

Public API:
- `Rejection(path, kind, detail)`, `.reason`; reason kinds are the `REJECT_*` constants.
- `DicomHeader`: whitelisted header of one file.
- `discover_files(source_dir) -> list[Path]`
- `read_header(source_dir, path) -> DicomHeader | Rejection`
- `worker_pool(workers)`: context manager giving a spawn process pool (or None for in-process)
- `read_headers(source_dir, files, pool=None, log=None) -> (headers, rejections)`
- `parallel_map(function, argument_tuples, pool) -> Iterator` (results in order)
- `drop_duplicate_instances(headers) -> (headers, rejections)`
- `plan_series(headers) -> (SeriesPlan | None, rejections)` for the files of one SeriesInstanceUID
- `plan_all_series(headers) -> (plans, rejections)`: duplicates + grouping + planning
- `render_series(source_dir, plan) -> RenderedSeries` (decode, normalise, resize; raises
  `SeriesDecodeError`)
- `read_series(series_dir, workers=1) -> OrderedSeries`: one series folder, base first, with
  images normalised exactly as ingestion stores them and all source files per position.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset
from pydicom.pixels import apply_rescale, get_decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

logger = logging.getLogger(__name__)

APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
SHORT_AXIS_MAX_ANGLE_DEG = 50.0
PARALLEL_TOLERANCE_DEG = 1.0
MIN_POSITIONS = 3
POSITION_TOLERANCE_FRACTION = 0.3
DEFAULT_POSITION_TOLERANCE_MM = 1.0
ARRAY_SIZE = 128
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.5
HEADER_CHUNK = 64
PHASE_RULE_TRIGGER = "min_trigger_time"
PHASE_RULE_INSTANCE = "min_instance_number"

REJECT_EMPTY_FOLDER = "empty folder"
REJECT_UNREADABLE = "unreadable file"
REJECT_NOT_DICOM = "not a DICOM file"
REJECT_BAD_HEADER = "unreadable DICOM header"
REJECT_NOT_IMAGE = "not an image instance"
REJECT_NO_PIXELS = "no pixel data"
REJECT_TRUNCATED = "truncated file"
REJECT_UNSUPPORTED_TS = "unsupported transfer syntax"
REJECT_UNSUPPORTED_IMAGE = "unsupported image layout"
REJECT_DUPLICATE = "duplicate SOPInstanceUID"
REJECT_MISSING_GEOMETRY = "missing geometry tags"
REJECT_DECODE_FAILED = "pixel decoding failed"
REJECT_SERIES_NOT_MR = "series rejected: not MR"
REJECT_SERIES_MATRIX = "series rejected: inconsistent matrix size"
REJECT_SERIES_NOT_PARALLEL = "series rejected: slices not parallel"
REJECT_SERIES_NOT_SHORT_AXIS = "series rejected: not a short-axis stack"
REJECT_SERIES_TOO_FEW_POSITIONS = "series rejected: too few slice positions"
REJECT_SERIES_DECODE = "series rejected: a chosen-phase file failed to decode"

_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class Rejection:
    """A file that could not be used: `path` relative to the source folder, and why."""

    path: str
    kind: str
    detail: str = ""

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


@dataclass(frozen=True)
class DicomHeader:
    """The whitelisted, non-identifying header fields of one DICOM file."""

    path: str
    series_uid: str
    sop_uid: str
    modality: str
    transfer_syntax: str
    rows: int
    cols: int
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    trigger_time: float | None
    instance_number: int | None
    manufacturer_model: str | None

    @property
    def missing_geometry(self) -> list[str]:
        names = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
        values = (self.image_position, self.image_orientation, self.pixel_spacing)
        return [name for name, value in zip(names, values, strict=True) if value is None]


@dataclass(frozen=True)
class SlicePosition:
    """One slice position of a stack: every phase's file and the chosen (end-diastolic) one."""

    position_mm: float
    files: tuple[DicomHeader, ...]
    chosen: DicomHeader


@dataclass(frozen=True)
class SeriesPlan:
    """A validated short-axis stack, positions base first; no pixels read yet."""

    series_uid: str
    positions: tuple[SlicePosition, ...]
    phase_rule: str
    spacing_mm: float
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None
    manufacturer_model: str | None

    @property
    def n_files(self) -> int:
        return sum(len(position.files) for position in self.positions)


@dataclass(frozen=True)
class RenderedSeries:
    """Chosen-phase pixels of a plan: native-size uint8 images and the (n, 128, 128) uint8 array."""

    plan: SeriesPlan
    images: tuple[np.ndarray, ...]
    array: np.ndarray


class SeriesDecodeError(Exception):
    """A chosen-phase file of a planned series could not be decoded."""

    def __init__(self, rejection: Rejection):
        super().__init__(f"{rejection.path}: {rejection.reason}")
        self.rejection = rejection


@dataclass(frozen=True)
class OrderedSlice:
    """One position of `read_series`: images as ingestion stores them, and all its source files."""

    slice_from_base: int
    position_mm: float
    trigger_time_ms: float | None
    image: np.ndarray
    image_128: np.ndarray
    files: tuple[str, ...]


@dataclass(frozen=True)
class OrderedSeries:
    """A single series folder read base -> apex (see `read_series`)."""

    series_dir: Path
    phase_rule: str
    spacing_mm: float
    slices: tuple[OrderedSlice, ...]
    rejected: tuple[Rejection, ...]


# ---------------------------------------------------------------- discovery and headers


def discover_files(source_dir: Path) -> list[Path]:
    """All regular files (and links to files) under `source_dir`, sorted; names do not matter."""
    found: list[Path] = []
    for folder, dirnames, filenames in os.walk(source_dir):
        dirnames.sort()
        found.extend(Path(folder) / name for name in sorted(filenames))
    return found


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Turn off pydicom value validation: its warnings quote tag values (possibly identifiers)."""
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = previous


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A preamble-less DICOM stream starts with a group 0x0002 or 0x0008 tag (either endianness)."""
    return head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def _optional_floats(ds: pydicom.Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    if len(values) != count:
        return None
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return numbers if all(np.isfinite(numbers)) else None


def _optional_float(ds: pydicom.Dataset, keyword: str) -> float | None:
    numbers = _optional_floats(ds, keyword, 1)
    return numbers[0] if numbers else None


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    meta_ts = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
    if meta_ts:
        return UID(str(meta_ts))
    implicit, _little = ds.original_encoding
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def _decoder_available(transfer_syntax: UID) -> bool:
    try:
        return get_decoder(transfer_syntax).is_available
    except (NotImplementedError, ValueError):
        return False


def _pixel_data_problem(handle: BinaryIO, transfer_syntax: UID, file_size: int) -> Rejection | None:
    """Check, right where `stop_before_pixels` stopped, that a pixel element exists and fits the file."""
    if transfer_syntax.is_deflated:
        return None  # the dataset was inflated in memory; the decoder checks the pixel length
    start = handle.tell()
    raw = handle.read(12)
    endian = "<" if transfer_syntax.is_little_endian else ">"
    if len(raw) < 8 or struct.unpack(endian + "HH", raw[:4]) not in _PIXEL_TAGS:
        return Rejection("", REJECT_NO_PIXELS)
    if transfer_syntax.is_implicit_VR:
        header_length, length = 8, struct.unpack(endian + "I", raw[4:8])[0]
    elif raw[4:6] in _LONG_LENGTH_VRS:
        if len(raw) < 12:
            return Rejection("", REJECT_TRUNCATED, "file ends inside the pixel data element header")
        header_length, length = 12, struct.unpack(endian + "I", raw[8:12])[0]
    else:
        header_length, length = 8, struct.unpack(endian + "H", raw[6:8])[0]
    if length == _UNDEFINED_LENGTH:
        return None  # encapsulated (compressed) frames; the decoder validates them
    present = file_size - start - header_length
    if present < length:
        return Rejection("", REJECT_TRUNCATED, f"pixel data needs {length} bytes, {present} present")
    return None


def _header_from_dataset(relative: str, ds: pydicom.Dataset, transfer_syntax: UID) -> DicomHeader | Rejection:
    series_uid, sop_uid = ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID")
    if not series_uid or not sop_uid:
        return Rejection(relative, REJECT_NOT_IMAGE, "no SeriesInstanceUID/SOPInstanceUID (e.g. DICOMDIR)")
    if "Rows" not in ds or "Columns" not in ds:
        return Rejection(relative, REJECT_NO_PIXELS, "no Rows/Columns")
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) > 1:
        return Rejection(relative, REJECT_UNSUPPORTED_IMAGE, f"multi-frame file ({int(frames)} frames)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return Rejection(relative, REJECT_UNSUPPORTED_IMAGE, "not a greyscale image")
    instance = ds.get("InstanceNumber")
    model = ds.get("ManufacturerModelName")
    return DicomHeader(
        path=relative,
        series_uid=str(series_uid),
        sop_uid=str(sop_uid),
        modality=str(ds.get("Modality", "") or ""),
        transfer_syntax=str(transfer_syntax),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        image_position=_optional_floats(ds, "ImagePositionPatient", 3),
        image_orientation=_optional_floats(ds, "ImageOrientationPatient", 6),
        pixel_spacing=_optional_floats(ds, "PixelSpacing", 2),
        slice_thickness=_optional_float(ds, "SliceThickness"),
        spacing_between_slices=_optional_float(ds, "SpacingBetweenSlices"),
        trigger_time=_optional_float(ds, "TriggerTime"),
        instance_number=int(instance) if instance not in (None, "") else None,
        manufacturer_model=str(model) if model else None,
    )


DEFLATED_HEADER_BYTES = 16 * 1024
_PIXEL_DATA_TAG_LE = struct.pack("<HH", 0x7FE0, 0x0010)


def _read_deflated_header(handle: BinaryIO) -> pydicom.Dataset | None:
    """Header of a deflated file by inflating only its first bytes (pydicom inflates the whole file).

    Returns None (the caller reads the whole file) when the header does not end within
    `DEFLATED_HEADER_BYTES` of inflated data, i.e. the pixel data tag is not in sight.
    """
    handle.seek(128 + 4)
    meta = _read_file_meta_info(handle)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(handle.read(), DEFLATED_HEADER_BYTES)
    end = head.find(_PIXEL_DATA_TAG_LE)
    if end < 0:
        return None
    ds = read_dataset(DicomBytesIO(head[:end + 12]), is_implicit_VR=False, is_little_endian=True,
                      stop_when=_at_pixel_data)
    ds.file_meta = meta
    return pydicom.FileDataset("", ds, preamble=b"\0" * 128, file_meta=meta, is_implicit_VR=False,
                               is_little_endian=True)


def read_header(source_dir: Path, path: Path) -> DicomHeader | Rejection:
    """Read one file's header (no pixels) into a `DicomHeader`, or say why it is unusable."""
    relative = path.relative_to(source_dir).as_posix()
    try:
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            head = handle.read(132)
            has_preamble = len(head) == 132 and head[128:132] == b"DICM"
            if not has_preamble and not _looks_like_raw_dataset(head):
                return Rejection(relative, REJECT_NOT_DICOM, "no DICM marker")
            handle.seek(0)
            try:
                with _quiet_pydicom():
                    ds = _read_deflated_header(handle) if has_preamble else None
                    if ds is None:
                        handle.seek(0)
                        ds = pydicom.dcmread(handle, stop_before_pixels=True, force=not has_preamble)
                    transfer_syntax = _transfer_syntax(ds)
                    problem = _pixel_data_problem(handle, transfer_syntax, file_size)
                    header = _header_from_dataset(relative, ds, transfer_syntax)
            except Exception as exc:  # pydicom raises many types on malformed input
                kind = REJECT_BAD_HEADER if has_preamble else REJECT_NOT_DICOM
                return Rejection(relative, kind, type(exc).__name__)
    except OSError as exc:
        return Rejection(relative, REJECT_UNREADABLE, exc.strerror or type(exc).__name__)
    if isinstance(header, Rejection):
        if not has_preamble and header.kind == REJECT_NOT_IMAGE:  # force=True parsed noise
            return Rejection(relative, REJECT_NOT_DICOM, "no DICM marker and no image instance UIDs")
        return header
    if problem is not None:
        return Rejection(relative, problem.kind, problem.detail)
    if not _decoder_available(transfer_syntax):
        return Rejection(relative, REJECT_UNSUPPORTED_TS,
                         f"{transfer_syntax.name} ({transfer_syntax}): no pixel decoder installed")
    return header


def _read_header_chunk(source_dir: Path, paths: list[Path]) -> list[DicomHeader | Rejection]:
    return [read_header(source_dir, path) for path in paths]


def read_headers(
    source_dir: Path,
    files: Sequence[Path],
    pool: Executor | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[DicomHeader], list[Rejection]]:
    """Read all headers in chunks (in `pool` if given, see `worker_pool`); logs counts and rates."""
    log = log or logger.info
    chunks = [list(files[i:i + HEADER_CHUNK]) for i in range(0, len(files), HEADER_CHUNK)]
    headers: list[DicomHeader] = []
    rejections: list[Rejection] = []
    started = time.perf_counter()
    done = 0
    for results in parallel_map(_read_header_chunk, [(source_dir, chunk) for chunk in chunks], pool):
        for result in results:
            (rejections if isinstance(result, Rejection) else headers).append(result)
        done += len(results)
        if done % (HEADER_CHUNK * 8) == 0 or done == len(files):
            rate = done / max(time.perf_counter() - started, 1e-9)
            log(f"headers: {done}/{len(files)} files read, {len(headers)} DICOM, "
                f"{len(rejections)} rejected ({rate:.0f} files/s)")
    return headers, rejections


@contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """A process pool of `workers` processes (None, i.e. this process, when `workers <= 1`).

    Spawned, not forked, so it is safe under threaded hosts such as Dagster; a script calling
    ingestion with `workers > 1` therefore needs the usual `if __name__ == "__main__":` guard.
    """
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        yield pool


def parallel_map(function: Callable, argument_tuples: list[tuple], pool: Executor | None) -> Iterator:
    """`function(*args)` for each tuple, results in order; in `pool` when given."""
    if pool is None or len(argument_tuples) <= 1:
        yield from (function(*args) for args in argument_tuples)
        return
    yield from pool.map(function, *zip(*argument_tuples, strict=True))


# ---------------------------------------------------------------- grouping, validation, ordering


def drop_duplicate_instances(headers: Sequence[DicomHeader]) -> tuple[list[DicomHeader], list[Rejection]]:
    """Keep the first file (by relative path) of each SOPInstanceUID; reject later copies."""
    first_path: dict[str, str] = {}
    kept: list[DicomHeader] = []
    rejections: list[Rejection] = []
    for header in sorted(headers, key=lambda h: h.path):
        if header.sop_uid in first_path:
            detail = f"same instance as {first_path[header.sop_uid]}"
            rejections.append(Rejection(header.path, REJECT_DUPLICATE, detail))
        else:
            first_path[header.sop_uid] = header.path
            kept.append(header)
    return kept, rejections


def _unit_normal(orientation: Sequence[float]) -> np.ndarray:
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    return normal / np.linalg.norm(normal)


def _reject_all(headers: Sequence[DicomHeader], kind: str, detail: str) -> list[Rejection]:
    return [Rejection(header.path, kind, detail) for header in headers]


def _group_positions(projections: np.ndarray, tolerance_mm: float) -> list[np.ndarray]:
    """Indices of files per position: sorted projections split where the gap exceeds the tolerance."""
    order = np.argsort(projections, kind="stable")
    breaks = np.flatnonzero(np.diff(projections[order]) > tolerance_mm) + 1
    return np.split(order, breaks)


def _phase_key(rule: str) -> Callable[[DicomHeader], tuple]:
    def by_instance(h: DicomHeader) -> tuple:
        return (h.instance_number is None, h.instance_number or 0, h.path)

    if rule == PHASE_RULE_TRIGGER:
        return lambda h: (h.trigger_time, *by_instance(h))
    return by_instance


def plan_series(headers: Sequence[DicomHeader]) -> tuple[SeriesPlan | None, list[Rejection]]:
    """Validate one SeriesInstanceUID's files and order them base -> apex; rejections say why."""
    modality = headers[0].modality
    if any(h.modality != "MR" for h in headers):
        return None, _reject_all(headers, REJECT_SERIES_NOT_MR, f"modality {modality or 'missing'}")
    rejections = [Rejection(h.path, REJECT_MISSING_GEOMETRY, ", ".join(h.missing_geometry))
                  for h in headers if h.missing_geometry]
    usable = [h for h in headers if not h.missing_geometry]
    if not usable:
        return None, rejections
    if len({(h.rows, h.cols) for h in usable}) > 1:
        return None, rejections + _reject_all(usable, REJECT_SERIES_MATRIX, "files differ in Rows/Columns")
    normals = np.stack([_unit_normal(h.image_orientation) for h in usable])
    reference = normals[0] if normals[0] @ APEX_DIRECTION_LPS >= 0 else -normals[0]
    worst_deg = float(np.degrees(np.arccos(np.clip(np.abs(normals @ reference).min(), -1.0, 1.0))))
    if worst_deg > PARALLEL_TOLERANCE_DEG:
        return None, rejections + _reject_all(
            usable, REJECT_SERIES_NOT_PARALLEL, f"slice normals differ by up to {worst_deg:.1f} deg")
    axis_deg = float(np.degrees(np.arccos(np.clip(reference @ APEX_DIRECTION_LPS, -1.0, 1.0))))
    if axis_deg > SHORT_AXIS_MAX_ANGLE_DEG:
        return None, rejections + _reject_all(
            usable, REJECT_SERIES_NOT_SHORT_AXIS,
            f"stack normal {axis_deg:.0f} deg from the LV long axis (limit {SHORT_AXIS_MAX_ANGLE_DEG:.0f})")
    projections = np.array([np.asarray(h.image_position) @ reference for h in usable])
    nominal = next((v for v in (_median([h.spacing_between_slices for h in usable]),
                                _median([h.slice_thickness for h in usable])) if v and v > 0), None)
    tolerance = POSITION_TOLERANCE_FRACTION * nominal if nominal else DEFAULT_POSITION_TOLERANCE_MM
    groups = _group_positions(projections, tolerance)
    if len(groups) < MIN_POSITIONS:
        return None, rejections + _reject_all(
            usable, REJECT_SERIES_TOO_FEW_POSITIONS,
            f"{len(groups)} slice position(s), a short-axis stack needs at least {MIN_POSITIONS}")
    rule = PHASE_RULE_TRIGGER if all(h.trigger_time is not None for h in usable) else PHASE_RULE_INSTANCE
    key = _phase_key(rule)
    centres = [float(projections[group].mean()) for group in groups]
    positions = []
    for group, centre in zip(groups, centres, strict=True):
        files = tuple(sorted((usable[i] for i in group), key=key))
        positions.append(SlicePosition(position_mm=centre - centres[0], files=files, chosen=files[0]))
    first = usable[0]
    plan = SeriesPlan(
        series_uid=first.series_uid,
        positions=tuple(positions),
        phase_rule=rule,
        spacing_mm=float(np.median(np.diff(centres))),
        rows=first.rows,
        cols=first.cols,
        pixel_spacing=first.pixel_spacing,
        slice_thickness=_median([h.slice_thickness for h in usable]),
        manufacturer_model=first.manufacturer_model,
    )
    return plan, rejections


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def plan_all_series(headers: Sequence[DicomHeader]) -> tuple[list[SeriesPlan], list[Rejection]]:
    """Drop duplicate instances, group by SeriesInstanceUID and plan each series (sorted by UID)."""
    kept, rejections = drop_duplicate_instances(headers)
    by_series: dict[str, list[DicomHeader]] = defaultdict(list)
    for header in kept:
        by_series[header.series_uid].append(header)
    plans: list[SeriesPlan] = []
    for series_uid in sorted(by_series):
        plan, series_rejections = plan_series(by_series[series_uid])
        rejections.extend(series_rejections)
        if plan is not None:
            plans.append(plan)
    return plans, rejections


# ---------------------------------------------------------------- pixels


def _decode(source_dir: Path, header: DicomHeader) -> np.ndarray:
    """Rescaled float pixels of one file, MONOCHROME1 inverted so brighter is always more signal."""
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(source_dir / header.path, force=True)
            if "TransferSyntaxUID" not in ds.file_meta:
                ds.file_meta.TransferSyntaxUID = UID(header.transfer_syntax)
            pixels = apply_rescale(ds.pixel_array, ds).astype(np.float32)
            inverted = ds.get("PhotometricInterpretation") == "MONOCHROME1"
    except Exception as exc:  # any decoder failure rejects the file, by name
        raise SeriesDecodeError(Rejection(header.path, REJECT_DECODE_FAILED, type(exc).__name__)) from exc
    if pixels.shape != (header.rows, header.cols):
        detail = f"pixel array shape {pixels.shape}, header says {(header.rows, header.cols)}"
        raise SeriesDecodeError(Rejection(header.path, REJECT_DECODE_FAILED, detail))
    return -pixels if inverted else pixels


def normalise_stack(stack: np.ndarray) -> np.ndarray:
    """Map the stack's 1st..99.5th percentiles to 0..255 uint8 (robust to hot pixels and outliers)."""
    low, high = np.percentile(stack, [LOW_PERCENTILE, HIGH_PERCENTILE])
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.rint((stack - low) * scale), 0, 255).astype(np.uint8)


def resize_field_of_view(image: np.ndarray, pixel_spacing: tuple[float, float],
                         size: int = ARRAY_SIZE) -> np.ndarray:
    """Scale the whole field of view (aspect kept in mm) to fit `size` x `size`, antialiased, centred."""
    height_mm, width_mm = image.shape[0] * pixel_spacing[0], image.shape[1] * pixel_spacing[1]
    scale = size / max(height_mm, width_mm)
    new_h = max(1, min(size, round(height_mm * scale)))
    new_w = max(1, min(size, round(width_mm * scale)))
    resized = np.asarray(Image.fromarray(image, mode="L").resize((new_w, new_h), Image.Resampling.LANCZOS))
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def render_series(source_dir: Path, plan: SeriesPlan) -> RenderedSeries:
    """Decode the chosen phase of every position, normalise per scan and build the 128 px array."""
    stack = np.stack([_decode(source_dir, position.chosen) for position in plan.positions])
    images = normalise_stack(stack)
    array = np.stack([resize_field_of_view(image, plan.pixel_spacing) for image in images])
    return RenderedSeries(plan=plan, images=tuple(images), array=array)


# ---------------------------------------------------------------- one series folder


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
            files=tuple(h.path for h in position.files),
        )
        for index, (position, image, small) in enumerate(
            zip(plans[0].positions, rendered.images, rendered.array, strict=True))
    )
    return OrderedSeries(series_dir=series_dir, phase_rule=plans[0].phase_rule,
                         spacing_mm=plans[0].spacing_mm, slices=slices, rejected=tuple(rejections))
