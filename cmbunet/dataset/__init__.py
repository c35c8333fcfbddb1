"""Raw datasets: layout, listing, the label rule, the integrity check and the VALDO converter."""

from cmbunet.dataset.integrity import verify_dataset_integrity
from cmbunet.dataset.raw_dataset import (
    binarise_label,
    list_image_cases,
    list_training_cases,
    load_dataset_json,
)

__all__ = [
    "binarise_label",
    "list_image_cases",
    "list_training_cases",
    "load_dataset_json",
    "verify_dataset_integrity",
]
