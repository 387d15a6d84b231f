"""Hospital-export look-alikes made from real DICOM: compressed copies, Enhanced MR, a whole study.

Why: PACS exports arrive JPEG-LS, JPEG 2000, JPEG Lossless or RLE compressed, as one Enhanced MR
multi-frame file per series, or as a whole study (cine beside localizers, long-axis and
late-enhancement series, a DICOMDIR). Tests and `scripts/make_pacs_testdata.py` build these from the
shipped Sunnybrook patients, offline, so ingestion is checked against the real series it came from.

Public API:
- `LOSSLESS_SYNTAXES`: name -> transfer syntax UID of the lossless variants written here.
- `select_phases(series_dir, phases) -> list[Path]`: the files of some phases (0 = smallest
  TriggerTime at each position), to keep tests fast.
- `transcode(files, out_dir, syntax) -> list[Path]`: the same instances (same names and SOPInstanceUIDs)
  re-encoded; pydicom's
  encoders for RLE, JPEG-LS (pyjpegls) and JPEG 2000 (pylibjpeg-openjpeg), `encode_jpeg_lossless` for
  JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), which no installed package encodes.
- `encode_jpeg_lossless(pixels, precision) -> bytes`: ITU T.81 process 14, predictor 1, one
  optimal Huffman table.
- `write_enhanced_mr(files, out_path, shared_orientation=True, shuffle_seed=0) -> Path`: one Enhanced
  MR Image Storage file with per-frame Plane Position, Frame Content (dimension indices) and Cardiac
  Synchronization (NominalCardiacTriggerDelayTime) groups; Pixel Measures, Pixel Value
  Transformation (and Plane Orientation when `shared_orientation`) shared. Frames are written in a
  shuffled order so only geometry can order them.
- `write_legacy_converted_mr(files, out_path)`: the same via highdicom's Legacy Converted Enhanced
  MR (what `highdicom.legacy` writes for held-out series; needs the dev dependency highdicom).
- `write_study(cine_files, localizer_dir, out_dir) -> StudyFolder`: the cine, the real localizers
  (which share the cine's SeriesInstanceUID in the Sunnybrook data), a generated long-axis cine, a
  generated single-phase short-axis series (late-enhancement-like) and a DICOMDIR.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

ENHANCED_MR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")
LOSSLESS_SYNTAXES = {
    "jpeg_ls": JPEGLSLossless,
    "jpeg_2000": JPEG2000Lossless,
    "jpeg_lossless": JPEGLosslessSV1,
    "rle": RLELossless,
}
APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)


def _read(path: Path, pixels: bool = True) -> Dataset:
    with pydicom.config.disable_value_validation():
        return pydicom.dcmread(path, stop_before_pixels=not pixels)


def select_phases(series_dir: Path, phases: Sequence[int]) -> list[Path]:
    """Files of the given phase ranks at every position (rank 0 = smallest TriggerTime), sorted."""
    by_position: dict[tuple, list[tuple[float, Path]]] = defaultdict(list)
    for path in sorted(Path(series_dir).iterdir()):
        ds = _read(path, pixels=False)
        key = tuple(round(float(v), 1) for v in ds.ImagePositionPatient)
        by_position[key].append((float(ds.TriggerTime), path))
    chosen: list[Path] = []
    for files in by_position.values():
        ranked = [path for _, path in sorted(files)]
        chosen.extend(ranked[p] for p in phases if p < len(ranked))
    return sorted(chosen)


# ---------------------------------------------------------------- JPEG Lossless (process 14, SV1)


def _huffman_code_lengths(counts: np.ndarray) -> dict[int, int]:
    """ITU T.81 Annex K.2: code sizes (at most 16 bits) with one reserved all-ones code."""
    freq = [int(c) for c in counts] + [1]  # the last symbol reserves the all-ones code
    n = len(freq)
    codesize, others = [0] * n, [-1] * n
    while True:
        candidates = [i for i in range(n) if freq[i] > 0]
        if len(candidates) < 2:
            break
        v1 = min(candidates, key=lambda i: (freq[i], -i))
        v2 = min((i for i in candidates if i != v1), key=lambda i: (freq[i], -i))
        freq[v1] += freq[v2]
        freq[v2] = 0
        for start in (v1, v2):
            codesize[start] += 1
            node = start
            while others[node] != -1:
                node = others[node]
                codesize[node] += 1
        node = v1
        while others[node] != -1:
            node = others[node]
        others[node] = v2
    bits = [0] * 33
    for size in codesize:
        if size:
            bits[size] += 1
    for i in range(32, 16, -1):  # Annex K.3 (Figure K.3): limit code lengths to 16
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the reserved code
    symbols = sorted((s for s in range(n - 1) if codesize[s]), key=lambda s: (codesize[s], s))
    lengths: dict[int, int] = {}
    position = 0
    for size in range(1, 17):
        for symbol in symbols[position:position + bits[size]]:
            lengths[symbol] = size
        position += bits[size]
    return lengths


def _canonical_codes(lengths: dict[int, int]) -> tuple[list[int], list[int], dict[int, int]]:
    """BITS (16 counts), HUFFVAL and symbol -> code, as in T.81 Annex C."""
    order = sorted(lengths, key=lambda s: (lengths[s], s))
    bits = [sum(1 for s in order if lengths[s] == size) for size in range(1, 17)]
    codes: dict[int, int] = {}
    code, size = 0, lengths[order[0]]
    for symbol in order:
        code <<= lengths[symbol] - size
        size = lengths[symbol]
        codes[symbol] = code
        code += 1
    return bits, order, codes


def _pack_bits(values: np.ndarray, lengths: np.ndarray) -> bytes:
    """Concatenate `values` (MSB first, `lengths` bits each, <= 32), pad with ones, stuff 0xFF bytes."""
    columns = np.arange(32, dtype=np.uint64)
    aligned = values.astype(np.uint64) << (np.uint64(32) - lengths.astype(np.uint64))
    matrix = ((aligned[:, None] >> (np.uint64(31) - columns)) & np.uint64(1)).astype(np.uint8)
    bits = matrix[columns[None, :] < lengths[:, None].astype(np.uint64)]
    bits = np.concatenate([bits, np.ones((-len(bits)) % 8, dtype=np.uint8)])
    packed = np.packbits(bits)
    stuffed = np.insert(packed, np.flatnonzero(packed == 0xFF) + 1, 0)
    return stuffed.astype(np.uint8).tobytes()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def encode_jpeg_lossless(pixels: np.ndarray, precision: int = 16) -> bytes:
    """One greyscale frame as a JPEG Lossless, first-order prediction (selection value 1) codestream.

    `pixels` holds unsigned sample values below 2**precision (signed data: pass its bit pattern).
    """
    image = np.asarray(pixels).astype(np.int64)
    rows, cols = image.shape
    if image.min() < 0 or image.max() >= 1 << precision:
        raise ValueError(f"samples must lie in [0, 2**{precision})")
    prediction = np.empty_like(image)
    prediction[:, 1:] = image[:, :-1]          # left neighbour (Ra)
    prediction[1:, 0] = image[:-1, 0]          # first column: the sample above (Rb)
    prediction[0, 0] = 1 << (precision - 1)
    modulus = 1 << 16
    diff = (image - prediction) % modulus
    diff = np.where(diff > modulus // 2, diff - modulus, diff).ravel()
    magnitude = np.abs(diff)
    category = np.zeros_like(magnitude)
    nonzero = magnitude > 0
    category[nonzero] = np.floor(np.log2(magnitude[nonzero])).astype(np.int64) + 1
    category[magnitude == 32768] = 16
    extra = np.where(diff >= 0, diff, diff + (1 << category) - 1) & ((1 << category) - 1)
    extra[category == 16] = 0
    extra_len = np.where(category == 16, 0, category)
    lengths = _huffman_code_lengths(np.bincount(category, minlength=17))
    bits, huffval, codes = _canonical_codes(lengths)
    code_table = np.array([codes.get(s, 0) for s in range(17)], dtype=np.uint64)
    length_table = np.array([lengths.get(s, 0) for s in range(17)], dtype=np.uint64)
    values = (code_table[category] << extra_len.astype(np.uint64)) | extra.astype(np.uint64)
    total = length_table[category] + extra_len.astype(np.uint64)
    header = (
        b"\xff\xd8"
        + _segment(0xC4, bytes([0x00]) + bytes(bits) + bytes(huffval))
        + _segment(0xC3, bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
                   + bytes([1, 1, 0x11, 0]))
        + _segment(0xDA, bytes([1, 1, 0x00, 1, 0, 0]))
    )
    return header + _pack_bits(values, total) + b"\xff\xd9"


# ---------------------------------------------------------------- transcoding


def _compress(ds: Dataset, syntax: str) -> None:
    if syntax == JPEGLosslessSV1:
        bits_stored = int(ds.BitsStored)
        stored = ds.pixel_array
        unsigned = stored.astype(np.int64) & ((1 << bits_stored) - 1)  # two's complement bit pattern
        ds.PixelData = encapsulate([encode_jpeg_lossless(unsigned, bits_stored)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        return
    ds.compress(syntax, generate_instance_uid=False)  # a lossless transcode is the same instance


def transcode(files: Sequence[Path], out_dir: Path, syntax: str) -> list[Path]:
    """Re-encode each file (same name) in `syntax`; header and pixel values unchanged."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        ds = _read(path)
        _compress(ds, syntax)
        target = out_dir / path.name
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


