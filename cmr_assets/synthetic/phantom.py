"""Numerical thorax phantom: what a short-axis SSFP cine slice looks like at a given LV level.

Why: the synthetic cohort must teach what transfers to real cine CMR. The class cues are drawn
from anatomy (dark myocardial ring around bright blood with the RV crescent beside it, papillary
muscles and a ragged endocardium; outflow tract, aortic root and atria above the base; liver,
stomach, diaphragm and lung beyond the apex), and everything else is randomised per scan in the
manner of SynthSeg (Billot et al. 2023): tissue signals, shapes, distractor structures, smooth
deformation, slice profile, bias field, blur and noise (docs/real_images.md lists the ranges).

Pure numpy/scipy, no I/O. The anatomy is described in the *heart frame* of one slice plane:
in-plane millimetre coordinates ``(x, y)`` centred on the LV long axis, ``x`` pointing toward the
RV; the level along the axis is ``level_mm`` (0 = LV base plane, ``lv_length_mm`` = apex).
The DICOM geometry that places these planes in patient space lives in ``cohort.py``.

Public API
- ``Tissue``, ``sample_tissue(rng)``: per-scan tissue signals (``RANDOM_CONTRAST_SHARE`` random).
- ``Anatomy``, ``Blob``, ``sample_anatomy(rng) -> Anatomy``: one patient's heart, thorax, distractors.
- ``Acquisition``, ``sample_acquisition(rng) -> Acquisition``: scanner-side effects.
- ``PlaneGrid``: pixel coordinates of a stack's planes in the heart frame + anatomical directions;
  ``deform(grid, amplitude_mm, rng)``: the same plane with a smooth random displacement.
- ``render_position(anatomy, grid, level_mm, contractions, partial_volume_mm=0) -> list[np.ndarray]``:
  noise-free signal (blood ~ 1), one image per cardiac phase, averaged over the slice profile.
- ``smooth_field(shape, cells, rng)``, ``bias_field(shape, acquisition, rng)``: smooth random fields.
- ``apply_artefact(image, kind, grid, rng)``, ``ARTEFACT_KINDS``: ghosting, banding, signal void.
- ``acquire(image, acquisition, grid, rng) -> np.ndarray``: blur, shading, Rician noise, scale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

ARTEFACT_KINDS: tuple[str, ...] = ("motion_ghosting", "banding", "signal_void")
RANDOM_CONTRAST_SHARE = 0.1


@dataclass(frozen=True)
class Tissue:
    """Signal of each tissue in one scan (blood pool ~ 1); drawn per scan, widely (domain randomisation)."""

    blood: float
    myocardium: float
    fat: float
    liver: float
    lung: float
    muscle: float
    mediastinum: float
    vessel_wall: float
    stomach: float
    bowel: float


@dataclass(frozen=True)
class Blob:
    """A distractor structure (vessel, bowel loop, lymph node) in heart-frame mm."""

    x: float
    y: float
    half_axes: tuple[float, float]
    angle: float
    value: float
    region: str  # "abdomen": only below the diaphragm; "body": anywhere in the chest cavity; "lung"


@dataclass(frozen=True)
class Anatomy:
    """One patient's heart and thorax, in millimetres."""

    lv_length_mm: float  # base plane -> epicardial apex along the long axis
    epi_radius_mm: float  # epicardial radius at the base, end-diastole
    wall_mm: float  # myocardial wall thickness at end-diastole
    taper_exponent: float  # LV profile r(t) = R * (1 - t**p) ** 0.5
    ring_ellipticity: float
    ring_phase: float
    rv_scale: float
    rv_extent01: float  # RV ends at this fraction of the LV length
    aortic_radius_mm: float
    atrial_scale: float
    body_half_width_mm: float
    body_half_depth_mm: float
    body_offset_posterior_mm: float
    body_offset_right_mm: float
    fat_mm: float
    muscle_mm: float
    lung_spread_mm: float  # lateral distance of each lung's centre from the LV axis
    lung_half_axes_mm: tuple[float, float]
    liver_edge_mm: float  # distance of the liver dome from the LV axis at the apex level
    liver_slope: float  # how fast the dome sweeps in per mm beyond that level
    max_contraction: float  # endocardial radius shrink at end-systole
    epicardial_fat_mm: float
    trabeculation: tuple[tuple[int, float, float], ...]  # (harmonic, relative amplitude, phase) of the endocardium
    papillary: tuple[tuple[float, float, float], ...]  # (angle rad, radius / endocardial radius, radial position)
    blobs: tuple[Blob, ...]
    arms_mm: float  # lateral distance of the arms' centres from the body edge; 0 = no arms in view
    tissue: Tissue


