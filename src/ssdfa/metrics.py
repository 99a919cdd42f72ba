"""Kept so that ``ssdfa.metrics`` keeps importing: the alignment angles live in :mod:`ssdfa.alignment`.

New code imports ``ssdfa.alignment``; every public name of it is re-exported here unchanged.
"""

from __future__ import annotations

from .alignment import (  # noqa: F401  (re-exported)
    __all__,  # noqa: F401
    alignment_angles,
    angle,
    fa_weight_angles,
    feedback_weight_angles,
    norm_ratios,
    output_prediction_angles,
    static_angles,
)
