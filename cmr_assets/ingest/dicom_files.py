"""Find DICOM files by content and read their headers: one whitelisted `DicomHeader` per image, or a
`FileRejection` saying why a file cannot be used.

Why this shape: a PACS export is a folder of arbitrary names, nesting and junk. Everything here
works from file content, never from names. Headers are read once per file, in a process pool: a
scan of the first 64 KiB (`_fast_header`) picks out the whitelisted elements as raw bytes for
little-endian files with a preamble, and pydicom (`stop_before_pixels=True`) reads everything else
(big endian, preamble-less, multi-frame, anything unusual), with the same result. The header pass
also records where a single-frame file keeps its pixels (`PixelLocation`), so that `pixels` can
decode native and deflated pixels straight from that offset. Every file that cannot be used becomes
a `FileRejection` (path relative to the source folder + reason) instead of stopping the run; the reason
kinds of files are the `REJECT_*` constants here, those of stacks and of decoding live in
`stack_geometry` and `pixels`.

Rules (documented choices):
- Discovery: a file is DICOM if it has the 128-byte preamble + b"DICM"; a preamble-less file is
  accepted only if it starts with a group 0x0002/0x0008 tag and then parses with `force=True`.
- Only whitelisted technical header fields are kept (`DicomHeader`); nothing identifying is read
  into memory beyond pydicom's own dataset, and pydicom value validation is switched off while
  reading (`quiet_pydicom`) so its warnings cannot echo tag values into logs.
- Images, not files: a multi-frame file with functional groups (Enhanced / Legacy Converted
  Enhanced MR) gives one `DicomHeader` per frame (`frame`, 1-based), with geometry, trigger time
  (NominalCardiacTriggerDelayTime) and rescale from the per-frame item, else the shared item, else
  the top level (`_frame_headers`). DICOMDIR files are rejected as "not an image instance".
- Transfer syntaxes: pixels are decoded by pydicom's decoders (native, deflate; RLE, JPEG, JPEG
  Lossless, JPEG-LS, JPEG 2000 via the pinned pylibjpeg family and pyjpegls, see
  docs/pacs_exports.md). A transfer syntax without an available decoder is rejected at header time,
  naming it and the package that would decode it. Colour files and multi-frame files without
  functional groups are rejected.

Public API:
- `FileRejection(path, kind, detail)`, `.reason`; reason kinds are the `REJECT_*` constants.
- `DicomHeader`: whitelisted header of one image; `PixelLocation`: where its pixels are.
- `discover_files(source_dir) -> list[Path]`; `inventory(source_dir) -> SourceInventory` (files, bytes,
  top-level folders; no file opened)
- `read_file(source_dir, path) -> list[DicomHeader] | FileRejection` (one header per frame);
  `read_header(source_dir, path) -> DicomHeader | FileRejection` (the first one)
- `decoder_hint(transfer_syntax) -> str`: the package that would decode a syntax
- `quiet_pydicom()`: context manager that turns pydicom value validation off (also for decoding)
- `worker_pool(workers)`: context manager giving a pool of `workers - 1` processes (or None for
  in-process); the calling process is the other worker. `pool_start_method()`: "fork" or "spawn"
- `read_headers(source_dir, files, pool=None, log=None) -> (headers, rejections)`
- `parallel_map(function, argument_tuples, pool) -> Iterator` (results in order; the caller works too)
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeAlias, TypeVar, cast, overload

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset
from pydicom.pixels import get_decoder
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

logger = logging.getLogger(__name__)

HEADER_CHUNK = 64

REJECT_EMPTY_FOLDER = "empty folder"
REJECT_UNREADABLE = "unreadable file"
REJECT_NOT_DICOM = "not a DICOM file"
REJECT_BAD_HEADER = "unreadable DICOM header"
REJECT_NOT_IMAGE = "not an image instance"
REJECT_NO_PIXELS = "no pixel data"
REJECT_TRUNCATED = "truncated file"
REJECT_UNSUPPORTED_TS = "unsupported transfer syntax"
REJECT_UNSUPPORTED_IMAGE = "unsupported image layout"

# Which installable package would decode a transfer syntax that has no decoder here (by UID prefix).
_DECODER_HINTS = (
    ("1.2.840.10008.1.2.4.5", "pylibjpeg-libjpeg (or python-gdcm)"),   # JPEG baseline/extended/P14
    ("1.2.840.10008.1.2.4.70", "pylibjpeg-libjpeg (or python-gdcm)"),  # JPEG Lossless SV1
    ("1.2.840.10008.1.2.4.8", "pyjpegls or pylibjpeg-libjpeg"),       # JPEG-LS
    ("1.2.840.10008.1.2.4.94", "none: JPIP references pixels on a server; export the images"),
    ("1.2.840.10008.1.2.4.95", "none: JPIP references pixels on a server; export the images"),
    ("1.2.840.10008.1.2.4.204", "none: JPIP references pixels on a server; export the images"),
    ("1.2.840.10008.1.2.4.205", "none: JPIP references pixels on a server; export the images"),
    ("1.2.840.10008.1.2.4.9", "pylibjpeg-openjpeg (or python-gdcm)"),  # JPEG 2000
    ("1.2.840.10008.1.2.4.20", "pylibjpeg-openjpeg"),                  # HTJ2K
    ("1.2.840.10008.1.2.5", "pylibjpeg-rle"),                          # RLE
    ("1.2.840.10008.1.2.4.10", "none: video syntaxes (MPEG-2/4, HEVC) need an export as images"),
    ("1.2.840.10008.1.2.4.11", "a pydicom release with a JPEG XL plugin (not in pydicom 3.0)"),
)

_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class FileRejection:
    """A file that could not be used: `path` relative to the source folder, and why."""

    path: str
    kind: str
    detail: str = ""

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind


@dataclass(frozen=True, slots=True)
class PixelLocation:
    """Where a single-frame little-endian file keeps its pixel values, as the header pass found it.

    `offset` counts from the start of the file, or, for a deflated file, from the start of the
    inflated data set, whose deflated stream begins at `deflate_start` in the file. `encapsulated`:
    compressed fragments start at `offset` (`length` 0), decoded by the syntax's pydicom decoder.
    """

    offset: int
    length: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    deflate_start: int | None = None
    encapsulated: bool = False


@dataclass(frozen=True, slots=True)
class DicomHeader:
    """The whitelisted, non-identifying header fields of one image (a file, or a frame of one).

    Slotted, with the strings that a whole series shares interned: a 30,000-scan folder holds about
    a million of these at once.
    """

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
    series_number: int | None = None
    study_uid: str | None = None
    patient_id: str | None = None  # read only to group series by patient (keyed hash); never stored
    frame: int | None = None
    rescale: tuple[float, float] | None = None
    monochrome1: bool = False
    pixel_location: PixelLocation | None = None

    @property
    def label(self) -> str:
        """`path`, or `path#frame=N` for frame N (1-based) of a multi-frame file."""
        return self.path if self.frame is None else f"{self.path}#frame={self.frame}"

    @property
    def missing_geometry(self) -> list[str]:
        names = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
        values = (self.image_position, self.image_orientation, self.pixel_spacing)
        return [name for name, value in zip(names, values, strict=True) if value is None]


def discover_files(source_dir: Path) -> list[Path]:
    """All regular files (and links to files) under `source_dir`, sorted; names do not matter."""
    found: list[Path] = []
    for folder, dirnames, filenames in os.walk(source_dir):
        dirnames.sort()
        found.extend(Path(folder) / name for name in sorted(filenames))
    return found


@dataclass(frozen=True)
class SourceInventory:
    """What a source folder holds before any file is read: files, their bytes, and the folders
    directly below it that hold them (files directly in it count as one folder, `.`)."""

    files: int
    bytes: int
    top_level_folders: int


def inventory(source_dir: Path) -> SourceInventory:
    """The inventory of `source_dir` (`discover_files`, sizes from the file system)."""
    files = discover_files(source_dir)
    top = {f.relative_to(source_dir).parts[0] if len(f.relative_to(source_dir).parts) > 1 else "." for f in files}
    return SourceInventory(len(files), sum(f.stat().st_size for f in files), len(top))


@contextmanager
def quiet_pydicom() -> Iterator[None]:
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


_TEXT_VRS = frozenset({"DS", "IS", "CS", "UI"})

# The header scan's raw (unconverted) elements by tag, file meta included (`_fast_header`).
_RawElements: TypeAlias = dict[int, RawDataElement]
# What the header readers take: a pydicom data set, or a header scan's raw elements.
_HeaderSource: TypeAlias = pydicom.Dataset | _RawElements


@lru_cache(maxsize=256)
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:  # only ever called with the dictionary keywords written in this module
        raise ValueError(f"not a DICOM dictionary keyword: {keyword!r}")
    return tag, dictionary_VR(tag)


def _element(ds: _HeaderSource, keyword: str) -> tuple[int, str, DataElement | RawDataElement | None]:
    """(tag, dictionary VR, element or None) from a pydicom data set or a header scan's raw elements."""
    tag, dictionary_vr = _tag_and_vr(keyword)
    if isinstance(ds, dict):
        return tag, dictionary_vr, ds.get(tag)
    # pydicom's `get_item` overload says DataElement; it returns the raw element while unconverted, None when absent
    elem: DataElement | RawDataElement | None = ds.get_item(tag)
    return tag, dictionary_vr, elem


