"""Crop, normalise and resample cases to the plans' target spacing, map predictions back, and make CV splits."""

from cmbunet.preprocessing.preprocessor import (
    export_to_native,
    load_preprocessed_case,
    native_geometry,
    preprocess_case,
    save_preprocessed_case,
)

__all__ = [
    "export_to_native",
    "load_preprocessed_case",
    "native_geometry",
    "preprocess_case",
    "save_preprocessed_case",
]
