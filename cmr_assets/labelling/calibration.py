"""Fit the simulated experts' parameters to a pilot with real experts (`cmr-assets calibrate-experts`).

Why: the strategy comparison follows from `SimulatorParams`, of which the paper constrains only the
single-image terms. A short pilot (`campaign.design_pilot_tasks`: 30 minutes per expert per
strategy, every image and batch seen by every expert and once more by one of them) measures
the rest, without any reference labels:

- single images: intra-observer agreement (same expert, same image) -> fresh noise
  `single_look_noise_sd`; inter-observer agreement -> the persistent `personal_impression_sd`;
  each expert's rate of `too_basal` / `too_apical` against the other experts' on the same images ->
  the experts' relative boundary biases;
- ranking: pairwise concordance of two orderings of the same 8 images by the same expert ->
  `side_by_side_noise_sd`, by different experts -> `side_by_side_impression_share`; agreement of
  the divider-implied classes of the same images (same / different expert) ->
  `divider_impression_share`;
- the mean time per image and per batch -> `seconds_per_single`, `seconds_per_batch`, and the
  spread of log times -> `duration_log_sd`.

Method: simulated moments. The same pilot design, built on a stand-in cohort with the default
cohort's geometry (`reference_like_cohort`; the pilot's own images have no known position), is
simulated for candidate parameters with fixed random numbers, and the parameters minimising the
squared differences to the pilot's statistics (each scaled by its binomial standard error) are
kept: the two single-image noise terms on a grid, the boundary biases by a linear step on their
measured effect, then the three side-by-side terms by coordinate-wise grid search. Not identified
by repeats and kept from the base parameters: `image_ambiguity_sd` (shared by every expert and
every look), the mean boundary bias (no reference), the artefact flag rates.

Public API:
- `PilotStatistics`, `pilot_statistics(single_rows, ranking_rows) -> PilotStatistics`: the
  statistics of annotation rows (`raw_annotations` columns).
- `fit_simulator_params(observed, base=SimulatorParams(), seed=0) -> Calibration`: the fitted
  `params`, the pilot's and the fitted model's statistics.
- `calibrate_from_files(paths, base=None, seed=0) -> Calibration`: the same from annotation files
  or folders of them (`*.jsonl`), as `cmr-assets calibrate-experts` reads them;
  `Calibration.write(path)` writes the parameter file the simulated campaigns accept.

How well a 30-minute pilot pins each parameter: docs/methods.md (`scripts/calibration_recovery.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmr_assets.domain import BATCH_SIZE, CLASS_INDEX
from cmr_assets.labelling.annotation_ingest import annotation_file_rows, latest_answer_per_task
from cmr_assets.labelling.campaign import annotator_ids, design_pilot_tasks
from cmr_assets.labelling.simulator import ExpertPanel, SimulatorParams, params_to_json, reference_like_cohort

_UPPER = np.triu_indices(BATCH_SIZE, 1)


@dataclass(frozen=True)
class _Looks:
    """One strategy's looks as arrays, with the look pairs the statistics compare."""

    expert: np.ndarray  # (L,)
    classes: np.ndarray  # (L,) single, or (L, 8) ranking: divider-implied class per member
    ranks: np.ndarray | None  # (L, 8) ranking: each member's place in the order
    intra: np.ndarray  # (P, 2) look pairs: same expert, same image / batch
    inter: np.ndarray  # (Q, 2) look pairs: different experts, first looks

    @property
    def ranked(self) -> np.ndarray:
        """`ranks`, which only ranking looks have."""
        if self.ranks is None:
            raise ValueError("single-image looks have no ranks")
        return self.ranks


