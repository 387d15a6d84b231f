"""Decode the chosen phase of a planned stack and normalise it the way the slice store keeps it:
native-size uint8 images and the (n, 128, 128) uint8 array.

Why this shape: only the chosen phase of a scan is decoded. Native and deflated pixels are read
straight from the offset the header pass recorded (`PixelLocation`, see `dicom_files`), compressed
fragments are decoded from that offset by the transfer syntax's pydicom decoder plugin (RLE, JPEG,
JPEG Lossless, JPEG-LS, JPEG 2000 via the pinned pylibjpeg family and pyjpegls, see
docs/pacs_exports.md), and anything else (frames of multi-frame files, unusual layouts) goes through
pydicom, with the same values. A file that fails to decode raises `SeriesDecodeError` naming it.

Rules (documented choices):
- Intensity: RescaleSlope/Intercept applied; MONOCHROME1 inverted; the series' chosen-phase pixels
  are mapped from their 1st..99.5th percentiles to 0..255 uint8 (one window per scan, so intensity
  relations between slices survive).
- 128 x 128 array: the full field of view is scaled (Lanczos, i.e. antialiased) so its longer
  physical side (rows x row spacing, cols x column spacing) fills 128 px, centred on black padding,
  so anatomy keeps its aspect ratio.

Public API:
- `decode_image(source_dir, header) -> np.ndarray`: rescaled float32 pixels of one image,
  MONOCHROME1 inverted (raises `SeriesDecodeError`)
- `normalise_stack(stack)`, `resize_field_of_view(image, pixel_spacing)`
- `stored_images(stack, pixel_spacing) -> (images, array)`: normalise per scan and build the 128 px
  array (also used by the synthetic cohort's `stored_slices`)
- `render_series(source_dir, plan) -> RenderedSeries` (decode, normalise, resize; raises
  `SeriesDecodeError`)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_rescale, get_decoder, pixel_array
from pydicom.uid import UID

from cmr_assets.domain import ARRAY_SIZE
from cmr_assets.ingest.dicom_files import DicomHeader, FileRejection, quiet_pydicom
from cmr_assets.ingest.stack_geometry import SeriesPlan

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeOptions

LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.5

REJECT_DECODE_FAILED = "pixel decoding failed"
REJECT_SERIES_DECODE = "series rejected: a chosen-phase file failed to decode"


@dataclass(frozen=True)
class RenderedSeries:
    """Chosen-phase pixels of a plan: native-size uint8 images and the (n, 128, 128) uint8 array."""

    plan: SeriesPlan
    images: tuple[np.ndarray, ...]
    array: np.ndarray


class SeriesDecodeError(Exception):
    """A chosen-phase file of a planned series could not be decoded."""

    def __init__(self, rejection: FileRejection):
        super().__init__(f"{rejection.path}: {rejection.reason}")
        self.rejection = rejection


def _rescaled(stored: np.ndarray, rescale: tuple[float, float] | None) -> np.ndarray:
    """Stored values to float32 the way pydicom's `apply_rescale` does (float64 arithmetic)."""
    if rescale is None:
        return stored.astype(np.float32)
    return (stored.astype(np.float64) * rescale[0] + rescale[1]).astype(np.float32)


def _read_encapsulated(path: Path, header: DicomHeader) -> np.ndarray:
    """Stored pixel values of a compressed file, decoded from the fragments at the offset the header
    pass found (no second header parse) by the syntax's pydicom decoder, with the options that
    `pixel_array` would take from the data set."""
    where = header.pixel_location
    if where is None:  # cannot happen: `decode_image` calls this only for images with a pixel location
        raise ValueError(f"{header.label}: no pixel location")
    options: DecodeOptions = {
        "rows": header.rows, "columns": header.cols, "samples_per_pixel": 1, "number_of_frames": 1,
        "bits_allocated": where.bits_allocated, "bits_stored": where.bits_stored,
        "pixel_representation": int(where.signed),
        "photometric_interpretation": "MONOCHROME1" if header.monochrome1 else "MONOCHROME2"}
    with open(path, "rb") as handle:
        handle.seek(where.offset)
        # pydicom annotates `**kwargs: DecodeOptions` where it means `**kwargs: Unpack[DecodeOptions]`
        values, _ = get_decoder(UID(header.transfer_syntax)).as_array(handle, **options)  # type: ignore[arg-type]
    return values


