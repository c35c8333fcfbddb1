"""cmbunet: self-configuring detection and segmentation of cerebral microbleeds (CMBs) in brain MRI.

Data flow: raw -> fingerprint -> plans -> preprocessed -> trained stages -> predictions -> evaluation.
"""

__version__ = "0.1.0"