@dataclass(frozen=True)
class Acquisition:
    """Scanner effects for one series."""

    signal_scale: float  # stored value of blood
    noise_fraction: float  # Rician sigma relative to blood
    shading_strength: float
    shading_angle: float
    bias_strength: float  # log-amplitude of a random smooth receive-field inhomogeneity
    blur_px: float
    circular_mask: bool
    deformation_mm: float  # amplitude of a smooth random displacement of the anatomy
    partial_volume_mm: float  # slice profile width averaged through the plane (0: infinitely thin)


@dataclass(frozen=True)
class PlaneGrid:
    """Heart-frame coordinates (mm) of every pixel; identical for all parallel planes of a stack."""

    x: np.ndarray
    y: np.ndarray
    pixel_mm: float
    anterior: tuple[float, float]  # in-plane unit directions, heart frame
    right: tuple[float, float]
    inferior: tuple[float, float]

    @cached_property
    def rho(self) -> np.ndarray:
        """Distance from the LV axis (mm)."""
        return np.hypot(self.x, self.y)

    @cached_property
    def angle(self) -> np.ndarray:
        """Polar angle around the LV axis, 0 toward the RV."""
        return np.arctan2(self.y, self.x)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def sample_tissue(rng: np.random.Generator) -> Tissue:
    """Per-scan tissue signals. Most scans follow SSFP contrast with wide ranges (bright blood and fat,
    dark myocardium and lung); a share get SynthSeg-style random contrast that keeps only the
    blood/myocardium order, so the classifier must learn shapes rather than one grey-level recipe."""
    if rng.random() < RANDOM_CONTRAST_SHARE:
        draw = lambda: float(rng.uniform(0.02, 1.1))  # noqa: E731
        return Tissue(blood=1.0, myocardium=float(rng.uniform(0.05, 0.6)), fat=draw(), liver=draw(),
                      lung=float(rng.uniform(0.0, 0.3)), muscle=draw(), mediastinum=draw(), vessel_wall=draw(),
                      stomach=draw(), bowel=draw())
    return Tissue(
        blood=1.0,
        myocardium=float(rng.uniform(0.12, 0.45)),
        fat=float(rng.uniform(0.45, 1.25)),
        liver=float(rng.uniform(0.15, 0.55)),
        lung=float(rng.uniform(0.0, 0.12)),
        muscle=float(rng.uniform(0.12, 0.45)),
        mediastinum=float(rng.uniform(0.1, 0.5)),
        vessel_wall=float(rng.uniform(0.1, 0.4)),
        stomach=float(rng.uniform(0.05, 1.1)),
        bowel=float(rng.uniform(0.2, 0.9)),
    )


