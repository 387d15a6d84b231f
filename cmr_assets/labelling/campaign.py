"""Campaign design: which expert sees which images, for both labelling strategies, within a time budget.

Public API:
- `annotator_ids(n)`: the simulated roster `sim-expert-1..n`.
- `design_single_tasks(slice_ids, annotators, intra_share=0.05, inter_share=0.05, seed=0,
  extra_vote_rounds=0)` -> `tasks_single(task_id, annotator_id, slice_id, kind)`; kind
  primary/intra_repeat/inter_repeat/extra_vote.
- `ranking_rounds_for_budget(n_images, n_experts, hours_per_expert, seconds_per_batch, min_views=3,
  batch_size=8, max_rounds=10)`: rounds of batches that fill the experts' hours (at least `min_views`).
- `design_ranking_batches(slices, annotators, min_views=3, batch_size=8, seed=0)`
  -> `tasks_ranking(batch_id, annotator_id, slice_ids)`.
- `design_adaptive_batches(slices, probabilities, annotators, n_batches, ...)` -> more ranking batches
  aimed at the images whose class is still uncertain (beyond the paper's random design).
- `design_pilot_tasks(slices, annotators, minutes=30, seconds_per_single=11, seconds_per_batch=36, seed=0)`
  -> `(tasks_single, tasks_ranking)`: a short pilot built for `calibrate-experts`: every image and
  every batch seen by every expert, a share repeated by the same expert.
- `ranking_design_summary(tasks_ranking, slice_ids)` -> `RankingDesignSummary` (views, experts per
  image, connectivity of the comparison graph): what the asset checks assert.
- `comparison_graph_components(tasks_ranking, slice_ids)`: connected components via scipy.
- `next_wave(existing, id_column)`, `prefix_wave(ids, wave)`: the wave number of tasks designed for
  new slices and their ids (`s-000001` in wave 1, `s2-000001` in wave 2), so ids never collide.
- `budget_check(tasks, seconds_per_task, hours_per_annotator=5.0)` -> `BudgetCheck`: will the
  planned tasks fit the experts' time? `expert_hours_spent(raw_annotations)`: hours actually used.
- `CampaignPlan`, `TaskWave`: a campaign's settings; one designed wave (ids prefixed, budget checked).
  `single_wave(slices, existing, plan)` and `ranking_waves(slices, existing, labels, plan)`: the
  tasks for slices that have none yet (pilot, or the full design; ranking also adaptive batches):
  what the task assets append.

Conventions: every expert works through their own tasks in id order (`s-000001`, `r-000001`, ...);
ids are zero-padded so string order is work order. Ranking batches are numbered round by round,
so an exhausted budget leaves every image with as many views as possible.

Equal expert time: campaigns stop at the budget, and both strategies may spend all of it. Single:
after an expert's required tasks (every image once, plus the agreement repeats) come `extra_vote`
tasks, round by round: in round k the expert votes on the images whose first vote came from the
k-th next expert, so time left buys second, then third opinions from other experts (never a
repeat of one's own vote). Ranking: further rounds of batches beyond `min_views`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cmr_assets.domain import BATCH_SIZE
from cmr_assets.settings import DEFAULT_HOURS_PER_ANNOTATOR

SINGLE_TASK_KINDS = ("primary", "intra_repeat", "inter_repeat", "extra_vote")
SIMULATED_ANNOTATOR_PREFIX = "sim-expert-"


def annotator_ids(n: int) -> list[str]:
    """Roster of simulated experts; people get their own ids in the `annotators` roster."""
    return [f"{SIMULATED_ANNOTATOR_PREFIX}{i}" for i in range(1, n + 1)]


def _check_annotators(annotators: Sequence[str]) -> list[str]:
    roster = list(annotators)
    if not roster or len(set(roster)) != len(roster):
        raise ValueError(f"annotators must be a non-empty list of distinct ids, got {roster}")
    return roster


# ---------------------------------------------------------------- single image at a time


def design_single_tasks(slice_ids: Sequence[str], annotators: Sequence[str], intra_share: float = 0.05,
                        inter_share: float = 0.05, seed: int = 0, extra_vote_rounds: int = 0) -> pd.DataFrame:
    """Every image once, dealt evenly over the experts, plus repeats that measure agreement.

    `intra_share` of the images go a second time to the same expert (intra-observer kappa);
    a disjoint `inter_share` go to every other expert too (inter-observer kappa). Each expert's
    queue is shuffled so a repeat rarely follows its first look. Then `extra_vote_rounds` (at most
    one fewer than the experts) rounds of `extra_vote` tasks, queued after all required ones: a
    further vote from another expert on each image not already seen by every expert, done only
    while the budget lasts.
    """
    roster = _check_annotators(annotators)
    ids = np.asarray(sorted(set(map(str, slice_ids))), dtype=object)
    if min(intra_share, inter_share) < 0 or intra_share + inter_share > 1:
        raise ValueError(f"shares must be >= 0 and sum to <= 1, got {intra_share}, {inter_share}")
    if not 0 <= extra_vote_rounds < len(roster):
        raise ValueError(f"extra_vote_rounds must be within 0..{len(roster) - 1}, got {extra_vote_rounds}")
    rng = np.random.default_rng(seed)
    n = len(ids)
    permuted = ids[rng.permutation(n)]
    owner = np.arange(n) % len(roster)  # even split: counts differ by at most one
    n_intra = round(intra_share * n)
    n_inter = round(inter_share * n) if len(roster) > 1 else 0
    picks = rng.permutation(n)
    intra, inter = picks[:n_intra], picks[n_intra:n_intra + n_inter]

    annotator_idx = [owner, owner[intra]]
    slices = [permuted, permuted[intra]]
    kinds = [np.full(n, "primary", dtype=object), np.full(n_intra, "intra_repeat", dtype=object)]
    phases = [np.zeros(n), np.zeros(n_intra)]
    for shift in range(1, len(roster)):
        annotator_idx.append((owner[inter] + shift) % len(roster))
        slices.append(permuted[inter])
        kinds.append(np.full(n_inter, "inter_repeat", dtype=object))
        phases.append(np.zeros(n_inter))
    not_inter = np.setdiff1d(np.arange(n), inter)
    for shift in range(1, extra_vote_rounds + 1):
        annotator_idx.append((owner[not_inter] + shift) % len(roster))
        slices.append(permuted[not_inter])
        kinds.append(np.full(len(not_inter), "extra_vote", dtype=object))
        phases.append(np.full(len(not_inter), float(shift)))
    tasks = pd.DataFrame({
        "annotator_idx": np.concatenate(annotator_idx),
        "slice_id": np.concatenate(slices),
        "kind": np.concatenate(kinds),
    })
    # shuffled queue per expert (required tasks first, then extra rounds in turn), then queues
    # interleaved so ids give each expert's work order
    tasks["queue_key"] = np.concatenate(phases) + rng.random(len(tasks))
    tasks["queue_rank"] = tasks.groupby("annotator_idx")["queue_key"].rank(method="first")
    tasks = tasks.sort_values(["queue_rank", "annotator_idx"], ignore_index=True)
    return pd.DataFrame({
        "task_id": [f"s-{i:06d}" for i in range(1, len(tasks) + 1)],
        "annotator_id": np.asarray(roster, dtype=object)[tasks["annotator_idx"].to_numpy()],
        "slice_id": tasks["slice_id"].astype(str).to_numpy(),
        "kind": tasks["kind"].astype(str).to_numpy(),
    })


# ---------------------------------------------------------------- ranking batches of 8


def _relative_position(slices: pd.DataFrame) -> np.ndarray:
    """Index from base scaled to 0..1 within its stack: the only position known before labelling."""
    span = np.maximum(slices["n_slices"].to_numpy(dtype=float) - 1, 1)
    position: np.ndarray = slices["slice_from_base"].to_numpy(dtype=float) / span
    return position


def _round_batches(n: int, relative: np.ndarray, views: np.ndarray, batch_size: int,
                   rng: np.random.Generator) -> np.ndarray:
    """One round: every image once (padded to whole batches with the least-seen images), each batch
    drawing one image from each position stratum so batches mix basal, mid and apical slices."""
    n_batches = -(-n // batch_size)
    members = rng.permutation(n)
    pad = n_batches * batch_size - n
    if pad:
        least_seen = np.lexsort((rng.random(n), views))[:pad]
        members = np.concatenate([members, least_seen])
    order = np.lexsort((rng.random(len(members)), relative[members]))
    strata = members[order].reshape(batch_size, n_batches)  # row k = k-th position stratum
    for row in strata:
        rng.shuffle(row)
    return strata.T.copy()  # (n_batches, batch_size)


def _repair_collisions(batches: np.ndarray, scan_codes: np.ndarray, rng: np.random.Generator,
                       max_tries: int = 20) -> None:
    """Swap members within their stratum so no batch holds an image twice and, where possible,
    no two images of one scan (same-scan pairs are allowed but carry less cross-scan information)."""

    def cost(row: np.ndarray) -> int:  # sets, not np.unique: a row is 8 values, called ~once per batch
        images = row.tolist()
        duplicate_images = len(images) - len(set(images))
        duplicate_scans = len(images) - len(set(scan_codes[row].tolist()))
        return 100 * duplicate_images + duplicate_scans

    n_batches, batch_size = batches.shape
    for b in range(n_batches):
        for k in range(batch_size):
            if cost(batches[b]) == 0:
                break
            for other in rng.integers(0, n_batches, size=max_tries):
                if other == b:
                    continue
                before = cost(batches[b]) + cost(batches[other])
                batches[b, k], batches[other, k] = batches[other, k], batches[b, k]
                if cost(batches[b]) + cost(batches[other]) < before:
                    break
                batches[b, k], batches[other, k] = batches[other, k], batches[b, k]
    ordered = np.sort(batches, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        raise ValueError("could not form batches of distinct images; too few images for the batch size")


def _components_of(batches: np.ndarray, n: int) -> np.ndarray:
    """Component label per image of the comparison graph (images linked when they share a batch)."""
    if len(batches) == 0:
        return np.arange(n)
    rows = batches[:, :-1].ravel()
    cols = batches[:, 1:].ravel()
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    components: np.ndarray = connected_components(graph, directed=False)[1]
    return components


def _connect(batches: np.ndarray, n: int, rng: np.random.Generator) -> None:
    """Merge components by swapping one member between batches of different components (view
    counts stay the same); random designs of realistic size are connected already."""
    labels = _components_of(batches, n)
    for _ in range(10 * len(np.unique(labels))):
        if len(np.unique(labels)) == 1:
            return
        batch_component = labels[batches[:, 0]]
        first = rng.choice(np.flatnonzero(batch_component == batch_component[0]))
        second = rng.choice(np.flatnonzero(batch_component != batch_component[0]))
        k = rng.integers(batches.shape[1])
        batches[first, k], batches[second, k] = batches[second, k], batches[first, k]
        labels = _components_of(batches, n)
    if len(np.unique(labels)) > 1:
        raise ValueError("could not connect the comparison graph; every image needs at least 2 views")


def _assign_experts(batches: np.ndarray, n_rounds_batches: list[int], n: int, n_experts: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Deal batches evenly over experts, each batch to the expert (with room left this round) who
    is the only viewer of the fewest of its images, then who has seen the fewest of them, so images
    collect views from different experts."""
    seen = np.zeros((n, n_experts), dtype=np.int32)
    expert_of = np.empty(len(batches), dtype=np.int64)
    experts = range(n_experts)
    start = 0
    for size in n_rounds_batches:
        capacity = np.full(n_experts, size // n_experts)
        capacity[rng.permutation(n_experts)[: size % n_experts]] += 1
        room = capacity.tolist()
        order = (start + rng.permutation(size)).tolist()
        ties = rng.random((size, n_experts)).tolist()  # the same draws as one call per batch
        # plain Python on the batch's 8 x n_experts counts: numpy's per-call overhead dominated
        for b, tie in zip(order, ties, strict=True):
            members = seen[batches[b]].tolist()
            only_viewer = [0.0] * n_experts
            overlap = [0] * n_experts
            for views in members:
                total = sum(views)
                for e in experts:
                    overlap[e] += views[e]
                    # images this expert alone has seen so far would stay single-expert: avoid that first
                    if total > 0 and views[e] == total:
                        only_viewer[e] += 1
            most = max(room)
            # the least-loaded expert among equal choices, then at random
            choice = min(experts, key=lambda e: (only_viewer[e] if room[e] else np.inf, overlap[e], most - room[e],
                                                 tie[e]))
            expert_of[b] = choice
            room[choice] -= 1
            seen[batches[b], choice] += 1
        start += size
    return expert_of


MAX_RANKING_ROUNDS = 10


def ranking_rounds_for_budget(n_images: int, n_experts: int, hours_per_expert: float, seconds_per_batch: float,
                              min_views: int = 3, batch_size: int = BATCH_SIZE,
                              max_rounds: int = MAX_RANKING_ROUNDS) -> int:
    """Rounds of batches (every image once per round) the experts' hours can buy, at least
    `min_views`: designing them all lets the budget, not the design, end the ranking campaign.
    At most `max_rounds` (10 views per image; only a cohort of a few scans gets there, where the
    single-image strategy cannot spend its hours either: one vote per expert and image)."""
    per_round = -(-n_images // batch_size)
    affordable = n_experts * hours_per_expert * 3600.0 / seconds_per_batch
    return max(min_views, min(max_rounds, int(np.ceil(affordable / max(per_round, 1)))))


def design_ranking_batches(slices: pd.DataFrame, annotators: Sequence[str], min_views: int = 3,
                           batch_size: int = BATCH_SIZE, seed: int = 0) -> pd.DataFrame:
    """Random batches of `batch_size` distinct images, each image in at least `min_views` batches.

    The design is `min_views` rounds; in each round every image appears once, and each batch takes
    one image per position stratum from (preferably) different scans, so every batch spans the
    base-to-apex axis and links scans. Batches go evenly to experts, preferring an expert new to
    the images. The comparison graph is made connected (one latent axis for every image). Images
    are presented in random order inside a batch, never in stratum order.
    """
    roster = _check_annotators(annotators)
    if min_views < 2 or batch_size < 2:
        # with one view per image the batches partition the images: the graph cannot be connected
        raise ValueError(f"need min_views >= 2 and batch_size >= 2, got {min_views}, {batch_size}")
    frame = slices.drop_duplicates("slice_id").sort_values("slice_id", ignore_index=True)
    n = len(frame)
    if n < batch_size:
        raise ValueError(f"{n} images cannot fill a batch of {batch_size} distinct images")
    rng = np.random.default_rng(seed)
    relative = _relative_position(frame)
    scan_codes = pd.factorize(frame["scan_id"])[0]
    views = np.zeros(n, dtype=np.int64)
    rounds = []
    for _ in range(min_views):
        batches = _round_batches(n, relative, views, batch_size, rng)
        _repair_collisions(batches, scan_codes, rng)
        np.add.at(views, batches.ravel(), 1)
        rounds.append(batches)
    batches = np.concatenate(rounds)
    _connect(batches, n, rng)
    expert_of = _assign_experts(batches, [len(r) for r in rounds], n, len(roster), rng)
    ids = frame["slice_id"].astype(str).to_numpy(dtype=object)
    presented = [list(ids[row[rng.permutation(batch_size)]]) for row in batches]
    return pd.DataFrame({
        "batch_id": [f"r-{i:06d}" for i in range(1, len(batches) + 1)],
        "annotator_id": np.asarray(roster, dtype=object)[expert_of],
        "slice_ids": presented,
    })


def design_adaptive_batches(slices: pd.DataFrame, probabilities: pd.DataFrame, annotators: Sequence[str],
                            n_batches: int, batch_size: int = BATCH_SIZE, uncertain_per_batch: int = 4,
                            seed: int = 0) -> pd.DataFrame:
    """Batches that spend expert time where the class boundaries are still uncertain.

    `probabilities` (slice_id, p_too_basal, p_lv, p_too_apical) come from the current aggregation;
    an image's uncertainty is 1 - its largest class probability. Each batch holds the next
    `uncertain_per_batch` most uncertain images (cycling when there are fewer than needed) and is
    filled with confident anchors drawn evenly along the base-apex axis from other scans, so every judgement
    is made side by side with clear references and links the uncertain images to the shared axis.
    Batches go to the experts in turn.
    """
    roster = _check_annotators(annotators)
    if not 0 < uncertain_per_batch < batch_size:
        raise ValueError(f"uncertain_per_batch must be in 1..{batch_size - 1}, got {uncertain_per_batch}")
    frame = slices.drop_duplicates("slice_id").merge(probabilities, on="slice_id").reset_index(drop=True)
    if len(frame) < batch_size or n_batches < 1:
        raise ValueError(f"need >= {batch_size} aggregated images and n_batches >= 1, "
                         f"got {len(frame)} images and {n_batches} batches")
    rng = np.random.default_rng(seed)
    certainty = frame[["p_too_basal", "p_lv", "p_too_apical"]].to_numpy(dtype=float).max(axis=1)
    order = np.lexsort((rng.random(len(frame)), certainty))  # most uncertain first, ties at random
    relative = _relative_position(frame)
    scans = frame["scan_id"].to_numpy()
    confident = certainty >= np.median(certainty)  # anchors are clear references, not more doubt
    n_anchors = batch_size - uncertain_per_batch
    rows = []
    for b in range(n_batches):
        picks = order[np.arange(b * uncertain_per_batch, (b + 1) * uncertain_per_batch) % len(order)]
        pool = np.flatnonzero(confident & ~np.isin(scans, scans[picks]) & ~np.isin(np.arange(len(frame)), picks))
        if len(pool) < n_anchors:
            pool = np.setdiff1d(np.arange(len(frame)), picks)
        strata = np.array_split(pool[np.argsort(relative[pool], kind="stable")], n_anchors)
        anchors = [int(rng.choice(stratum)) for stratum in strata]
        members = np.concatenate([picks, anchors])[rng.permutation(batch_size)]
        rows.append(list(frame["slice_id"].to_numpy(dtype=object)[members]))
    return pd.DataFrame({
        "batch_id": [f"r-{i:06d}" for i in range(1, n_batches + 1)],
        "annotator_id": [roster[i % len(roster)] for i in range(n_batches)],
        "slice_ids": rows,
    })


def _queued(annotator_idx: np.ndarray, phase: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Work order: each expert's tasks by phase (first looks, then repeats), shuffled within a
    phase, expert queues interleaved so ids give each expert's work order."""
    key = phase + rng.random(len(phase))
    rank = pd.Series(key).groupby(annotator_idx).rank(method="first").to_numpy()
    return np.lexsort((annotator_idx, rank))


def design_pilot_tasks(slices: pd.DataFrame, annotators: Sequence[str], minutes: float = 30.0,
                       seconds_per_single: float = 11.0, seconds_per_batch: float = 36.0, seed: int = 0
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tasks of a pilot of `minutes` per expert per strategy that measures what the simulator's
    parameters govern (`calibration.py`). Single: images from the basal and apical thirds of their
    stacks (where the class boundaries lie, so looks can disagree), each labelled by every expert
    and once more by one of them. Ranking: batches of the usual design, each ordered by every
    expert and once more by one of them. Repeats are queued after all first looks. Sized so the
    expected work fills `minutes`."""
    roster = _check_annotators(annotators)
    n_experts = len(roster)
    rng = np.random.default_rng(seed)
    frame = slices.drop_duplicates("slice_id").sort_values("slice_id", ignore_index=True)
    looks_per_unit = 1 + 1 / n_experts  # every expert once, one of them twice

    relative = _relative_position(frame)
    near_ends = np.flatnonzero((relative <= 1 / 3) | (relative >= 2 / 3))
    n_images = min(len(near_ends), max(2, round(minutes * 60.0 / seconds_per_single / looks_per_unit)))
    images = frame["slice_id"].to_numpy(dtype=object)[rng.permutation(near_ends)[:n_images]]
    owner = np.arange(n_images) % n_experts
    experts = np.concatenate([np.tile(np.arange(n_experts), n_images), owner])
    shown = np.concatenate([np.repeat(images, n_experts), images])
    kinds = np.concatenate([np.where(experts[: n_images * n_experts] == np.repeat(owner, n_experts), "primary",
                                     "inter_repeat"), np.full(n_images, "intra_repeat")])
    order = _queued(experts, np.repeat([0.0, 1.0], [n_images * n_experts, n_images]), rng)
    single = pd.DataFrame({
        "task_id": [f"s-{i:06d}" for i in range(1, len(order) + 1)],
        "annotator_id": np.asarray(roster, dtype=object)[experts[order]],
        "slice_id": shown[order].astype(str), "kind": kinds[order].astype(str)})

    first_round = design_ranking_batches(frame, roster, min_views=2, seed=seed).head(-(-len(frame) // 8))
    n_sets = min(len(first_round), max(1, round(minutes * 60.0 / seconds_per_batch / looks_per_unit)))
    sets = [list(members) for members in first_round["slice_ids"].head(n_sets)]
    set_of = np.concatenate([np.repeat(np.arange(n_sets), n_experts), np.arange(n_sets)])
    experts = np.concatenate([np.tile(np.arange(n_experts), n_sets), np.arange(n_sets) % n_experts])
    order = _queued(experts, np.repeat([0.0, 1.0], [n_sets * n_experts, n_sets]), rng)
    ranking = pd.DataFrame({
        "batch_id": [f"r-{i:06d}" for i in range(1, len(order) + 1)],
        "annotator_id": np.asarray(roster, dtype=object)[experts[order]],
        "slice_ids": [list(rng.permutation(sets[k])) for k in set_of[order]]})
    return single, ranking


def next_wave(existing: pd.DataFrame, id_column: str) -> int:
    """The wave after the newest in `existing` tasks (ids `s-…` are wave 1, `s2-…` wave 2, …); 1 when none."""
    if existing.empty:
        return 1
    return int(existing[id_column].str.extract(r"^[a-z](\d*)-")[0].replace("", "1").astype(int).max()) + 1


def prefix_wave(ids: pd.Series, wave: int) -> pd.Series:
    """Wave 1 keeps the designer's ids (`s-000001`); later waves get `s2-000001`, so ids never collide."""
    return ids if wave == 1 else ids.str.replace(r"^([a-z])-", rf"\g<1>{wave}-", regex=True)


@dataclass(frozen=True)
class RankingDesignSummary:
    n_images: int
    n_batches: int
    min_views: int
    max_views: int
    images_below_two_experts: int
    n_components: int
    batches_per_annotator: dict[str, int]

    @property
    def connected(self) -> bool:
        return self.n_components == 1


def comparison_graph_components(tasks_ranking: pd.DataFrame, slice_ids: Sequence[str]) -> int:
    """Number of connected components of the image comparison graph (1 = one shared latent axis)."""
    index = {s: i for i, s in enumerate(slice_ids)}
    batches = np.array([[index[s] for s in ids] for ids in tasks_ranking["slice_ids"]], dtype=np.int64)
    return len(np.unique(_components_of(batches.reshape(len(tasks_ranking), -1), len(index))))


def ranking_design_summary(tasks_ranking: pd.DataFrame, slice_ids: Sequence[str]) -> RankingDesignSummary:
    """Views per image, distinct experts per image, connectivity and load: what a check asserts."""
    ids = list(dict.fromkeys(map(str, slice_ids)))
    exploded = tasks_ranking[["annotator_id", "slice_ids"]].explode("slice_ids")
    views = exploded["slice_ids"].value_counts().reindex(ids, fill_value=0)
    experts = exploded.groupby("slice_ids")["annotator_id"].nunique().reindex(ids, fill_value=0)
    return RankingDesignSummary(
        n_images=len(ids),
        n_batches=len(tasks_ranking),
        min_views=int(views.min()) if len(ids) else 0,
        max_views=int(views.max()) if len(ids) else 0,
        images_below_two_experts=int((experts < 2).sum()),
        n_components=comparison_graph_components(tasks_ranking, ids),
        batches_per_annotator={str(k): int(v) for k, v in
                               tasks_ranking["annotator_id"].value_counts().items()},
    )


# ---------------------------------------------------------------- time budget


@dataclass(frozen=True)
class BudgetCheck:
    """Planned hours per expert against the budget; `tasks_within_budget` is what can be done."""

    hours_needed: dict[str, float]
    hours_per_annotator: float
    tasks_planned: dict[str, int]
    tasks_within_budget: dict[str, int]

    @property
    def fits(self) -> bool:
        return all(h <= self.hours_per_annotator for h in self.hours_needed.values())

    @property
    def total_hours_needed(self) -> float:
        return float(sum(self.hours_needed.values()))


def budget_check(tasks: pd.DataFrame, seconds_per_task: float,
                 hours_per_annotator: float = DEFAULT_HOURS_PER_ANNOTATOR) -> BudgetCheck:
    """Does each expert's task list fit their hours at the expected time per task (image or batch)?"""
    if seconds_per_task <= 0 or hours_per_annotator < 0:
        raise ValueError("seconds_per_task must be > 0 and hours_per_annotator >= 0")
    planned = tasks["annotator_id"].value_counts().sort_index()
    affordable = int(hours_per_annotator * 3600 // seconds_per_task)
    return BudgetCheck(
        hours_needed={str(a): float(c * seconds_per_task / 3600) for a, c in planned.items()},
        hours_per_annotator=float(hours_per_annotator),
        tasks_planned={str(a): int(c) for a, c in planned.items()},
        tasks_within_budget={str(a): min(int(c), affordable) for a, c in planned.items()},
    )


def expert_hours_spent(raw_annotations: pd.DataFrame) -> pd.Series:
    """Hours each expert spent on submitted work (sum of submitted_at - started_at), by annotator."""
    if raw_annotations.empty:
        return pd.Series(dtype=float, name="hours")
    seconds = (raw_annotations["submitted_at"] - raw_annotations["started_at"]).dt.total_seconds()
    return seconds.groupby(raw_annotations["annotator_id"]).sum().div(3600).rename("hours")


# ---------------------------------------------------------------- waves of tasks for new slices


@dataclass(frozen=True)
class CampaignPlan:
    """A campaign's design settings and the expected seconds per task (from the simulator's parameters)."""

    roster: tuple[str, ...]
    seconds_per_single: float
    seconds_per_batch: float
    intra_share: float = 0.05
    inter_share: float = 0.05
    min_views: int = 3
    adaptive_batches: int = 0
    hours_per_expert: float = DEFAULT_HOURS_PER_ANNOTATOR
    fill_budget: bool = True
    pilot_minutes: float = 0.0
    seed: int = 0

    def pilot(self, slices: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        return design_pilot_tasks(slices, self.roster, self.pilot_minutes, self.seconds_per_single,
                                  self.seconds_per_batch, self.seed)


@dataclass(frozen=True)
class TaskWave:
    """Tasks designed in one go: `kind` single / pilot / random / adaptive, ids prefixed with `wave`."""

    kind: str
    wave: int
    tasks: pd.DataFrame
    budget: BudgetCheck


def _new_slices(slices: pd.DataFrame, tasked: set[str]) -> pd.DataFrame:
    return slices[~slices["slice_id"].isin(tasked)]


def single_wave(slices: pd.DataFrame, existing: pd.DataFrame, plan: CampaignPlan) -> TaskWave | None:
    """Single-image tasks for the slices without any (None when every slice has tasks). The budget is
    checked on the required tasks; extra votes are there to be cut by it."""
    todo = _new_slices(slices, set(existing["slice_id"]) if not existing.empty else set())
    if todo.empty:
        return None
    if plan.pilot_minutes > 0:
        kind, tasks = "pilot", plan.pilot(todo)[0]
    else:
        kind, tasks = "single", design_single_tasks(
            todo["slice_id"].tolist(), plan.roster, plan.intra_share, plan.inter_share, plan.seed,
            extra_vote_rounds=len(plan.roster) - 1 if plan.fill_budget else 0)
    wave = next_wave(existing, "task_id")
    tasks["task_id"] = prefix_wave(tasks["task_id"], wave)
    required = tasks[tasks["kind"] != "extra_vote"]
    return TaskWave(kind, wave, tasks, budget_check(required, plan.seconds_per_single, plan.hours_per_expert))


def ranking_waves(slices: pd.DataFrame, existing: pd.DataFrame, labels: pd.DataFrame,
                  plan: CampaignPlan) -> tuple[pd.DataFrame, list[TaskWave]]:
    """(the slices without batches, the waves to append): batches for those slices (a pilot, or as many
    rounds as the hours buy with `fill_budget`, else `min_views`), then, with `adaptive_batches`,
    that many batches aimed at the images `labels` (slice_id, p_*) leave most uncertain."""
    todo = _new_slices(slices, set(existing["slice_ids"].explode()) if not existing.empty else set())
    designed: list[tuple[str, pd.DataFrame]] = []
    if not todo.empty and plan.pilot_minutes > 0:
        designed.append(("pilot", plan.pilot(todo)[1]))
    elif not todo.empty:
        rounds = ranking_rounds_for_budget(len(todo), len(plan.roster), plan.hours_per_expert,
                                           plan.seconds_per_batch, plan.min_views,
                                           BATCH_SIZE) if plan.fill_budget else plan.min_views
        designed.append(("random", design_ranking_batches(todo, plan.roster, rounds, BATCH_SIZE, plan.seed)))
    if plan.adaptive_batches and not labels.empty:
        designed.append(("adaptive", design_adaptive_batches(slices, labels, plan.roster, plan.adaptive_batches,
                                                             BATCH_SIZE, seed=plan.seed + len(existing))))
    waves, so_far = [], existing
    for kind, batches in designed:
        wave = next_wave(so_far, "batch_id")
        batches["batch_id"] = prefix_wave(batches["batch_id"], wave)
        waves.append(TaskWave(kind, wave, batches, budget_check(batches, plan.seconds_per_batch,
                                                                plan.hours_per_expert)))
        so_far = pd.concat([so_far, batches], ignore_index=True)
    return todo, waves