def _pairs(expert: np.ndarray, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intra pairs (an expert's first two looks at a unit) and inter pairs (first looks of two
    experts at a unit), as look indices; `unit` is the image or the batch's image set."""
    frame = pd.DataFrame({"look": np.arange(len(expert)), "expert": expert, "unit": unit})
    frame["nth"] = frame.groupby(["expert", "unit"]).cumcount()
    first, second = frame[frame["nth"] == 0], frame[frame["nth"] == 1]
    intra = first.merge(second, on=["expert", "unit"])[["look_x", "look_y"]].to_numpy()
    both = first.merge(first, on="unit")
    inter = both[both["expert_x"] < both["expert_y"]][["look_x", "look_y"]].to_numpy()
    return intra.reshape(-1, 2), inter.reshape(-1, 2)


def _experts(annotators: pd.Series) -> tuple[np.ndarray, list[str]]:
    roster = sorted(set(annotators), key=lambda a: (len(a), a))  # as the simulator numbers them
    return annotators.map({a: i for i, a in enumerate(roster)}).to_numpy(dtype=np.int64), roster


def _divider_classes(divider_a: np.ndarray, divider_b: np.ndarray) -> np.ndarray:
    """Class (0/1/2) of each place 0..7 in the order, from the two dividers; (L, 8)."""
    place = np.arange(BATCH_SIZE)[None, :]
    return (place >= divider_a[:, None]).astype(np.int64) + (place >= divider_b[:, None])


@dataclass(frozen=True)
class PilotStatistics:
    """What a pilot measured (rates in 0..1); counts say how much each rests on."""

    annotators: tuple[str, ...]
    single_intra_agreement: float
    single_inter_agreement: float
    n_single_intra_pairs: int
    n_single_inter_pairs: int
    basal_rate_difference: tuple[float, ...]  # each expert's too_basal rate minus the others' on shared images
    apical_rate_difference: tuple[float, ...]
    ranking_intra_concordance: float
    ranking_inter_concordance: float
    ranking_intra_class_agreement: float
    ranking_inter_class_agreement: float
    n_ranking_intra_pairs: int
    n_ranking_inter_pairs: int
    seconds_per_single: float
    seconds_per_batch: float
    duration_log_sd: float

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _agreement(classes: np.ndarray, pairs: np.ndarray) -> float:
    return float((classes[pairs[:, 0]] == classes[pairs[:, 1]]).mean()) if len(pairs) else float("nan")


def _concordance(ranks: np.ndarray, pairs: np.ndarray) -> float:
    """Share of member pairs two looks at the same batch put in the same order."""
    if not len(pairs):
        return float("nan")
    first, second = ranks[pairs[:, 0]], ranks[pairs[:, 1]]
    same = np.sign(first[:, _UPPER[0]] - first[:, _UPPER[1]]) == np.sign(second[:, _UPPER[0]] - second[:, _UPPER[1]])
    return float(same.mean())


def _rate_differences(looks: _Looks, n_experts: int, cls: int) -> tuple[float, ...]:
    """Per expert: mean over inter pairs of [own look is `cls`] - [other expert's look is `cls`]."""
    both = np.concatenate([looks.inter, looks.inter[:, ::-1]])
    own = looks.expert[both[:, 0]]
    diff = (looks.classes[both[:, 0]] == cls).astype(float) - (looks.classes[both[:, 1]] == cls)
    return tuple(float(diff[own == e].mean()) if (own == e).any() else 0.0 for e in range(n_experts))


def _single_looks(expert: np.ndarray, image: np.ndarray, classes: np.ndarray) -> _Looks:
    intra, inter = _pairs(expert, image)
    return _Looks(expert, classes, None, intra, inter)


def _ranking_looks(expert: np.ndarray, unit: np.ndarray, ranks: np.ndarray, classes: np.ndarray) -> _Looks:
    intra, inter = _pairs(expert, unit)
    return _Looks(expert, classes, ranks, intra, inter)


def _log_sd(*seconds: np.ndarray) -> float:
    """Pooled sd of log task times around each task kind's own mean log time."""
    centred = [np.log(s[s > 0]) - np.log(s[s > 0]).mean() for s in seconds if (s > 0).sum() > 1]
    return float(np.concatenate(centred).std()) if centred else 0.0


def pilot_statistics(single_rows: pd.DataFrame, ranking_rows: pd.DataFrame) -> PilotStatistics:
    """Statistics of a pilot's annotation rows (columns of `raw_annotations_single` / `_ranking`);
    artefact-flagged single looks without a label are left out, looks count in submission order."""
    single = single_rows[single_rows["label"].isin(list(CLASS_INDEX))].sort_values("submitted_at", kind="stable")
    ranking = ranking_rows.sort_values("submitted_at", kind="stable")
    expert, roster = _experts(pd.concat([single["annotator_id"], ranking["annotator_id"]]))
    single_expert, ranking_expert = expert[: len(single)], expert[len(single):]
    single_looks = _single_looks(single_expert, pd.factorize(single["slice_id"])[0],
                                 single["label"].map(CLASS_INDEX).to_numpy(dtype=np.int64))
    orders = [list(map(str, order)) for order in ranking["order"]]
    members = [sorted(order) for order in orders]
    ranks = np.array([[order.index(m) for m in sorted_members] for order, sorted_members in
                      zip(orders, members, strict=True)], dtype=np.int64).reshape(-1, BATCH_SIZE)
    by_place = _divider_classes(ranking["divider_a"].to_numpy(), ranking["divider_b"].to_numpy())
    ranking_looks = _ranking_looks(ranking_expert, pd.factorize(pd.Series(["|".join(m) for m in members]))[0],
                                   ranks, np.take_along_axis(by_place, ranks, axis=1))
    single_seconds = (single_rows["submitted_at"] - single_rows["started_at"]).dt.total_seconds().to_numpy()
    batch_seconds = (ranking_rows["submitted_at"] - ranking_rows["started_at"]).dt.total_seconds().to_numpy()
    return _statistics(single_looks, ranking_looks, tuple(roster), single_seconds, batch_seconds)


def _statistics(single: _Looks, ranking: _Looks, roster: tuple[str, ...], single_seconds: np.ndarray,
                batch_seconds: np.ndarray) -> PilotStatistics:
    return PilotStatistics(
        annotators=roster,
        single_intra_agreement=_agreement(single.classes, single.intra),
        single_inter_agreement=_agreement(single.classes, single.inter),
        n_single_intra_pairs=len(single.intra), n_single_inter_pairs=len(single.inter),
        basal_rate_difference=_rate_differences(single, len(roster), 0),
        apical_rate_difference=_rate_differences(single, len(roster), 2),
        ranking_intra_concordance=_concordance(ranking.ranked, ranking.intra),
        ranking_inter_concordance=_concordance(ranking.ranked, ranking.inter),
        ranking_intra_class_agreement=_agreement(ranking.classes, ranking.intra),
        ranking_inter_class_agreement=_agreement(ranking.classes, ranking.inter),
        n_ranking_intra_pairs=len(ranking.intra), n_ranking_inter_pairs=len(ranking.inter),
        seconds_per_single=float(np.mean(single_seconds)) if len(single_seconds) else float("nan"),
        seconds_per_batch=float(np.mean(batch_seconds)) if len(batch_seconds) else float("nan"),
        duration_log_sd=_log_sd(single_seconds, batch_seconds),
    )


class _PilotModel:
    """The pilot design on a stand-in cohort, simulated for candidate parameters with fixed random
    numbers, so statistics change only through the parameters."""

    def __init__(self, base: SimulatorParams, seed: int, n_scans: int = 300, repeats: int = 6) -> None:
        slices, self.reference = reference_like_cohort(n_scans, seed=seed + 1000)
        self.seed = seed
        experts = annotator_ids(base.n_experts)
        # a pilot `repeats` times longer than 30 min: the model's statistics are nearly noise-free
        tasks_single, tasks_ranking = design_pilot_tasks(slices, experts, minutes=30.0 * repeats, seed=seed)
        index = pd.Index(self.reference["slice_id"])
        number = {a: i for i, a in enumerate(experts)}
        self.single_expert = tasks_single["annotator_id"].map(number).to_numpy()
        self.single_image = index.get_indexer(tasks_single["slice_id"])
        members = [sorted(ids) for ids in tasks_ranking["slice_ids"]]
        self.ranking_expert = tasks_ranking["annotator_id"].map(number).to_numpy()
        self.ranking_images = index.get_indexer(np.concatenate(members)).reshape(len(members), BATCH_SIZE)
        # unit impressions and zero biases, rescaled and shifted for each candidate (`_panel`)
        self.unit_panel = ExpertPanel.build(self.reference, replace(
            base, personal_impression_sd=1.0, basal_boundary_bias=(0.0,) * base.n_experts,
            apical_boundary_bias=(0.0,) * base.n_experts), seed)
        single_pairs = _pairs(self.single_expert, self.single_image)
        ranking_pairs = _pairs(self.ranking_expert, pd.factorize(pd.Series(["|".join(m) for m in members]))[0])
        self.single_pairs, self.ranking_pairs = single_pairs, ranking_pairs

    def _panel(self, params: SimulatorParams) -> ExpertPanel:
        """`ExpertPanel.build(reference, params, seed)` without redrawing or refitting anything."""
        unit = self.unit_panel
        return replace(unit, params=params, impression=unit.impression * params.personal_impression_sd,
                       thresholds=unit.thresholds + np.column_stack([params.basal_boundary_bias,
                                                                     params.apical_boundary_bias]))

    def single(self, params: SimulatorParams) -> _Looks:
        panel = self._panel(params)
        classes = panel.label_alone(self.single_expert, self.single_image, np.random.default_rng([self.seed, 1]))
        return _Looks(self.single_expert, classes, None, *self.single_pairs)

    def ranking(self, params: SimulatorParams) -> _Looks:
        panel = self._panel(params)
        order, divider_a, divider_b = panel.rank_batches(self.ranking_expert, self.ranking_images,
                                                         np.random.default_rng([self.seed, 2]))
        ranks = np.argsort(order, axis=1)  # each member's place in the order
        classes = np.take_along_axis(_divider_classes(divider_a, divider_b), ranks, axis=1)
        return _Looks(self.ranking_expert, classes, ranks, *self.ranking_pairs)


def _z(observed: float, predicted: float, n: int) -> float:
    """Difference in binomial standard errors of the observation (floored so a perfect 1.0 counts)."""
    p = min(max(observed, 0.02), 0.98)
    return float((predicted - observed) / np.sqrt(p * (1 - p) / max(n, 1)))


@dataclass(frozen=True)
class Calibration:
    """Fitted parameters with the pilot's statistics and the fitted model's, side by side."""

    params: SimulatorParams
    observed: PilotStatistics
    predicted: dict[str, float]

    def report(self) -> dict[str, Any]:
        fitted = {name: getattr(self.params, name) for name in FITTED}
        return {"fitted": {k: list(v) if isinstance(v, tuple) else v for k, v in fitted.items()},
                "observed": self.observed.as_dict(), "predicted": self.predicted,
                "method": "simulated moments on the pilot design (cmr_assets/labelling/calibration.py)"}

    def write(self, path: Path) -> Path:
        """The parameter file (`simulator.params_to_json`, with this fit under `calibration`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(params_to_json(self.params, calibration=self.report()), indent=2) + "\n",
                        encoding="utf-8")
        return path


FITTED = ("personal_impression_sd", "single_look_noise_sd", "basal_boundary_bias", "apical_boundary_bias",
          "side_by_side_noise_sd", "side_by_side_impression_share", "divider_impression_share",
          "seconds_per_single", "seconds_per_batch", "duration_log_sd")


def _with(params: SimulatorParams, name: str, value: float | tuple[float, ...]) -> SimulatorParams:
    """`replace(params, name=value)` for a field named at run time (a float or a tuple of floats)."""
    changes: dict[str, Any] = {name: value}  # the field's type depends on `name`
    return replace(params, **changes)


def _fit_single_noise(model: _PilotModel, observed: PilotStatistics, params: SimulatorParams) -> SimulatorParams:
    best = (np.inf, params)
    for impression in np.linspace(0.0, 0.12, 25):
        for noise in np.linspace(0.0, 0.08, 17):
            candidate = replace(params, personal_impression_sd=float(impression), single_look_noise_sd=float(noise))
            looks = model.single(candidate)
            loss = (_z(observed.single_intra_agreement, _agreement(looks.classes, looks.intra),
                       observed.n_single_intra_pairs) ** 2
                    + _z(observed.single_inter_agreement, _agreement(looks.classes, looks.inter),
                         observed.n_single_inter_pairs) ** 2)
            if loss < best[0]:
                best = (loss, candidate)
    return best[1]


def _fit_biases(model: _PilotModel, observed: PilotStatistics, params: SimulatorParams,
                step: float = 0.03) -> SimulatorParams:
    """Boundary biases relative to each other (their mean stays the base's): each expert's rate
    difference is about +-slope x (own bias - the others' mean), the slope measured on the model."""
    n = params.n_experts
    for name, cls, measured in (("basal_boundary_bias", 0, observed.basal_rate_difference),
                                ("apical_boundary_bias", 2, observed.apical_rate_difference)):
        biases = np.asarray(getattr(params, name), dtype=float)
        at = _rate_differences(model.single(params), n, cls)[0]
        shifted = biases.copy()
        shifted[0] += step if cls == 0 else -step  # moves expert 0's rate of this class up
        after = _rate_differences(model.single(_with(params, name, tuple(shifted))), n, cls)[0]
        slope = abs(after - at) / step
        if slope < 1e-6:
            continue
        # too_basal rate rises with the basal boundary; too_apical rate falls with the apical one
        sign = 1.0 if cls == 0 else -1.0
        relative = sign * np.asarray(measured) / slope * (n - 1) / n  # own bias minus the panel mean
        params = _with(params, name, tuple(float(v) for v in biases.mean() + relative))
    return params


def _fit_side_by_side(model: _PilotModel, observed: PilotStatistics, params: SimulatorParams) -> SimulatorParams:
    targets = (("ranking_intra_concordance", "intra", observed.n_ranking_intra_pairs * 28),
               ("ranking_inter_concordance", "inter", observed.n_ranking_inter_pairs * 28),
               ("ranking_intra_class_agreement", "intra", observed.n_ranking_intra_pairs * BATCH_SIZE),
               ("ranking_inter_class_agreement", "inter", observed.n_ranking_inter_pairs * BATCH_SIZE))

    def loss(candidate: SimulatorParams) -> float:
        looks = model.ranking(candidate)
        total = 0.0
        for statistic, pairs, n in targets:
            chosen = looks.intra if pairs == "intra" else looks.inter
            value = _concordance(looks.ranked, chosen) if "concordance" in statistic else \
                _agreement(looks.classes, chosen)
            total += _z(getattr(observed, statistic), value, n) ** 2
        return total

    grids = {"side_by_side_noise_sd": np.linspace(0.0, 0.06, 25),
             "side_by_side_impression_share": np.linspace(0.0, 1.0, 11),
             "divider_impression_share": np.linspace(0.0, 1.0, 11)}
    for _ in range(3):
        for name, values in grids.items():
            scored = [(loss(_with(params, name, float(v))), float(v)) for v in values]
            params = _with(params, name, min(scored)[1])
    return params


def fit_simulator_params(observed: PilotStatistics, base: SimulatorParams | None = None, seed: int = 0
                         ) -> Calibration:
    """Simulator parameters that reproduce the pilot's statistics; fields that repeats cannot
    identify stay as in `base` (default `SimulatorParams()`), as does the budget."""
    base = base or SimulatorParams()
    if len(observed.annotators) != base.n_experts:
        base = replace(base, basal_boundary_bias=(0.0,) * len(observed.annotators),
                       apical_boundary_bias=(0.0,) * len(observed.annotators))
    params = replace(base, seconds_per_single=observed.seconds_per_single,
                     seconds_per_batch=observed.seconds_per_batch, duration_log_sd=observed.duration_log_sd)
    model = _PilotModel(params, seed)
    params = _fit_single_noise(model, observed, params)
    params = _fit_biases(model, observed, params)
    params = _fit_single_noise(model, observed, params)
    params = _fit_side_by_side(model, observed, params)
    single, ranking = model.single(params), model.ranking(params)
    fitted = _statistics(single, ranking, observed.annotators, np.array([params.seconds_per_single]),
                         np.array([params.seconds_per_batch]))
    predicted = {k: v for k, v in fitted.as_dict().items() if k != "annotators" and not k.startswith("n_")
                 and "seconds" not in k and k != "duration_log_sd"}
    return Calibration(params=params, observed=observed, predicted=predicted)


def calibrate_from_files(paths: Iterable[Path], base: SimulatorParams | None = None, seed: int = 0) -> Calibration:
    """Fit to the annotation files in `paths` (files, or folders whose `*.jsonl` are read)."""
    files = sorted({f for p in map(Path, paths) for f in (sorted(p.glob("*.jsonl")) if p.is_dir() else [p])})
    single, ranking = annotation_file_rows(files)
    # a task answered again after undo is a correction, not a repeat: the latest answer counts
    observed = pilot_statistics(latest_answer_per_task(single), latest_answer_per_task(ranking))
    if not (observed.n_single_intra_pairs and observed.n_single_inter_pairs and observed.n_ranking_intra_pairs
            and observed.n_ranking_inter_pairs):
        raise ValueError(
            f"{len(files)} annotation files hold {observed.n_single_intra_pairs} / {observed.n_single_inter_pairs} "
            f"intra / inter single-image repeats and {observed.n_ranking_intra_pairs} / "
            f"{observed.n_ranking_inter_pairs} repeated batches: a pilot needs all four "
            "(campaign.design_pilot_tasks designs one)")
    return fit_simulator_params(observed, base, seed)
