"""Synthetic T2*-weighted brain MRI with cerebral microbleeds and realistic mimics (see documentation/synthetic_data.md)."""

from cmbunet.synthetic.generator import MODALITIES, SIZES, SyntheticCase, synthesize_case
from cmbunet.synthetic.writer import TRUTH_FILE, case_ids, case_seed, write_dataset

__all__ = ["MODALITIES", "SIZES", "SyntheticCase", "synthesize_case", "write_dataset", "TRUTH_FILE", "case_ids", "case_seed"]
