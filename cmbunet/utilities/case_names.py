"""File names of cases: the channel suffix of the nnU-Net layout and the image endings.

A case with C channels is stored as ``CASE_0000.nii.gz`` ... ``CASE_{C-1:04d}.nii.gz``: the case id, an
underscore and a 4-digit channel index. The case id itself may contain underscores (``sub_b_0001`` is channel 1
of case ``sub_b``). The raw dataset's integrity check and prediction's input discovery read names by this one
rule. Subject ids of VALDO and BIDS trees (:data:`SUBJECT_PATTERN`) are shared the same way by the converter,
prediction's input discovery and evaluation.
"""

from __future__ import annotations

import re
from typing import Sequence

from cmbunet.imageio.reader_writer import SUPPORTED_ENDINGS

#: A subject id with its BIDS entities (``sub-101``, ``sub-101_ses-2_acq-3D_run-1``); any characters but ``_`` and
#: ``/`` in the labels, so non-ASCII ids that the converter accepts are found by prediction too.
SUBJECT_PATTERN = r"sub-[^_/]+(?:_[A-Za-z0-9]+-[^_/]+)*?"

#: A file stem with a channel suffix: ``case`` and ``channel`` groups (also groups 1 and 2).
CHANNEL_STEM_PATTERN = r"(?P<case>.+)_(?P<channel>\d{4})"
CHANNEL_STEM_RE = re.compile(rf"^{CHANNEL_STEM_PATTERN}$")


def channel_file_name(case: str, channel: int, ending: str) -> str:
    """``CASE_000C`` plus the file ending: the file of one channel of a case."""
    return f"{case}_{int(channel):04d}{ending}"


def image_stem(name: str, endings: Sequence[str] = SUPPORTED_ENDINGS) -> str | None:
    """File name without its image ending (``.nii.gz`` counts as one ending); ``None`` when it has none of
    ``endings``."""
    for ending in sorted(endings, key=len, reverse=True):
        if name.endswith(ending):
            return name[: -len(ending)]
    return None