# ---------------------------------------------------------------- Enhanced MR multi-frame


def _item(**values: Any) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def write_enhanced_mr(files: Sequence[Path], out_path: Path, shared_orientation: bool = True,
                      shuffle_seed: int | None = 0, series_uid: str | None = None) -> Path:
    """Convert single-frame MR files of one series into one Enhanced MR Image Storage file."""
    sources = [_read(path) for path in files]
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(sources))
        sources = [sources[i] for i in order]
    first = sources[0]
    positions = sorted({tuple(round(float(v), 2) for v in ds.ImagePositionPatient) for ds in sources})
    times = sorted({float(ds.TriggerTime) for ds in sources})
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ENHANCED_MR_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "Manufacturer",
                    "ManufacturerModelName", "SeriesNumber", "FrameOfReferenceUID"):
        if keyword in first:
            setattr(ds, keyword, first[keyword].value)
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, first[keyword].value)
    ds.NumberOfFrames = len(sources)
    dimension_uid = generate_uid()
    ds.DimensionOrganizationSequence = [_item(DimensionOrganizationUID=dimension_uid)]
    ds.DimensionIndexSequence = [
        _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209056,
              FunctionalGroupPointer=0x00209111),  # StackID in Frame Content
        _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111),  # InStackPositionNumber
        _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209128,
              FunctionalGroupPointer=0x00209111),  # TemporalPositionIndex
    ]
    shared = _item(
        PixelMeasuresSequence=[_item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness,
                                     **({"SpacingBetweenSlices": first.SpacingBetweenSlices}
                                        if "SpacingBetweenSlices" in first else {}))],
        PixelValueTransformationSequence=[_item(RescaleSlope=first.get("RescaleSlope", 1),
                                                RescaleIntercept=first.get("RescaleIntercept", 0),
                                                RescaleType="US")],
    )
    if shared_orientation:
        shared.PlaneOrientationSequence = [_item(ImageOrientationPatient=first.ImageOrientationPatient)]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for source in sources:
        position = tuple(round(float(v), 2) for v in source.ImagePositionPatient)
        in_stack, temporal = positions.index(position) + 1, times.index(float(source.TriggerTime)) + 1
        item = _item(
            PlanePositionSequence=[_item(ImagePositionPatient=source.ImagePositionPatient)],
            FrameContentSequence=[_item(StackID="1", InStackPositionNumber=in_stack,
                                        TemporalPositionIndex=temporal,
                                        DimensionIndexValues=[1, in_stack, temporal])],
            CardiacSynchronizationSequence=[_item(NominalCardiacTriggerDelayTime=source.TriggerTime)],
        )
        if not shared_orientation:
            item.PlaneOrientationSequence = [_item(ImageOrientationPatient=source.ImageOrientationPatient)]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = b"".join(source.PixelData for source in sources)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out_path, enforce_file_format=True)
    return out_path


