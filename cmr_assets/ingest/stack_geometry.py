"""Group images into stacks and order each short-axis stack base -> apex, choosing its end-diastolic
phase; no pixels are read here.

Why this shape: a PACS export mixes stacks (localizers, long-axis views, single-phase mapping or
late-enhancement stacks, anonymised series sharing one UID) and lists its files in any order.
Everything here works from DICOM geometry (`DicomHeader`s from `dicom_files`), never from file
names or SliceLocation (whose sign differs between scanners). A stack or image that cannot be used
becomes a `FileRejection` per file instead of stopping the run.

Rules (documented choices):
- Stacks, not UIDs (`split_stacks`): images are grouped by SeriesInstanceUID, SeriesNumber and
  matrix size, and orientations more than `ORIENTATION_SPLIT_DEG` apart split a group (localizer
  planes; series an anonymiser gave one UID).
- A stack is a candidate if: Modality MR; images with complete geometry (ImagePositionPatient,
  ImageOrientationPatient, PixelSpacing; others are rejected one by one); one matrix size; all
  slice normals within `PARALLEL_TOLERANCE_DEG`; the stack normal within `SHORT_AXIS_MAX_ANGLE_DEG`
  of the LV long-axis direction (1, -1, -1)/sqrt(3) (LPS; canonical axial/coronal/sagittal stacks
  lie at 54.7 deg and are rejected as "not a short-axis cine"); at least `MIN_POSITIONS` positions.
- Selection (`plan_all_series`): a single-phase candidate is rejected as "not a short-axis cine"
  when its study (StudyInstanceUID) has a cine candidate (>= `MIN_CINE_PHASES` phases at the median
  position); every other candidate is a scan. Candidates sharing a UID get distinct `scan_key`s.
- Order: ImagePositionPatient projected on the unit normal (row x column cosines) flipped to have a
  positive dot product with the apex direction; ascending projection = base first. Files are
  grouped into positions by gaps larger than `POSITION_TOLERANCE_FRACTION` x the nominal slice
  spacing (SpacingBetweenSlices, else SliceThickness, else `DEFAULT_POSITION_TOLERANCE_MM`).
- Phase: end-diastole = smallest TriggerTime at each position (`phase_rule='min_trigger_time'`);
  if any file of the series lacks TriggerTime, the smallest InstanceNumber at each position
  (`'min_instance_number'`, ties and missing numbers broken by relative path).
- Duplicate SOPInstanceUIDs: the first file (by relative path) is kept, later copies are rejected.

Public API:
- `SlicePosition`, `SeriesPlan`: a validated stack, positions base first, chosen phase per position.
- `drop_duplicate_instances(headers) -> (headers, rejections)`
- `split_stacks(headers) -> list[list[DicomHeader]]`
- `order_base_to_apex(headers, context="") -> (SeriesPlan | None, rejections)` for the images of
  one stack
- `plan_all_series(headers) -> (plans, rejections)`: duplicates + stacks + ordering + selection
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from cmr_assets.ingest.dicom_files import DicomHeader, FileRejection

APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
SHORT_AXIS_MAX_ANGLE_DEG = 50.0
PARALLEL_TOLERANCE_DEG = 1.0
MIN_POSITIONS = 3
POSITION_TOLERANCE_FRACTION = 0.3
DEFAULT_POSITION_TOLERANCE_MM = 1.0
PHASE_RULE_TRIGGER = "min_trigger_time"
PHASE_RULE_INSTANCE = "min_instance_number"
ORIENTATION_SPLIT_DEG = 20.0
MIN_CINE_PHASES = 2

REJECT_DUPLICATE = "duplicate SOPInstanceUID"
REJECT_MISSING_GEOMETRY = "missing geometry tags"
REJECT_SERIES_NOT_MR = "series rejected: not MR"
REJECT_SERIES_MATRIX = "series rejected: inconsistent matrix size"
REJECT_SERIES_NOT_PARALLEL = "series rejected: slices not parallel"
REJECT_SERIES_NOT_SHORT_AXIS = "series rejected: not a short-axis cine"
REJECT_SERIES_TOO_FEW_POSITIONS = "series rejected: too few slice positions"


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
    series_number: int | None = None
    study_uid: str | None = None
    scan_key: str = ""
    patient_id: str | None = None

    @property
    def n_files(self) -> int:
        """Distinct source files (a multi-frame file counts once)."""
        return len({h.path for position in self.positions for h in position.files})

    @property
    def n_images(self) -> int:
        return sum(len(position.files) for position in self.positions)

    @property
    def is_cine(self) -> bool:
        """Several phases at (the median) position."""
        return float(np.median([len(position.files) for position in self.positions])) >= MIN_CINE_PHASES

def drop_duplicate_instances(headers: Sequence[DicomHeader]) -> tuple[list[DicomHeader], list[FileRejection]]:
    """Keep the first file (by relative path) of each SOPInstanceUID (and frame); reject later copies."""
    first_path: dict[tuple[str, int | None], str] = {}
    kept: list[DicomHeader] = []
    duplicates: dict[str, str] = {}
    for header in sorted(headers, key=lambda h: (h.path, h.frame or 0)):
        key = (header.sop_uid, header.frame)
        if key in first_path and first_path[key] != header.path:
            duplicates.setdefault(header.path, first_path[key])
        else:
            first_path[key] = header.path
            kept.append(header)
    kept = [h for h in kept if h.path not in duplicates]  # a copied multi-frame file goes whole
    rejections = [FileRejection(path, REJECT_DUPLICATE, f"same instance as {first}")
                  for path, first in duplicates.items()]
    return kept, rejections


def _unit_normal(orientation: Sequence[float]) -> np.ndarray:
    """Row x column direction cosines, normalised (cached: a stack's images share one orientation)."""
    return _unit_normal_cached(tuple(orientation))


@lru_cache(maxsize=65536)
def _unit_normal_cached(orientation: tuple[float, ...]) -> np.ndarray:
    (a1, a2, a3), (b1, b2, b3) = orientation[:3], orientation[3:]  # plain floats: np.cross costs ~50 us
    normal = np.array([a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1])
    normal /= np.linalg.norm(normal)
    normal.setflags(write=False)
    return normal


def _orientation(header: DicomHeader) -> tuple[float, float, float, float, float, float]:
    """ImageOrientationPatient of an image that `order_base_to_apex` kept (complete geometry: never None)."""
    if header.image_orientation is None:
        raise ValueError(f"{header.label}: no ImageOrientationPatient")
    return header.image_orientation


def _frame_ranges(numbers: Sequence[int]) -> str:
    """1, 2, 3, 7 -> "1-3, 7"."""
    ordered = sorted(set(numbers))
    runs: list[list[int]] = []
    for number in ordered:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _reject_all(headers: Sequence[DicomHeader], kind: str, detail: str) -> list[FileRejection]:
    """One rejection per file; for a multi-frame file the reason names the frames it concerns."""
    frames: dict[str, list[int]] = defaultdict(list)
    for header in headers:
        frames[header.path].extend([header.frame] if header.frame is not None else [])
    return [FileRejection(path, kind, f"{detail} (frames {_frame_ranges(numbers)})" if numbers else detail)
            for path, numbers in frames.items()]


def _group_positions(projections: np.ndarray, tolerance_mm: float) -> list[np.ndarray]:
    """Indices of files per position: sorted projections split where the gap exceeds the tolerance."""
    order = np.argsort(projections, kind="stable")
    breaks = np.flatnonzero(np.diff(projections[order]) > tolerance_mm) + 1
    return np.split(order, breaks)


def _phase_key(rule: str) -> Callable[[DicomHeader], tuple[Any, ...]]:
    """Sort key of one stack's images within a phase: instance number (missing last), path, frame;
    trigger time first under the trigger-time rule."""

    def by_instance(h: DicomHeader) -> tuple[Any, ...]:
        return (h.instance_number is None, h.instance_number or 0, h.path, h.frame or 0)

    if rule == PHASE_RULE_TRIGGER:
        return lambda h: (h.trigger_time, *by_instance(h))
    return by_instance


def _most_common(values: Sequence[str | None]) -> str | None:
    present = [v for v in values if v]
    return max(sorted(set(present)), key=present.count) if present else None


def order_base_to_apex(headers: Sequence[DicomHeader],
                       context: str = "") -> tuple[SeriesPlan | None, list[FileRejection]]:
    """Validate one stack's images and order them base -> apex; rejections say why.

    `context` (e.g. "series 3, 256x256, 15 images") prefixes the reasons of a stack-wide rejection.
    """
    prefix = f"{context}: " if context else ""
    modality = headers[0].modality
    if any(h.modality != "MR" for h in headers):
        return None, _reject_all(headers, REJECT_SERIES_NOT_MR, f"{prefix}modality {modality or 'missing'}")
    missing = [h for h in headers if h.missing_geometry]
    rejections = [FileRejection(h.path, REJECT_MISSING_GEOMETRY, ", ".join(h.missing_geometry))
                  for h in {h.path: h for h in missing}.values()]
    usable = [h for h in headers if not h.missing_geometry]
    if not usable:
        return None, rejections
    if len({(h.rows, h.cols) for h in usable}) > 1:
        return None, rejections + _reject_all(usable, REJECT_SERIES_MATRIX, f"{prefix}files differ in Rows/Columns")
    normals = np.stack([_unit_normal(_orientation(h)) for h in usable])
    reference = normals[0] if normals[0] @ APEX_DIRECTION_LPS >= 0 else -normals[0]
    worst_deg = float(np.degrees(np.arccos(np.clip(np.abs(normals @ reference).min(), -1.0, 1.0))))
    if worst_deg > PARALLEL_TOLERANCE_DEG:
        return None, rejections + _reject_all(
            usable, REJECT_SERIES_NOT_PARALLEL, f"{prefix}slice normals differ by up to {worst_deg:.1f} deg")
    axis_deg = float(np.degrees(np.arccos(np.clip(reference @ APEX_DIRECTION_LPS, -1.0, 1.0))))
    if axis_deg > SHORT_AXIS_MAX_ANGLE_DEG:
        return None, rejections + _reject_all(
            usable, REJECT_SERIES_NOT_SHORT_AXIS,
            f"{prefix}stack normal {axis_deg:.0f} deg from the LV long axis (limit {SHORT_AXIS_MAX_ANGLE_DEG:.0f}; "
            "a localizer, long-axis or transverse stack)")
    projections = np.array([np.asarray(h.image_position) @ reference for h in usable])
    nominal = next((v for v in (_median([h.spacing_between_slices for h in usable]),
                                _median([h.slice_thickness for h in usable])) if v and v > 0), None)
    tolerance = POSITION_TOLERANCE_FRACTION * nominal if nominal else DEFAULT_POSITION_TOLERANCE_MM
    groups = _group_positions(projections, tolerance)
    if len(groups) < MIN_POSITIONS:
        return None, rejections + _reject_all(
            usable, REJECT_SERIES_TOO_FEW_POSITIONS,
            f"{prefix}{len(groups)} slice position(s), a short-axis stack needs at least {MIN_POSITIONS}")
    rule = PHASE_RULE_TRIGGER if all(h.trigger_time is not None for h in usable) else PHASE_RULE_INSTANCE
    key = _phase_key(rule)
    centres = [float(projections[group].mean()) for group in groups]
    positions = []
    for group, centre in zip(groups, centres, strict=True):
        files = tuple(sorted((usable[i] for i in group), key=key))
        positions.append(SlicePosition(position_mm=centre - centres[0], files=files, chosen=files[0]))
    first = usable[0]
    if first.pixel_spacing is None:  # cannot happen: `usable` images have complete geometry
        raise ValueError(f"{first.label}: no PixelSpacing")
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
        series_number=first.series_number,
        study_uid=_most_common([h.study_uid for h in usable]),
        scan_key=first.series_uid,
        patient_id=_most_common([h.patient_id for h in usable]),
    )
    return plan, rejections


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def split_stacks(headers: Sequence[DicomHeader]) -> list[list[DicomHeader]]:
    """Group images into stacks by what they are, not only by the UID they carry.

    Key: SeriesInstanceUID, SeriesNumber and matrix size; within that, orientations more than
    `ORIENTATION_SPLIT_DEG` apart are separate stacks (the three planes of a localizer, or a series
    an anonymiser gave the cine's UID). Images without orientation stay with the first stack of
    their key (they are rejected there for missing geometry). Stacks come sorted by their first path.
    """
    by_key: dict[tuple[str, int | None, int, int], list[DicomHeader]] = defaultdict(list)
    for header in sorted(headers, key=lambda h: (h.path, h.frame or 0)):
        by_key[(header.series_uid, header.series_number, header.rows, header.cols)].append(header)
    cos_limit = np.cos(np.radians(ORIENTATION_SPLIT_DEG))
    stacks: list[list[DicomHeader]] = []
    for group in by_key.values():
        references: list[np.ndarray] = []
        members: list[list[DicomHeader]] = []
        loose: list[DicomHeader] = []
        for header in group:
            if header.image_orientation is None:
                loose.append(header)
                continue
            normal = _unit_normal(header.image_orientation)
            index = next((i for i, ref in enumerate(references) if abs(normal @ ref) >= cos_limit), None)
            if index is None:
                references.append(normal)
                members.append([])
                index = len(members) - 1
            members[index].append(header)
        if loose and members:
            members[0].extend(loose)
        elif loose:
            members.append(loose)
        stacks.extend(members)
    return sorted(stacks, key=lambda stack: (stack[0].path, stack[0].frame or 0))