def _sample_blobs(rng: np.random.Generator, tissue: Tissue) -> tuple[Blob, ...]:
    """Distractors: bowel loops and vessels below the diaphragm, vessels and nodes in the chest, lung vessels."""
    blobs = []
    for region, count, size in (("abdomen", int(rng.integers(3, 10)), (8.0, 30.0)),
                                ("body", int(rng.integers(4, 14)), (3.0, 22.0)),
                                ("lung", int(rng.integers(4, 16)), (1.0, 4.0))):
        for _ in range(count):
            bearing = float(rng.uniform(0, 2 * np.pi))
            distance = float(rng.uniform(35.0, 150.0))
            half = (float(rng.uniform(*size)), float(rng.uniform(*size)))
            value = (float(rng.uniform(0.3, 1.0)) if region == "lung"
                     else float(rng.choice([tissue.bowel, tissue.stomach, tissue.fat, rng.uniform(0.05, 1.0)])))
            blobs.append(Blob(x=distance * np.cos(bearing), y=distance * np.sin(bearing), half_axes=half,
                              angle=float(rng.uniform(0, np.pi)), value=value, region=region))
    return tuple(blobs)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw an adult heart/thorax; ranges are wider than typical reference values on purpose."""
    tissue = sample_tissue(rng)
    epi_radius = float(rng.uniform(22.0, 48.0))  # up to dilated hearts
    lung_half_axes = (float(rng.uniform(22.0, 55.0)), float(rng.uniform(50.0, 100.0)))
    half_depth = float(rng.uniform(100.0, 160.0))
    fat = float(rng.uniform(3.0, 35.0))
    muscle = float(rng.uniform(6.0, 18.0))
    n_papillary = int(rng.choice([2, 2, 3]))
    return Anatomy(
        lv_length_mm=float(rng.uniform(62.0, 105.0)),
        epi_radius_mm=epi_radius,
        wall_mm=float(rng.uniform(5.5, 15.0)),
        taper_exponent=float(rng.uniform(1.5, 3.0)),
        ring_ellipticity=float(rng.uniform(0.0, 0.12)),
        ring_phase=float(rng.uniform(0, np.pi)),
        rv_scale=float(rng.uniform(0.8, 1.6)),
        rv_extent01=float(rng.uniform(0.65, 0.95)),
        aortic_radius_mm=float(rng.uniform(10.0, 17.0)),
        atrial_scale=float(rng.uniform(0.75, 1.3)),
        body_half_width_mm=float(rng.uniform(150.0, 240.0)),
        body_half_depth_mm=half_depth,
        # The heart lies against the anterior chest wall: 30-65 mm from the LV axis to its inner face.
        body_offset_posterior_mm=half_depth - 1.3 * fat - muscle - float(rng.uniform(30.0, 65.0)),
        body_offset_right_mm=float(rng.uniform(10.0, 60.0)),
        fat_mm=fat,
        muscle_mm=muscle,
        # the left lung lies against the LV's lateral wall, with some fat or pericardium between
        lung_spread_mm=epi_radius + lung_half_axes[0] + float(rng.uniform(0.0, 30.0)),
        lung_half_axes_mm=lung_half_axes,
        # The heart lies on the diaphragm: oblique short-axis planes cut the liver dome below the
        # heart at mid-ventricular and even basal levels in many patients, so the liver is in view
        # well before the apex (a shallow slope) and is no cue to the class by itself.
        liver_edge_mm=float(rng.uniform(15.0, 80.0)),
        liver_slope=float(rng.uniform(0.2, 1.5)),
        max_contraction=float(rng.uniform(0.15, 0.4)),
        epicardial_fat_mm=float(rng.uniform(0.5, 7.0)),
        trabeculation=tuple((int(k), float(rng.uniform(0.0, 0.035)), float(rng.uniform(0, 2 * np.pi)))
                            for k in rng.choice(np.arange(4, 17), size=int(rng.integers(2, 6)), replace=False)),
        papillary=tuple((float(np.deg2rad(base + rng.normal(0, 18))), float(rng.uniform(0.1, 0.22)),
                         float(rng.uniform(0.5, 0.8))) for base in (-60.0, 170.0, 60.0)[:n_papillary]),
        blobs=_sample_blobs(rng, tissue),
        arms_mm=float(rng.uniform(35.0, 80.0)) if rng.random() < 0.35 else 0.0,
        tissue=tissue,
    )


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    """Draw scanner-side effects: intensity scale, noise, coil shading and bias, blur, deformation."""
    return Acquisition(
        signal_scale=float(rng.uniform(120.0, 900.0)),
        noise_fraction=_log_uniform(rng, 0.006, 0.07),
        shading_strength=float(rng.uniform(0.1, 1.3)),
        shading_angle=float(rng.uniform(0, 2 * np.pi)),
        bias_strength=float(rng.uniform(0.05, 0.45)),
        blur_px=float(rng.uniform(0.3, 1.6)),
        circular_mask=bool(rng.random() < 0.3),
        deformation_mm=float(rng.uniform(0.0, 7.0)),
        partial_volume_mm=float(rng.uniform(4.0, 10.0)),
    )


def _soft(signed_distance_mm: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Anti-aliased inside-mask from a signed distance (negative inside), one-pixel ramp."""
    return np.clip(0.5 - signed_distance_mm / pixel_mm, 0.0, 1.0)


