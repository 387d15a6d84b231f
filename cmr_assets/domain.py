"""The project's shared vocabulary, one home for each concept every domain uses: the slice
classes, the two labelling strategies, the ranking batch size, the stored image size, the
registered model names and their aliases."""

from typing import Final

# The three slice classes, in base -> apex order.
CLASS_NAMES: Final[tuple[str, ...]] = ("too_basal", "lv", "too_apical")
CLASS_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(CLASS_NAMES)}
N_CLASSES: Final[int] = len(CLASS_NAMES)

# The labelling strategies compared (reports, models and tables list them in this order).
STRATEGIES: Final[tuple[str, ...]] = ("ranking", "single")
# Images per ranking task (the paper's 8): task design, annotation files and aggregation share it.
BATCH_SIZE: Final[int] = 8

# Side of the stored slice images (pixels): ingestion writes them, models read them.
ARRAY_SIZE: Final[int] = 128
# ManufacturerModelName of phantom scans: how provenance tells synthetic training data apart.
SYNTHETIC_MODEL_NAME: Final[str] = "cmr_assets phantom"

REGISTERED_MODEL_NAMES: Final[dict[str, str]] = {
    "ranking": "cmr-slice-classifier-ranking",
    "single": "cmr-slice-classifier-single",
}
CHAMPION: Final[str] = "champion"
CHALLENGER: Final[str] = "challenger"
