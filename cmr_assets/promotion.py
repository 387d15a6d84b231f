"""The promotion rule: when a newly registered version becomes a strategy's `champion`.

`champion` moves to a new version only when its validation macro-F1 is >= the champion's. With a
`rescore` function (what training passes) the champion is scored again on the new version's
validation set, so both numbers come from the same images and labels, whatever changed since
(split, labels). Without one, the champion's tagged score counts when it was measured on the same
split (`split_hash` tag); a champion from another split or without a score is replaced. The
decision and both numbers are tagged on the version and on its run.

Public API:
- `promote_if_better(client, model_name, new_version, new_val_macro_f1, split_hash, rescore=None) -> dict`
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from cmr_assets.domain import CHAMPION


def _tag_float(tags: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def promote_if_better(client: mlflow.MlflowClient, model_name: str, new_version: str | int,
                      new_val_macro_f1: float, split_hash: str,
                      rescore: Callable[[str], float] | None = None) -> dict[str, Any]:
    """Move `champion` to `new_version` when its validation macro-F1 is >= the champion's.

    `rescore(model_uri) -> macro-F1` scores the current champion on the new version's validation
    set; then both scores come from the same images and labels (`comparison`
    `rescored_on_same_validation`). Without `rescore` (or when the champion cannot be loaded) the
    champion's tagged score counts on the same split (`tagged_score_same_split`); a champion from
    another split or without a score is not comparable and is replaced (`not_comparable`).

    Returns {"decision", "champion_version", "comparison", "new": {version, val_macro_f1,
    split_hash}, "champion_before": {...} or None}. Decisions: `first_champion`, `already_champion`,
    `promoted` (>=), `kept_champion` (worse), `replaced_other_split`. Tags go on the version and its
    run: the decision, both scores (`val_macro_f1`, `champion_val_macro_f1_before` as tagged,
    `champion_val_macro_f1_rescored`) and `comparison`.
    """
    if not math.isfinite(new_val_macro_f1):
        raise ValueError(f"new_val_macro_f1: must be a finite number, got {new_val_macro_f1}")
    new_version = str(new_version)
    try:
        current = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        current = None
    champion_before = None
    comparison = "none"
    rescored: float | None = None
    if current is None:
        decision = "first_champion"
    else:
        old_score = _tag_float(current.tags, "val_macro_f1")
        old_split = current.tags.get("split_hash")
        champion_before = {"version": str(current.version), "val_macro_f1": old_score,
                           "split_hash": old_split}
        if str(current.version) != new_version and rescore is not None:
            try:
                rescored = float(rescore(f"models:/{model_name}/{current.version}"))
            except Exception:  # an unloadable champion cannot be compared; fall back to its tags
                rescored = None
            if rescored is not None and not math.isfinite(rescored):
                rescored = None
        if str(current.version) == new_version:
            decision = "already_champion"
        elif rescored is not None:
            champion_before["val_macro_f1_rescored"] = rescored
            comparison = "rescored_on_same_validation"
            decision = "promoted" if new_val_macro_f1 >= rescored else "kept_champion"
        elif old_score is None or old_split != split_hash:
            comparison = "not_comparable"
            decision = "replaced_other_split"
        else:
            comparison = "tagged_score_same_split"
            decision = "promoted" if new_val_macro_f1 >= old_score else "kept_champion"
    if decision == "kept_champion":
        assert champion_before is not None  # kept only against an existing champion
        champion_version = champion_before["version"]
    else:
        client.set_registered_model_alias(model_name, CHAMPION, new_version)
        champion_version = new_version

    decision_tags = {
        "val_macro_f1": repr(float(new_val_macro_f1)),
        "split_hash": split_hash,
        "promotion_decision": decision,
        "promotion_comparison": comparison,
        "champion_version_before": champion_before["version"] if champion_before else "none",
        "champion_val_macro_f1_before": (repr(champion_before["val_macro_f1"]) if champion_before
                                         and champion_before["val_macro_f1"] is not None else "none"),
        "champion_val_macro_f1_rescored": repr(rescored) if rescored is not None else "none",
    }
    for key, value in decision_tags.items():
        client.set_model_version_tag(model_name, new_version, key, value)
    run_id = client.get_model_version(model_name, new_version).run_id
    if run_id:
        for key, value in decision_tags.items():
            client.set_tag(run_id, key, value)
    return {
        "decision": decision,
        "champion_version": champion_version,
        "comparison": comparison,
        "new": {"version": new_version, "val_macro_f1": float(new_val_macro_f1), "split_hash": split_hash},
        "champion_before": champion_before,
    }