def _ellipse_distance(grid: PlaneGrid, centre: tuple[float, float], half_axes: tuple[float, float],
                      major: tuple[float, float]) -> np.ndarray:
    """Approximate signed distance to a rotated ellipse (exact for circles)."""
    dx, dy = grid.x - centre[0], grid.y - centre[1]
    along = dx * major[0] + dy * major[1]
    across = -dx * major[1] + dy * major[0]
    a, b = half_axes
    return (np.sqrt((along / a) ** 2 + (across / b) ** 2) - 1.0) * min(a, b)


def _paint(image: np.ndarray, mask: np.ndarray, value: float | np.ndarray) -> None:
    """Composite `value` over `image` where `mask` (0..1) is set, in place."""
    image += mask * (value - image)


_Direction = tuple[float, float] | np.ndarray  # an in-plane (x, y) vector, heart frame


def _offset(*terms: tuple[_Direction, float]) -> tuple[float, float]:
    """Sum of in-plane direction * distance terms."""
    return (sum(d[0] * s for d, s in terms), sum(d[1] * s for d, s in terms))


def _lv_radii(anatomy: Anatomy, level_mm: float, contraction: float) -> tuple[float, float]:
    """(endocardial, epicardial) radius at a level; wall volume is conserved as the LV contracts."""
    t = max(level_mm, 0.0) / anatomy.lv_length_mm
    profile = max(0.0, 1.0 - t ** anatomy.taper_exponent) ** 0.5
    epi = anatomy.epi_radius_mm * profile
    cavity_length = anatomy.lv_length_mm - 0.8 * anatomy.wall_mm
    tc = max(level_mm, 0.0) / cavity_length
    endo = (anatomy.epi_radius_mm - anatomy.wall_mm) * max(0.0, 1.0 - tc ** anatomy.taper_exponent) ** 0.5
    endo_c = endo * (1.0 - contraction)
    epi_c = (endo_c**2 + max(epi**2 - endo**2, 0.0)) ** 0.5
    return endo_c, epi_c


def _dome(grid: PlaneGrid, toward: np.ndarray, edge_mm: float) -> np.ndarray:
    """Signed distance-like field of a diaphragm dome: positive beyond the dome along `toward`."""
    toward = toward / np.linalg.norm(toward)
    along = grid.x * toward[0] + grid.y * toward[1]
    across = -grid.x * toward[1] + grid.y * toward[0]
    return along - edge_mm - across**2 / 160.0