def _has(ds: _HeaderSource, keyword: str) -> bool:
    return _tag_and_vr(keyword)[0] in ds


def _element_value(ds: _HeaderSource, keyword: str) -> object:
    """The element's value as pydicom converts it (None when absent)."""
    if not isinstance(ds, dict):
        tag, _vr, elem = _element(ds, keyword)
        return None if elem is None else ds[tag].value
    raw = ds.get(_tag_and_vr(keyword)[0])
    if raw is None or raw.value is None:  # the header scan always stores the value bytes
        return None
    charset = ds.get(_CHARSET_TAG)
    return _converted(raw.tag, raw.VR, raw.value, raw.is_implicit_VR, charset.value if charset else None)


_CHARSET_TAG = 0x00080005


@lru_cache(maxsize=1024)
def _converted(tag: int, vr: str | None, value: bytes, implicit: bool, charset: bytes | None) -> object:
    """pydicom's conversion of one raw element (cached: the elements that need it repeat along a series)."""
    key = Tag(tag)
    elements: dict[BaseTag, DataElement | RawDataElement] = {key: RawDataElement(key, vr, len(value), value, 0,
                                                                                  implicit, True)}
    if charset is not None:
        elements[Tag(_CHARSET_TAG)] = RawDataElement(Tag(_CHARSET_TAG), None if implicit else "CS", len(charset),
                                                     charset, 0, implicit, True)
    return pydicom.Dataset(elements)[tag].value