def _read_native(path: Path, header: DicomHeader) -> np.ndarray:
    """Stored pixel values read straight from their bytes (one read, no second header parse).

    Matches pydicom's native decoder: values are masked to BitsStored, and sign-extended from it
    when PixelRepresentation is 1.
    """
    where = header.pixel_location
    if where is None:  # cannot happen: `decode_image` calls this only for images with a pixel location
        raise ValueError(f"{header.label}: no pixel location")
    with open(path, "rb") as handle:
        if where.deflate_start is None:
            handle.seek(where.offset)
            data = handle.read(where.length)
        else:
            handle.seek(where.deflate_start)
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            data = inflater.decompress(handle.read(), where.offset + where.length)[where.offset:]
    if len(data) != where.length:
        raise ValueError(f"pixel data: {len(data)} of {where.length} bytes")
    values = np.frombuffer(data, dtype="<u2" if where.bits_allocated == 16 else "u1").reshape(header.rows, header.cols)
    if where.bits_stored < where.bits_allocated:
        values = values & np.asarray((1 << where.bits_stored) - 1, dtype=values.dtype)
    if not where.signed:
        return values
    wide = values.astype(np.int32)
    return np.where(wide >= 1 << (where.bits_stored - 1), wide - (1 << where.bits_stored), wide)


def decode_image(source_dir: Path, header: DicomHeader) -> np.ndarray:
    """Rescaled float pixels of one image, MONOCHROME1 inverted so brighter is always more signal.

    A frame of a multi-frame file is decoded alone (pydicom reads only that frame's bytes) and
    rescaled with its own Pixel Value Transformation from the header.
    """
    try:
        with quiet_pydicom():
            if header.pixel_location is not None:
                read = _read_encapsulated if header.pixel_location.encapsulated else _read_native
                pixels = _rescaled(read(source_dir / header.path, header), header.rescale)
                inverted = header.monochrome1
            elif header.frame is not None:
                frame = pixel_array(source_dir / header.path, index=header.frame - 1)
                pixels = _rescaled(frame, header.rescale)
                inverted = header.monochrome1
            else:
                ds = pydicom.dcmread(source_dir / header.path, force=True)
                if "TransferSyntaxUID" not in ds.file_meta:
                    ds.file_meta.TransferSyntaxUID = UID(header.transfer_syntax)
                pixels = apply_rescale(ds.pixel_array, ds).astype(np.float32)
                inverted = ds.get("PhotometricInterpretation") == "MONOCHROME1"
    except Exception as exc:  # any decoder failure rejects the file, by name
        raise SeriesDecodeError(FileRejection(header.path, REJECT_DECODE_FAILED, type(exc).__name__)) from exc
    if pixels.shape != (header.rows, header.cols):
        detail = f"pixel array shape {pixels.shape}, header says {(header.rows, header.cols)}"
        raise SeriesDecodeError(FileRejection(header.path, REJECT_DECODE_FAILED, detail))
    return -pixels if inverted else pixels


def normalise_stack(stack: np.ndarray) -> np.ndarray:
    """Map the stack's 1st..99.5th percentiles to 0..255 uint8 (robust to hot pixels and outliers).

    In place (one float64 buffer, as before): a fresh temporary per step cost more than the arithmetic.
    """
    low, high = np.percentile(stack, [LOW_PERCENTILE, HIGH_PERCENTILE])
    scale = 255.0 / (high - low) if high > low else 0.0
    mapped = np.subtract(stack, low, dtype=np.float64)
    mapped *= scale
    np.rint(mapped, out=mapped)
    np.clip(mapped, 0, 255, out=mapped)
    image: np.ndarray = mapped.astype(np.uint8)
    return image


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


def stored_images(stack: np.ndarray, pixel_spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images at native size, uint8 `(n, 128, 128)` array) of a rescaled stack, as the store keeps them."""
    images = normalise_stack(stack)
    return images, np.stack([resize_field_of_view(image, pixel_spacing) for image in images])


def render_series(source_dir: Path, plan: SeriesPlan) -> RenderedSeries:
    """Decode the chosen phase of every position, normalise per scan and build the 128 px array."""
    stack = np.stack([decode_image(source_dir, position.chosen) for position in plan.positions])
    images, array = stored_images(stack, plan.pixel_spacing)
    return RenderedSeries(plan=plan, images=tuple(images), array=array)