def _thorax(anatomy: Anatomy, grid: PlaneGrid, level_mm: float) -> np.ndarray:
    """Body wall, lungs, spine, descending aorta, liver and stomach: everything that does not beat."""
    tis = anatomy.tissue
    px = grid.pixel_mm
    image = np.zeros_like(grid.x)
    anterior, right = np.asarray(grid.anterior), np.asarray(grid.right)
    posterior, left, inferior = -anterior, -right, np.asarray(grid.inferior)
    lateral = np.array([-anterior[1], anterior[0]])
    lateral = lateral if lateral @ right > 0 else -lateral  # perpendicular to anterior, toward the right
    centre = _offset((posterior, anatomy.body_offset_posterior_mm), (lateral, anatomy.body_offset_right_mm))
    half = (anatomy.body_half_width_mm, anatomy.body_half_depth_mm)
    body = _ellipse_distance(grid, centre, half, tuple(lateral))
    # Subcutaneous fat is thickest anteriorly, the paraspinal muscles make the back wall thick.
    radial = np.arctan2(grid.y - centre[1], grid.x - centre[0])
    facing_front = np.cos(radial - np.arctan2(anterior[1], anterior[0]))
    fat = anatomy.fat_mm * (0.5 + 0.8 * np.clip(facing_front, 0.0, 1.0))
    muscle = anatomy.muscle_mm * (1.0 + 3.0 * np.clip(-facing_front, 0.0, 1.0))
    _paint(image, _soft(body, px), tis.fat)
    _paint(image, _soft(body + fat, px), tis.muscle)
    cavity = _soft(body + fat + muscle, px)
    _paint(image, cavity, tis.mediastinum)
    lungs = np.zeros_like(image)
    for side, spread in ((left, anatomy.lung_spread_mm), (right, anatomy.lung_spread_mm + 10.0)):
        lung_centre = _offset((side, spread), (posterior, 35.0))
        lung = _ellipse_distance(grid, lung_centre, anatomy.lung_half_axes_mm, tuple(lateral))
        lungs = np.maximum(lungs, _soft(lung, px) * cavity)
    _paint(image, lungs, tis.lung)
    spine_centre = _offset((posterior, anatomy.body_offset_posterior_mm + half[1] - 45.0),
                           (grid.right, anatomy.body_offset_right_mm))
    spine = np.hypot(grid.x - spine_centre[0], grid.y - spine_centre[1])
    _paint(image, _soft(spine - 26.0, px), tis.muscle)
    _paint(image, _soft(spine - 17.0, px), tis.muscle * 1.7)
    aorta_centre = _offset((spine_centre, 1.0), (grid.anterior, 30.0), (left, 16.0))
    aorta = np.hypot(grid.x - aorta_centre[0], grid.y - aorta_centre[1])
    _paint(image, _soft(aorta - 13.0, px), tis.fat * 0.6)
    _paint(image, _soft(aorta - 10.5, px), tis.blood * 0.9)
    # Below the diaphragm: liver on the right, stomach/spleen on the left; the domes sweep across
    # the plane as the slices go beyond the apex (more inferior).
    beyond = level_mm - anatomy.lv_length_mm
    liver = _dome(grid, right + inferior + 0.4 * posterior, anatomy.liver_edge_mm - anatomy.liver_slope * beyond)
    stomach = _dome(grid, left + inferior + 0.6 * posterior,
                    anatomy.liver_edge_mm + 25.0 - 0.8 * anatomy.liver_slope * beyond)
    abdomen = np.zeros_like(image)
    for dome, value in ((liver, tis.liver), (stomach, tis.stomach)):
        _paint(image, _soft(-dome - 4.0, px) * cavity, tis.muscle)  # diaphragm
        inside = _soft(-dome, px) * cavity
        _paint(image, inside, value)
        abdomen = np.maximum(abdomen, inside)
    regions = {"abdomen": abdomen, "body": cavity * (1.0 - lungs) * (1.0 - abdomen), "lung": lungs}
    for blob in anatomy.blobs:
        reach = max(blob.half_axes) + 2 * px
        near = np.nonzero((np.abs(grid.x - blob.x) < reach) & (np.abs(grid.y - blob.y) < reach))
        if not len(near[0]):
            continue
        major = (np.cos(blob.angle), np.sin(blob.angle))
        local = replace(grid, x=grid.x[near], y=grid.y[near])
        mask = _soft(_ellipse_distance(local, (blob.x, blob.y), blob.half_axes, major), px)
        patch = image[near]
        _paint(patch, mask * regions[blob.region][near], blob.value)
        image[near] = patch
    if anatomy.arms_mm > 0:
        for side in (lateral, -lateral):
            arm_centre = _offset((centre, 1.0), (side, anatomy.body_half_width_mm + anatomy.arms_mm))
            arm = _ellipse_distance(grid, arm_centre, (45.0, 60.0), tuple(lateral))
            _paint(image, _soft(arm, px), tis.fat)
            _paint(image, _soft(arm + anatomy.fat_mm * 0.5, px), tis.muscle)
            _paint(image, _soft(np.hypot(grid.x - arm_centre[0], grid.y - arm_centre[1]) - 12.0, px), tis.lung)
    return image