def _values(ds: _HeaderSource, keyword: str) -> list[Any] | None:
    """The element's values (whatever pydicom converts them to: str, int, float, DSfloat, IS, ...),
    or None when absent or empty.

    `ds` is a pydicom data set, or the header scan's raw elements by tag (`_scan_header`). Fast
    path: a numeric-string, code-string or UID element still in its raw (unconverted) form is
    split from its ASCII bytes, which skips pydicom's per-element conversion (character set look-up,
    value objects): that conversion was half of the header pass. Anything else goes through pydicom.
    """
    tag, dictionary_vr, elem = _element(ds, keyword)
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        vr = elem.VR or dictionary_vr
        if vr in _TEXT_VRS:
            text = value.decode("latin-1").strip("\x00 ")
            return [part.strip("\x00 ") for part in text.split("\\")] if text else None
        if vr == "US" and value and len(value) % 2 == 0 and isinstance(elem, RawDataElement):
            return list(struct.unpack(f"{'<' if elem.is_little_endian else '>'}{len(value) // 2}H", value))
    value = _element_value(ds, keyword)
    if value is None or value == "":
        return None
    return list(value) if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]


def _text(ds: _HeaderSource, keyword: str) -> str | None:
    values = _values(ds, keyword)
    return str(values[0]) if values and values[0] != "" else None


@overload
def _optional_floats(ds: _HeaderSource, keyword: str, count: Literal[2]) -> tuple[float, float] | None: ...


@overload
def _optional_floats(ds: _HeaderSource, keyword: str, count: Literal[3]) -> tuple[float, float, float] | None: ...


@overload
def _optional_floats(ds: _HeaderSource, keyword: str,
                     count: Literal[6]) -> tuple[float, float, float, float, float, float] | None: ...


@overload
def _optional_floats(ds: _HeaderSource, keyword: str, count: int) -> tuple[float, ...] | None: ...


def _optional_floats(ds: _HeaderSource, keyword: str, count: int) -> tuple[float, ...] | None:
    """Exactly `count` finite numbers, else None."""
    values = _values(ds, keyword)
    if values is None or len(values) != count:
        return None
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return numbers if all(np.isfinite(numbers)) else None


def _optional_float(ds: _HeaderSource, keyword: str) -> float | None:
    numbers = _optional_floats(ds, keyword, 1)
    return numbers[0] if numbers else None


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    meta_ts = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
    if meta_ts:
        return UID(str(meta_ts))
    implicit, _little = ds.original_encoding
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def decoder_hint(transfer_syntax: str) -> str:
    """The package that would decode `transfer_syntax` (for rejection messages)."""
    for prefix, package in _DECODER_HINTS:
        if str(transfer_syntax).startswith(prefix):
            return package
    return "no known pydicom pixel-data plugin"


def _unsupported_syntax(transfer_syntax: UID) -> str:
    name = transfer_syntax.name if transfer_syntax.name != str(transfer_syntax) else "unknown syntax"
    return f"{name} ({transfer_syntax}): no pixel decoder installed; would decode: {decoder_hint(transfer_syntax)}"


def _decoder_available(transfer_syntax: UID) -> bool:
    if not transfer_syntax.is_transfer_syntax:
        return False
    try:
        return get_decoder(transfer_syntax).is_available
    except (NotImplementedError, ValueError):
        return False


def _pixel_element(handle: BinaryIO, transfer_syntax: UID,
                   file_size: int) -> tuple[FileRejection | None, tuple[int, int] | None]:
    """Right where `stop_before_pixels` stopped: a problem with the pixel element (none, truncated),
    and the (value offset, length) in the file; the length is `_UNDEFINED_LENGTH` for encapsulated
    (compressed) frames, which the decoder validates."""
    if not transfer_syntax.is_transfer_syntax:
        return None, None  # unknown syntax: rejected as unsupported after the header checks
    if transfer_syntax.is_deflated:
        return None, None  # the dataset was inflated in memory; the decoder checks the pixel length
    start = handle.tell()
    raw = handle.read(12)
    endian = "<" if transfer_syntax.is_little_endian else ">"
    if len(raw) < 8 or struct.unpack(endian + "HH", raw[:4]) not in _PIXEL_TAGS:
        return FileRejection("", REJECT_NO_PIXELS), None
    if transfer_syntax.is_implicit_VR:
        header_length, length = 8, struct.unpack(endian + "I", raw[4:8])[0]
    elif raw[4:6] in _LONG_LENGTH_VRS:
        if len(raw) < 12:
            return FileRejection("", REJECT_TRUNCATED, "file ends inside the pixel data element header"), None
        header_length, length = 12, struct.unpack(endian + "I", raw[8:12])[0]
    else:
        header_length, length = 8, struct.unpack(endian + "H", raw[6:8])[0]
    if length == _UNDEFINED_LENGTH:
        return None, (start + header_length, length)
    present = file_size - start - header_length
    if present < length:
        return FileRejection("", REJECT_TRUNCATED, f"pixel data needs {length} bytes, {present} present"), None
    return None, (start + header_length, length)