def write_legacy_converted_mr(files: Sequence[Path], out_path: Path, series_number: int = 301) -> Path:
    """The same series converted by highdicom (a dev dependency) to Legacy Converted Enhanced MR.

    The anonymised Sunnybrook headers need two repairs first, which do not touch geometry or timing:
    dates "20120000" are not valid DA values, and FrameOfReferenceUID differs between files.
    """
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    sources = [_read(path) for path in files]
    for ds in sources:
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate"):
            if keyword in ds:
                setattr(ds, keyword, "20120101")
        ds.FrameOfReferenceUID = sources[0].FrameOfReferenceUID
    image = LegacyConvertedEnhancedMRImage(sources, series_instance_uid=generate_uid(), series_number=series_number,
                                           sop_instance_uid=generate_uid(), instance_number=1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(out_path)
    return out_path


# ---------------------------------------------------------------- a whole study


@dataclass(frozen=True)
class StudyFolder:
    """What `write_study` wrote, as paths relative to the study folder."""

    root: Path
    cine: tuple[str, ...]
    localizers: tuple[str, ...]
    long_axis: tuple[str, ...]
    single_phase: tuple[str, ...]
    dicomdir: str


def _long_axis_orientation(short_axis: Sequence[float]) -> list[float]:
    """A plane that contains the LV long axis: rows along the apex direction."""
    normal = np.cross(np.asarray(short_axis[:3], float), np.asarray(short_axis[3:], float))
    row = APEX_DIRECTION_LPS
    col = np.cross(normal, row)
    col /= np.linalg.norm(col)
    return [round(float(v), 6) for v in (*row, *col)]


def _copy_as_new_series(sources: Sequence[Path], out_dir: Path, series_number: int, **changes: Any) -> list[Path]:
    series_uid = generate_uid()
    written = []
    for index, path in enumerate(sources):
        ds = _read(path)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        target = out_dir / f"IM{index:06d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def _write_dicomdir(root: Path, files: Sequence[Path]) -> Path:
    """A minimal DICOMDIR: one IMAGE record per file under PATIENT/STUDY/SERIES records."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.1.3.10")  # Media Storage Directory Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "CMRSTUDY"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    records = []
    for path in files:
        header = _read(path, pixels=False)
        records.append(_item(
            OffsetOfTheNextDirectoryRecord=0, RecordInUseFlag=0xFFFF, OffsetOfReferencedLowerLevelDirectoryEntity=0,
            DirectoryRecordType="IMAGE", ReferencedFileID=list(path.relative_to(root).parts),
            ReferencedSOPClassUIDInFile=header.SOPClassUID,
            ReferencedSOPInstanceUIDInFile=header.SOPInstanceUID,
            ReferencedTransferSyntaxUIDInFile=header.file_meta.TransferSyntaxUID,
            InstanceNumber=header.get("InstanceNumber", 1)))
    ds.DirectoryRecordSequence = records
    target = root / "DICOMDIR"
    ds.save_as(target, enforce_file_format=True)
    return target


def write_study(cine_files: Sequence[Path], localizer_dir: Path, out_dir: Path) -> StudyFolder:
    """A study export: the cine, its localizers, a long-axis cine, a single-phase SA stack, a DICOMDIR."""
    cine_dir, scout_dir = out_dir / "SE0300", out_dir / "SE0001"  # DICOMDIR file IDs: 8 upper-case chars
    cine_dir.mkdir(parents=True, exist_ok=True)
    scout_dir.mkdir(parents=True, exist_ok=True)
    cine = [Path(shutil.copy2(path, cine_dir / f"IM{i:06d}")) for i, path in enumerate(cine_files)]
    localizers = [Path(shutil.copy2(path, scout_dir / f"IM{i:06d}"))
                  for i, path in enumerate(sorted(Path(localizer_dir).iterdir()))]
    headers = [_read(path, pixels=False) for path in cine_files]
    distinct = sorted({tuple(float(v) for v in h.ImagePositionPatient) for h in headers})
    middle = distinct[len(distinct) // 2]
    one_position = [p for p, h in zip(cine_files, headers, strict=True)
                    if tuple(float(v) for v in h.ImagePositionPatient) == middle]
    long_axis = _copy_as_new_series(one_position, out_dir / "SE0400", 400,
                                    ImageOrientationPatient=_long_axis_orientation(headers[0].ImageOrientationPatient))
    first_phase: dict[tuple[float, ...], Path] = {}
    for path, h in sorted(zip(cine_files, headers, strict=True), key=lambda pair: float(pair[1].TriggerTime)):
        first_phase.setdefault(tuple(float(v) for v in h.ImagePositionPatient), path)
    single_phase = _copy_as_new_series(sorted(first_phase.values()), out_dir / "SE0900", 900)
    dicomdir = _write_dicomdir(out_dir, cine + localizers + long_axis + single_phase)

    def rel(paths: Sequence[Path]) -> tuple[str, ...]:
        return tuple(sorted(p.relative_to(out_dir).as_posix() for p in paths))

    return StudyFolder(root=out_dir, cine=rel(cine), localizers=rel(localizers), long_axis=rel(long_axis),
                       single_phase=rel(single_phase), dicomdir=dicomdir.relative_to(out_dir).as_posix())