def _heart(image: np.ndarray, anatomy: Anatomy, grid: PlaneGrid, level_mm: float, contraction: float) -> None:
    """Paint the heart at one level and phase: LV ring + RV below the base, great vessels above."""
    tis = anatomy.tissue
    px = grid.pixel_mm
    anterior, right = np.asarray(grid.anterior), np.asarray(grid.right)
    posterior, left = -anterior, -right
    rho, angle = grid.rho, grid.angle
    rho_shaped = rho / (1.0 + anatomy.ring_ellipticity * np.cos(2 * (angle - anatomy.ring_phase)))
    endo, epi = _lv_radii(anatomy, level_mm, contraction)
    base_epi = anatomy.epi_radius_mm
    ring_fraction = float(np.clip(0.5 + level_mm / 12.0, 0.0, 1.0))  # the ring opens above the base
    atria = float(np.clip(0.25 - level_mm / 12.0, 0.0, 1.0))  # atria and great vessels above the base
    rv_length = anatomy.rv_extent01 * anatomy.lv_length_mm
    rv_profile = max(0.0, 1.0 - (max(level_mm, 0.0) / rv_length) ** 2) ** 0.5 * float(
        np.clip((level_mm + 12.0) / 12.0, 0.0, 1.0))
    rv_size = rv_profile * anatomy.rv_scale * base_epi * (1.0 - 0.2 * contraction)
    rv = None
    if rv_size > 2.0:
        # Outer RV border hugging the septum: the LV ring painted over it leaves a crescent.
        hug = max(_lv_radii(anatomy, level_mm, 0.0)[1], 0.5 * rv_size)
        thickness = 0.7 * rv_size
        centre_x, half_x = (0.7 * hug + thickness) / 2, (1.3 * hug + thickness) / 2
        half_y = 1.05 * hug / (1.0 - (centre_x / half_x) ** 2) ** 0.5  # tips meet the septum's edges
        rv = _ellipse_distance(grid, _offset(((1.0, 0.0), centre_x), (anterior, 0.1 * hug)), (half_x, half_y),
                               (1.0, 0.0))
    # Epicardial/pericardial fat around the whole heart; a small pad persists just beyond the apex.
    envelope = rho_shaped - max(epi + anatomy.epicardial_fat_mm, 8.0 if level_mm < anatomy.lv_length_mm + 10.0 else 0.0)
    if rv is not None:
        envelope = np.minimum(envelope, rv - 3.0)
    if atria > 0:
        envelope = np.minimum(envelope, rho - (45.0 * anatomy.atrial_scale * atria**0.5))
    _paint(image, _soft(envelope, px) * 0.8, tis.fat * 0.8)
    if rv is not None:
        _paint(image, _soft(rv - 2.5, px), tis.myocardium)
        _paint(image, _soft(rv, px), tis.blood * 0.95)
    if atria > 0:
        scale = anatomy.atrial_scale * atria**0.5
        ao_radius = anatomy.aortic_radius_mm * atria**0.3
        ao_centre = _offset((anterior, 6.0), (right, 6.0))
        chambers = (
            (_offset((ao_centre, 1.0), (posterior, ao_radius + 18.0 * scale)), (28.0 * scale, 18.0 * scale), 0.85),
            (_offset((ao_centre, 1.0), (right, ao_radius + 20.0 * scale), (posterior, 8.0)),
             (18.0 * scale, 22.0 * scale), 0.85),
            (_offset((ao_centre, 1.0), (anterior, ao_radius + 13.0), (left, 8.0)), (15.0 * scale, 11.0 * scale), 0.9),
        )
        for centre, half, value in chambers:  # left atrium, right atrium, pulmonary trunk / RVOT
            d = _ellipse_distance(grid, centre, half, grid.right)
            _paint(image, _soft(d - 2.0, px), tis.vessel_wall)
            _paint(image, _soft(d, px), tis.blood * value)
        dx, dy = grid.x - ao_centre[0], grid.y - ao_centre[1]
        sinus = 1.0 + 0.13 * np.cos(3 * np.arctan2(dy, dx)) * float(np.clip(-level_mm / 8.0, 0.0, 1.0))
        ao = np.hypot(dx, dy) / sinus - ao_radius
        _paint(image, _soft(ao - 2.0, px), tis.vessel_wall)
        _paint(image, _soft(ao, px), tis.blood * 0.95)
    if ring_fraction > 0 and epi > 0:
        ring = _soft(rho_shaped - epi, px)
        if ring_fraction < 1.0:
            # Near the base the ring opens toward the outflow tract (anterior-septal).
            opening = anterior + np.array([1.0, 0.0])
            gap = np.abs(np.angle(np.exp(1j * (angle - np.arctan2(opening[1], opening[0])))))
            ring *= np.clip((gap - np.pi * (1.0 - ring_fraction)) * rho.clip(1.0) / px, 0.0, 1.0)
        _paint(image, ring, tis.myocardium)
        if endo > 0:
            # Trabeculae make the endocardial border ragged, more so toward the apex.
            ragged = 1.0 + (0.5 + level_mm / anatomy.lv_length_mm) * sum(
                amplitude * np.cos(k * angle + phase) for k, amplitude, phase in anatomy.trabeculation)
            _paint(image, _soft(rho_shaped - endo * ragged, px) * min(1.0, 2.0 * ring_fraction), tis.blood)
            if 0.12 < level_mm / anatomy.lv_length_mm < 0.8 and endo > 6.0:
                for theta, size, radial in anatomy.papillary:
                    c = (radial * endo * np.cos(theta), radial * endo * np.sin(theta))
                    _paint(image, _soft(np.hypot(grid.x - c[0], grid.y - c[1]) - size * endo, px), tis.myocardium)