def _describe(stack: Sequence[DicomHeader]) -> str:
    first = stack[0]
    number = f"series {first.series_number}" if first.series_number is not None else "series"
    return f"{number}, {first.rows}x{first.cols}, {len(stack)} images"


def plan_all_series(headers: Sequence[DicomHeader]) -> tuple[list[SeriesPlan], list[FileRejection]]:
    """Drop duplicates, split into stacks (`split_stacks`), plan each stack and select the cines.

    Selection rule: every stack that passes `order_base_to_apex` (MR, parallel, short-axis by
    geometry, enough positions) is a candidate. A candidate with one phase per position is rejected
    as "not a short-axis cine" when a cine candidate (several phases per position) exists in the
    same study (StudyInstanceUID), e.g. late-enhancement or mapping stacks; a study with no cine
    keeps its single-phase stack. Plans sharing a SeriesInstanceUID get distinct `scan_key`s.
    """
    kept, rejections = drop_duplicate_instances(headers)
    stacks = split_stacks(kept)
    uid_stacks: defaultdict[str, int] = defaultdict(int)
    for stack in stacks:
        uid_stacks[stack[0].series_uid] += 1
    plans: list[SeriesPlan] = []
    for stack in stacks:
        context = _describe(stack) if uid_stacks[stack[0].series_uid] > 1 else ""
        plan, stack_rejections = order_base_to_apex(stack, context)
        rejections.extend(stack_rejections)
        if plan is not None:
            plans.append(plan)
    cine_studies = {plan.study_uid: plan for plan in plans if plan.is_cine}
    selected: list[SeriesPlan] = []
    for plan in plans:
        cine = cine_studies.get(plan.study_uid)
        if plan.is_cine or cine is None:
            selected.append(plan)
            continue
        images = [h for position in plan.positions for h in position.files]
        other = f"series {cine.series_number}" if cine.series_number is not None else "another series"
        rejections.extend(_reject_all(images, REJECT_SERIES_NOT_SHORT_AXIS,
                                      f"{_describe(images)}: one phase per position, and the study has "
                                      f"a short-axis cine ({other})"))
    counts: defaultdict[str, int] = defaultdict(int)
    for plan in selected:
        counts[plan.series_uid] += 1
    return [_with_scan_key(plan) if counts[plan.series_uid] > 1 else plan for plan in selected], rejections


def _with_scan_key(plan: SeriesPlan) -> SeriesPlan:
    """A key that tells apart stacks sharing one SeriesInstanceUID (the plain UID otherwise)."""
    normal = _unit_normal(_orientation(plan.positions[0].chosen))
    signature = ",".join(f"{v:.2f}" for v in (normal if normal @ APEX_DIRECTION_LPS >= 0 else -normal))
    return replace(plan, scan_key=f"{plan.series_uid}|{plan.series_number}|{plan.rows}x{plan.cols}|{signature}")