_NATIVE_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})


def _native_location(ds: _HeaderSource, header: DicomHeader, transfer_syntax: UID, where: tuple[int, int] | None,
                     deflate_start: int | None) -> PixelLocation | None:
    """A `PixelLocation` when decoding from it gives exactly what pydicom's `pixel_array` would, else None."""
    if where is None or header.frame is not None:
        return None
    encapsulated = where[1] == _UNDEFINED_LENGTH
    if not (encapsulated and transfer_syntax.is_encapsulated) and transfer_syntax not in _NATIVE_SYNTAXES:
        return None
    if _has(ds, "ModalityLUTSequence") or _text(ds, "PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    allocated, stored = _optional_int(ds, "BitsAllocated"), _optional_int(ds, "BitsStored")
    representation = _optional_int(ds, "PixelRepresentation")
    if allocated not in (8, 16) or not stored or stored > allocated or representation not in (0, 1):
        return None
    offset, length = where
    needed = 0 if encapsulated else header.rows * header.cols * allocated // 8
    if not encapsulated and (not needed or length - needed not in (0, 1)):  # one pad byte for odd lengths
        return None
    return PixelLocation(offset=offset, length=needed, bits_allocated=allocated, bits_stored=stored,
                         signed=representation == 1, deflate_start=deflate_start, encapsulated=encapsulated)


MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


@lru_cache(maxsize=1024)
def _shared_pair(first: float, second: float) -> tuple[float, float]:
    """One tuple object per distinct (slope, intercept) pair, not one per image."""
    return (first, second)


def _optional_int(ds: _HeaderSource, keyword: str) -> int | None:
    values = _values(ds, keyword)
    try:
        return int(values[0]) if values and values[0] != "" else None
    except (TypeError, ValueError):
        return None


def _single_frame_rescale(ds: _HeaderSource) -> tuple[float, float] | None:
    """(RescaleSlope, RescaleIntercept) when both are present, as pydicom's `apply_rescale` wants them."""
    slope, intercept = _optional_float(ds, "RescaleSlope"), _optional_float(ds, "RescaleIntercept")
    return _shared_pair(slope, intercept) if slope is not None and intercept is not None else None


def _header_from_dataset(relative: str, ds: _HeaderSource,
                         transfer_syntax: UID) -> list[DicomHeader] | FileRejection:
    """One `DicomHeader` per image of the file (one per frame of a multi-frame file), or why none.

    `ds` is a pydicom data set, or the header scan's raw elements (file meta included) by tag.
    """
    meta = ds if isinstance(ds, dict) else getattr(ds, "file_meta", None)
    if (meta is not None and _text(meta, "MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY) \
            or _has(ds, "DirectoryRecordSequence"):
        return FileRejection(relative, REJECT_NOT_IMAGE, "DICOMDIR (media index; files are found by content)")
    series_uid, sop_uid = _text(ds, "SeriesInstanceUID"), _text(ds, "SOPInstanceUID")
    if not series_uid or not sop_uid:
        return FileRejection(relative, REJECT_NOT_IMAGE, "no SeriesInstanceUID/SOPInstanceUID (e.g. DICOMDIR)")
    if not _has(ds, "Rows") or not _has(ds, "Columns"):
        return FileRejection(relative, REJECT_NO_PIXELS, "no Rows/Columns")
    if (_optional_int(ds, "SamplesPerPixel") or 1) != 1:
        return FileRejection(relative, REJECT_UNSUPPORTED_IMAGE, "not a greyscale image")
    model = _element_value(ds, "ManufacturerModelName")
    study_uid = _text(ds, "StudyInstanceUID")
    header = DicomHeader(
        path=relative,
        series_uid=sys.intern(series_uid),
        sop_uid=sop_uid,
        modality=sys.intern(_text(ds, "Modality") or ""),
        transfer_syntax=sys.intern(str(transfer_syntax)),
        rows=_optional_int(ds, "Rows") or 0,
        cols=_optional_int(ds, "Columns") or 0,
        image_position=_optional_floats(ds, "ImagePositionPatient", 3),
        image_orientation=_optional_floats(ds, "ImageOrientationPatient", 6),
        pixel_spacing=_optional_floats(ds, "PixelSpacing", 2),
        slice_thickness=_optional_float(ds, "SliceThickness"),
        spacing_between_slices=_optional_float(ds, "SpacingBetweenSlices"),
        trigger_time=_optional_float(ds, "TriggerTime"),
        instance_number=_optional_int(ds, "InstanceNumber"),
        manufacturer_model=sys.intern(str(model)) if model else None,
        series_number=_optional_int(ds, "SeriesNumber"),
        study_uid=sys.intern(study_uid) if study_uid else None,
        patient_id=_text(ds, "PatientID") or None,
        rescale=_single_frame_rescale(ds),
        monochrome1=_text(ds, "PhotometricInterpretation") == "MONOCHROME1",
    )
    frames = _optional_int(ds, "NumberOfFrames")
    if frames is None or frames <= 1:
        return [header]
    # raw elements never hold the functional groups (the header scan leaves multi-frame files to pydicom)
    if isinstance(ds, dict) or not _has(ds, "PerFrameFunctionalGroupsSequence"):
        return FileRejection(relative, REJECT_UNSUPPORTED_IMAGE,
                         f"multi-frame file ({frames} frames) without per-frame functional groups")
    return _frame_headers(header, ds, frames)


# Functional group macros read per frame (per-frame item first, then the shared item), in
# (sequence keyword, attribute keyword, value count) form.
_FRAME_GEOMETRY = {
    "image_position": ("PlanePositionSequence", "ImagePositionPatient", 3),
    "image_orientation": ("PlaneOrientationSequence", "ImageOrientationPatient", 6),
    "pixel_spacing": ("PixelMeasuresSequence", "PixelSpacing", 2),
    "slice_thickness": ("PixelMeasuresSequence", "SliceThickness", 1),
    "spacing_between_slices": ("PixelMeasuresSequence", "SpacingBetweenSlices", 1),
}
_UNASSIGNED = ("UnassignedPerFrameConvertedAttributesSequence", "UnassignedSharedConvertedAttributesSequence")


def _macro(groups: Sequence[pydicom.Dataset], sequence: str) -> pydicom.Dataset | None:
    """The first item of functional group `sequence` in the per-frame item, else the shared item."""
    for group in groups:
        items = group.get(sequence)
        if items:
            first: pydicom.Dataset = items[0]
            return first
    return None


def _macro_floats(groups: Sequence[pydicom.Dataset], sequence: str, keyword: str,
                  count: int) -> tuple[float, ...] | None:
    item = _macro(groups, sequence)
    return _optional_floats(item, keyword, count) if item is not None else None


def _frame_headers(file_header: DicomHeader, ds: pydicom.Dataset, frames: int) -> list[DicomHeader] | FileRejection:
    """Enhanced (and Legacy Converted Enhanced) MR: one header per frame from the functional groups.

    Geometry from Plane Position / Plane Orientation / Pixel Measures; the cardiac phase time from
    Cardiac Synchronization's NominalCardiacTriggerDelayTime, else a converted TriggerTime (Legacy
    Converted Enhanced keeps it in the Unassigned ... Converted Attributes sequences), else the
    file's TriggerTime; the phase fallback order from Frame Content's TemporalPositionIndex, else the
    frame number. Rescale from Pixel Value Transformation, else the file's RescaleSlope/Intercept.
    """
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != frames:
        return FileRejection(file_header.path, REJECT_UNSUPPORTED_IMAGE,
                         f"{frames} frames but {len(per_frame)} per-frame functional group items")
    shared_items = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else pydicom.Dataset()
    top_rescale = (_optional_float(ds, "RescaleSlope"), _optional_float(ds, "RescaleIntercept"))
    monochrome1 = _text(ds, "PhotometricInterpretation") == "MONOCHROME1"
    headers = []
    for number, item in enumerate(per_frame, start=1):
        groups = (item, shared)
        # DicomHeader fields by name for `replace`: each gets the count `_FRAME_GEOMETRY` gives its type
        values: dict[str, Any] = {}
        for field_name, (sequence, keyword, count) in _FRAME_GEOMETRY.items():
            found = _macro_floats(groups, sequence, keyword, count)
            if found is None:
                values[field_name] = getattr(file_header, field_name)
            elif count == 1:
                values[field_name] = found[0]
            else:
                values[field_name] = found
        trigger = _macro_floats(groups, "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime", 1)
        if trigger is None:
            for sequence in _UNASSIGNED:
                trigger = trigger or _macro_floats(groups, sequence, "TriggerTime", 1)
        content = _macro(groups, "FrameContentSequence")
        temporal = _optional_int(content, "TemporalPositionIndex") if content is not None else None
        slope = _macro_floats(groups, "PixelValueTransformationSequence", "RescaleSlope", 1)
        intercept = _macro_floats(groups, "PixelValueTransformationSequence", "RescaleIntercept", 1)
        rescale = (slope[0] if slope else (top_rescale[0] or 1.0),
                   intercept[0] if intercept else (top_rescale[1] or 0.0))
        headers.append(replace(
            file_header, **values, frame=number,
            trigger_time=trigger[0] if trigger else file_header.trigger_time,
            instance_number=temporal if temporal is not None else number,
            rescale=rescale, monochrome1=monochrome1))
    return headers


DEFLATED_HEADER_BYTES = 16 * 1024
_PIXEL_DATA_TAG_LE = struct.pack("<HH", 0x7FE0, 0x0010)


def _read_deflated_header(handle: BinaryIO) -> tuple[pydicom.Dataset, tuple[int, int, int] | None] | None:
    """Header of a deflated file by inflating only its first bytes (pydicom inflates the whole file),
    and (deflate start, pixel value offset in the inflated data, length) when the pixel element
    header is within those bytes.

    Returns None (the caller reads the whole file) when the header does not end within
    `DEFLATED_HEADER_BYTES` of inflated data, i.e. the pixel data tag is not in sight.
    """
    handle.seek(128 + 4)
    meta = _read_file_meta_info(handle)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    deflate_start = handle.tell()
    head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(handle.read(), DEFLATED_HEADER_BYTES)
    end = head.find(_PIXEL_DATA_TAG_LE)
    if end < 0:
        return None
    # a DicomBytesIO is file-like but no BinaryIO subclass (pydicom casts it the same way in dcmread)
    ds = read_dataset(cast(BinaryIO, DicomBytesIO(head[:end + 12])), is_implicit_VR=False, is_little_endian=True,
                      stop_when=_at_pixel_data)
    ds.file_meta = meta
    element = head[end:end + 12]
    where = None
    if len(element) == 12 and element[4:6] in (b"OB", b"OW"):
        where = (deflate_start, end + 12, struct.unpack("<I", element[8:12])[0])
    return pydicom.FileDataset("", ds, preamble=b"\0" * 128, file_meta=meta, is_implicit_VR=False,
                               is_little_endian=True), where


HEADER_SCAN_BYTES = 64 * 1024
_SHORT_LENGTH_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
                               b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_SCANNED_KEYWORDS = (
    "SpecificCharacterSet", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality",
    "ManufacturerModelName", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
    "BitsStored", "PixelRepresentation", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "TriggerTime", "InstanceNumber", "SeriesNumber", "NumberOfFrames",
    "RescaleSlope", "RescaleIntercept",
)
_SCANNED_TAGS = frozenset(tag_for_keyword(keyword) for keyword in _SCANNED_KEYWORDS)
# Files holding these go to pydicom (their contents or presence matter); so do multi-frame files,
# whose functional group sequences are read in full.
_PYDICOM_TAGS = frozenset(tag_for_keyword(keyword) for keyword in ("ModalityLUTSequence", "DirectoryRecordSequence"))
_NUMBER_OF_FRAMES = tag_for_keyword("NumberOfFrames")
_PIXEL_TAG_INTS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


_UNPACK_TAG = struct.Struct("<HH").unpack_from
_UNPACK_LONG = struct.Struct("<I").unpack_from
_UNPACK_SHORT = struct.Struct("<H").unpack_from
_VR_NAMES = {vr: vr.decode("ascii") for vr in _LONG_LENGTH_VRS | _SHORT_LENGTH_VRS}


class _ScanGaveUp(Exception):
    """The fast header scan met something it leaves to pydicom."""


def _walk_elements(buf: bytes, pos: int, implicit: bool, collect: _RawElements | None,
                   file_meta: bool = False) -> tuple[int, int | None]:
    """Walk little-endian data elements from `pos`: at top level (`collect` given) until a pixel data
    tag, returning (its offset, tag); inside an item until the item delimiter, returning (the offset
    after it, None). Wanted top-level elements go into `collect` as raw (unconverted) elements.
    With `file_meta`, walk group 0x0002 (all of it collected) and stop where the data set begins."""
    size = len(buf)
    while True:
        if pos + 8 > size:
            raise _ScanGaveUp("header longer than the scanned bytes")
        group, element = _UNPACK_TAG(buf, pos)
        tag = group << 16 | element
        if file_meta and group != 2:
            return pos, None
        if collect is None and tag == _ITEM_END:
            return pos + 8, None
        if collect is not None and tag in _PIXEL_TAG_INTS:
            return pos, tag
        if group == 0xFFFE or (collect is not None and tag > 0x7FE00010) or tag in _PYDICOM_TAGS:
            raise _ScanGaveUp("unusual element")
        if implicit:
            vr, length, start = None, _UNPACK_LONG(buf, pos + 4)[0], pos + 8
        else:
            vr = buf[pos + 4:pos + 6]
            if vr in _LONG_LENGTH_VRS:
                length, start = _UNPACK_LONG(buf, pos + 8)[0], pos + 12
            elif vr in _SHORT_LENGTH_VRS:
                length, start = _UNPACK_SHORT(buf, pos + 6)[0], pos + 8
            else:
                raise _ScanGaveUp("unknown VR")
        if length == _UNDEFINED_LENGTH:
            if tag in _SCANNED_TAGS or (vr is not None and vr != b"SQ"):
                raise _ScanGaveUp("undefined length outside a sequence")
            pos = _skip_sequence(buf, start, implicit)
            continue
        end = start + length
        if end > size:
            raise _ScanGaveUp("element runs past the scanned bytes")
        if collect is not None and (file_meta or tag in _SCANNED_TAGS):
            # the tag stays an int: these elements are read by `_values`, never by pydicom's Dataset
            vr_name = None if vr is None else _VR_NAMES.get(vr)
            collect[tag] = RawDataElement(tag, vr_name, length, buf[start:end], start, implicit, True, True, False)
        pos = end


def _skip_sequence(buf: bytes, pos: int, implicit: bool) -> int:
    """The offset after an undefined-length sequence that starts (with its first item) at `pos`."""
    while True:
        if pos + 8 > len(buf):
            raise _ScanGaveUp("sequence runs past the scanned bytes")
        group, element, length = struct.unpack_from("<HHI", buf, pos)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise _ScanGaveUp("malformed sequence")
        if length == _UNDEFINED_LENGTH:
            pos, _ = _walk_elements(buf, pos + 8, implicit, None)
        else:
            pos += 8 + length


def _scan_header(buf: bytes, implicit: bool, collected: _RawElements) -> int:
    """Add the wanted elements of a little-endian data set in `buf` to `collected` (raw, as pydicom
    would hold them, by tag) and return the offset of its pixel data element; raises `_ScanGaveUp`
    for anything it leaves to pydicom."""
    offset, _ = _walk_elements(buf, 0, implicit, collected)
    if (_optional_int(collected, "NumberOfFrames") or 1) > 1:
        raise _ScanGaveUp("multi-frame file")
    return offset


def _scan_deflated(data: bytes, elements: _RawElements) -> tuple[bytes, int]:
    """`_scan_header` of a deflated data set, inflating only what its header needs: 4 KiB first (a
    typical header is 1-2 KiB; inflating costs per byte out), else `DEFLATED_HEADER_BYTES`."""
    buf = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, DEFLATED_HEADER_BYTES // 4)
    try:
        return buf, _scan_header(buf, False, elements)
    except _ScanGaveUp:
        buf = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, DEFLATED_HEADER_BYTES)
        return buf, _scan_header(buf, False, elements)


# (raw elements, transfer syntax, problem, (pixel value offset, length), deflate start): see `_fast_header`
_FastHeader: TypeAlias = tuple[_RawElements, UID, FileRejection | None, tuple[int, int] | None, int | None]


def _fast_header(handle: BinaryIO, file_size: int) -> _FastHeader | None:
    """(raw elements, transfer syntax, problem, where, deflate_start) from one read of a file's first
    bytes, or None to let pydicom read the header. Covers files with a preamble in explicit or
    implicit VR little endian, compressed syntaxes (their data set is explicit VR little endian) and
    deflated files. The raw elements are a plain dict by tag, file meta included: pydicom's
    `Dataset` and file-meta reader were most of what was left of the header pass. Big endian,
    preamble-less streams, multi-frame functional groups and anything unusual go to pydicom, so
    results are the same either way."""
    handle.seek(0)
    head = handle.read(HEADER_SCAN_BYTES)
    elements: _RawElements = {}
    try:
        data_start, _ = _walk_elements(head, 128 + 4, False, elements, file_meta=True)
        syntax = UID(_text(elements, "TransferSyntaxUID") or "")
        if not syntax.is_transfer_syntax or not syntax.is_little_endian:
            return None
        deflate_start = None
        if syntax.is_deflated:
            deflate_start = data_start
            buf, offset = _scan_deflated(head[data_start:], elements)
        else:
            buf = head[data_start:]
            offset = _scan_header(buf, syntax.is_implicit_VR, elements)
    except (_ScanGaveUp, struct.error, UnicodeDecodeError, zlib.error):
        return None
    if deflate_start is None:
        handle.seek(data_start + offset)
        problem, where = _pixel_element(handle, syntax, file_size)
        return elements, syntax, problem, where, None
    element = buf[offset:offset + 12]
    where = None
    if len(element) == 12 and element[4:6] in (b"OB", b"OW"):
        where = (offset + 12, struct.unpack("<I", element[8:12])[0])
    return elements, syntax, None, where, deflate_start


def read_header(source_dir: Path, path: Path) -> DicomHeader | FileRejection:
    """Read one single-frame file's header (no pixels) into a `DicomHeader`, or say why it is unusable.

    For a multi-frame file this is its first frame; `read_file` gives every frame.
    """
    result = read_file(source_dir, path)
    return result if isinstance(result, FileRejection) else result[0]


def read_file(source_dir: Path, path: Path) -> list[DicomHeader] | FileRejection:
    """Read one file's header (no pixels): one `DicomHeader` per image (frame), or why it is unusable."""
    relative = path.relative_to(source_dir).as_posix()
    try:
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            head = handle.read(132)
            has_preamble = len(head) == 132 and head[128:132] == b"DICM"
            if not has_preamble and not _looks_like_raw_dataset(head):
                return FileRejection(relative, REJECT_NOT_DICOM, "no DICM marker")
            handle.seek(0)
            try:
                with quiet_pydicom():
                    fast = _fast_header(handle, file_size) if has_preamble else None
                    deflated = _read_deflated_header(handle) if has_preamble and fast is None else None
                    ds: _HeaderSource
                    deflate_start = None
                    if fast is not None:
                        ds, transfer_syntax, problem, where, deflate_start = fast
                    elif deflated is None:
                        handle.seek(0)
                        ds = pydicom.dcmread(handle, stop_before_pixels=True, force=not has_preamble)
                        transfer_syntax = _transfer_syntax(ds)
                        problem, where = _pixel_element(handle, transfer_syntax, file_size)
                    else:
                        (ds, located), problem = deflated, None
                        transfer_syntax = _transfer_syntax(ds)
                        deflate_start, where = (located[0], located[1:]) if located else (None, None)
                    header = _header_from_dataset(relative, ds, transfer_syntax)
                    if not isinstance(header, FileRejection) and len(header) == 1:
                        location = _native_location(ds, header[0], transfer_syntax, where, deflate_start)
                        header = [replace(header[0], pixel_location=location)] if location else header
            except Exception as exc:  # pydicom raises many types on malformed input
                kind = REJECT_BAD_HEADER if has_preamble else REJECT_NOT_DICOM
                return FileRejection(relative, kind, type(exc).__name__)
    except OSError as exc:
        return FileRejection(relative, REJECT_UNREADABLE, exc.strerror or type(exc).__name__)
    if isinstance(header, FileRejection):
        if not has_preamble and header.kind == REJECT_NOT_IMAGE:  # force=True parsed noise
            return FileRejection(relative, REJECT_NOT_DICOM, "no DICM marker and no image instance UIDs")
        return header
    if problem is not None:
        return FileRejection(relative, problem.kind, problem.detail)
    if not _decoder_available(transfer_syntax):
        return FileRejection(relative, REJECT_UNSUPPORTED_TS, _unsupported_syntax(transfer_syntax))
    return header


def _read_header_chunk(source_dir: Path, paths: list[Path]) -> list[list[DicomHeader] | FileRejection]:
    return [read_file(source_dir, path) for path in paths]


def read_headers(
    source_dir: Path,
    files: Sequence[Path],
    pool: Executor | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[DicomHeader], list[FileRejection]]:
    """Read all headers in chunks (in `pool` if given, see `worker_pool`); logs counts and rates.

    `headers` holds one entry per image: a multi-frame file contributes one per frame.
    """
    log = log or logger.info
    chunks = [list(files[i:i + HEADER_CHUNK]) for i in range(0, len(files), HEADER_CHUNK)]
    headers: list[DicomHeader] = []
    rejections: list[FileRejection] = []
    started = time.perf_counter()
    done = dicom_files = 0
    for results in parallel_map(_read_header_chunk, [(source_dir, chunk) for chunk in chunks], pool):
        for result in results:
            if isinstance(result, FileRejection):
                rejections.append(result)
            else:
                headers.extend(result)
                dicom_files += 1
        done += len(results)
        if done % (HEADER_CHUNK * 8) == 0 or done == len(files):
            rate = done / max(time.perf_counter() - started, 1e-9)
            log(f"headers: {done}/{len(files)} files read, {dicom_files} DICOM ({len(headers)} images), "
                f"{len(rejections)} rejected ({rate:.0f} files/s)")
    return headers, rejections


def pool_start_method() -> str:
    """"fork" on Linux when this process runs a single Python thread (the CLI, the benchmark), else
    "spawn": a forked worker starts in ~10 ms instead of ~0.5-1 s (a fresh interpreter importing
    pydicom and numpy), but forking a threaded host such as Dagster could copy a lock that another
    thread holds, so there the workers are spawned."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


@contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """A process pool for `workers` processes working, this one included: `workers - 1` worker
    processes (None, i.e. this process alone, when `workers <= 1`); `parallel_map` has this process
    take tasks too, so a worker that is still starting up costs no wall time.

    Started as `pool_start_method` says; when spawned, a script calling ingestion with `workers > 1`
    needs the usual `if __name__ == "__main__":` guard.
    """
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers - 1, mp_context=get_context(pool_start_method())) as pool:
        yield pool


PARALLEL_WINDOW = 64
T = TypeVar("T")


def parallel_map(function: Callable[..., T], argument_tuples: Sequence[tuple[Any, ...]],
                 pool: Executor | None) -> Iterator[T]:
    """`function(*args)` for each tuple, results in order; with a pool, shared between it and this process.

    Tasks go in windows of `PARALLEL_WINDOW`: the pool takes a window's tasks from the front, this
    process from the back (cancelling what the pool has not started), and the next window is queued
    before this one's results are handed on, so neither side waits for the other's start-up or for
    the consumer. At most two windows of results are held at once.
    """
    if pool is None or len(argument_tuples) <= 1:
        yield from (function(*args) for args in argument_tuples)
        return
    windows = [argument_tuples[i:i + PARALLEL_WINDOW] for i in range(0, len(argument_tuples), PARALLEL_WINDOW)]
    queued = [pool.submit(function, *args) for args in windows[0]]
    for number, window in enumerate(windows):
        futures, local = queued, dict[int, T]()
        for index in range(len(window) - 1, -1, -1):
            if not futures[index].cancel():
                break
            local[index] = function(*window[index])
        if number + 1 < len(windows):
            queued = [pool.submit(function, *args) for args in windows[number + 1]]
        for index, future in enumerate(futures):
            yield local[index] if index in local else future.result()