def render_position(anatomy: Anatomy, grid: PlaneGrid, level_mm: float, contractions: list[float],
                    partial_volume_mm: float = 0.0) -> list[np.ndarray]:
    """Noise-free signal at one slice level, one image per contraction (0 = end-diastole).

    With `partial_volume_mm` > 0 the heart is averaged over three sub-planes that far apart in total
    (the slice profile), so a ring that ends inside the slice fades rather than vanishing; the
    thorax, which changes little across a slab and costs most to draw, is drawn at the centre.
    """
    offsets = (0.0,) if partial_volume_mm <= 0 else (-partial_volume_mm / 2, 0.0, partial_volume_mm / 2)
    thorax = _thorax(anatomy, grid, level_mm)
    images = [np.zeros_like(grid.x) for _ in contractions]
    for offset in offsets:
        for image, contraction in zip(images, contractions, strict=True):
            layer = thorax.copy()
            _heart(layer, anatomy, grid, level_mm + offset, contraction * anatomy.max_contraction)
            image += layer / len(offsets)
    return images


def smooth_field(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, roughly unit-std random field varying over about `cells` cells per side (cheap:
    a coarse normal grid upsampled with cubic splines)."""
    coarse = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    fine = zoom(coarse, ((shape[0] + 2) / (cells + 3), (shape[1] + 2) / (cells + 3)), order=3)
    return fine[1:shape[0] + 1, 1:shape[1] + 1]


def deform(grid: PlaneGrid, amplitude_mm: float, rng: np.random.Generator) -> PlaneGrid:
    """The same plane with the anatomy displaced by a smooth random field (shapes bend, stay plausible)."""
    if amplitude_mm <= 0:
        return grid
    shape = grid.x.shape
    return replace(grid, x=grid.x + amplitude_mm * smooth_field(shape, 4, rng),
                   y=grid.y + amplitude_mm * smooth_field(shape, 4, rng))


def bias_field(shape: tuple[int, int], acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative smooth receive-field inhomogeneity, mean about 1."""
    return np.exp(acquisition.bias_strength * smooth_field(shape, 3, rng)).astype(np.float32)


def _smooth_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_px)
    return field / (field.std() + 1e-6)


