"""The three slice classes, in base -> apex order, shared by every domain."""

from typing import Final

CLASS_NAMES: Final[tuple[str, ...]] = ("too_basal", "lv", "too_apical")
CLASS_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(CLASS_NAMES)}
N_CLASSES: Final[int] = len(CLASS_NAMES)