def apply_artefact(image: np.ndarray, kind: str, grid: PlaneGrid, rng: np.random.Generator) -> np.ndarray:
    """Corrupt a clean image with one artefact kind from `ARTEFACT_KINDS`."""
    if kind == "motion_ghosting":
        axis = int(rng.integers(0, 2))
        shift = image.shape[axis] // int(rng.integers(3, 6))
        gain = float(rng.uniform(0.25, 0.45))
        ghost = np.roll(image, shift, axis=axis) + np.roll(image, -shift, axis=axis)
        blurred = gaussian_filter(image, (0, 2.5) if axis == 0 else (2.5, 0))
        return np.abs(blurred + gain * ghost * np.exp(1j * rng.uniform(0.5, 2.5))).astype(np.float32)
    if kind == "banding":
        theta = rng.uniform(0, np.pi)
        along = grid.x * np.cos(theta) + grid.y * np.sin(theta)
        across = -grid.x * np.sin(theta) + grid.y * np.cos(theta)
        period = rng.uniform(35.0, 60.0)
        phase = (along + across**2 / rng.uniform(80.0, 200.0)) / period
        bands = np.abs(np.sin(np.pi * phase)) ** 0.35
        return (image * (0.08 + 0.92 * bands)).astype(np.float32)
    if kind == "signal_void":
        centre = (rng.uniform(-20, 20) + 30 * grid.anterior[0], rng.uniform(-20, 20) + 30 * grid.anterior[1])
        dx, dy = grid.x - centre[0], grid.y - centre[1]
        phi = np.arctan2(dy, dx)
        radius = rng.uniform(20.0, 40.0) * (1.0 + 0.25 * np.cos(2 * phi + rng.uniform(0, 6)) + 0.12 * np.cos(3 * phi))
        d = np.hypot(dx, dy) - radius
        void = np.clip(0.5 - d / 6.0, 0.0, 1.0) * rng.uniform(0.8, 0.95)
        rim = np.exp(-((d - 4.0) ** 2) / 10.0) * (phi > rng.uniform(-3, 0))
        return (image * (1.0 - void) + 0.8 * rim * (image > 0.05)).astype(np.float32)
    raise ValueError(f"unknown artefact kind {kind!r}; expected one of {ARTEFACT_KINDS}")


def scan_textures(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Multiplicative tissue heterogeneity for one scan (fine + coarse), mean 1."""
    fine, coarse = rng.uniform(0.02, 0.12), rng.uniform(0.03, 0.12)
    texture = 1.0 + fine * _smooth_noise(shape, float(rng.uniform(0.8, 2.0)), rng) + coarse * _smooth_noise(
        shape, 6.0, rng)
    return texture.clip(0.3, None).astype(np.float32)


def coil_shading(grid: PlaneGrid, acquisition: Acquisition) -> np.ndarray:
    """Smooth receive-coil sensitivity: brighter near the anterior/posterior surface coils."""
    direction = np.cos(acquisition.shading_angle), np.sin(acquisition.shading_angle)
    span = float(np.ptp(grid.x) + np.ptp(grid.y)) / 2.0
    ramp = (grid.x * direction[0] + grid.y * direction[1]) / span
    near_coil = np.hypot(grid.x - 90.0 * grid.anterior[0], grid.y - 90.0 * grid.anterior[1]) / span
    return (np.exp(acquisition.shading_strength * ramp) * (0.7 + 0.6 * np.exp(-4.0 * near_coil**2))).astype(
        np.float32
    )


def acquire(image: np.ndarray, acquisition: Acquisition, shading: np.ndarray, texture: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """Turn a clean signal into a magnitude image: texture, blur, shading, Rician noise, scale."""
    signal = gaussian_filter(image * texture, acquisition.blur_px) * shading
    sigma = acquisition.noise_fraction
    noise = rng.standard_normal((2, *image.shape), dtype=np.float32) * sigma
    magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    if acquisition.circular_mask:
        rows, cols = image.shape
        r, c = np.ogrid[:rows, :cols]
        outside = (r - (rows - 1) / 2) ** 2 + (c - (cols - 1) / 2) ** 2 > (min(rows, cols) / 2) ** 2
        magnitude[outside] = 0.0
    return magnitude * acquisition.signal_scale
