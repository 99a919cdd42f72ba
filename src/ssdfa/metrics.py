"""Kept so that ``ssdfa.metrics`` keeps importing: the alignment angles live in :mod:`ssdfa.alignment`.

New code imports ``ssdfa.alignment``; every public name of it is re-exported here unchanged.
"""

from __future__ import annotations

from .alignment import (alignment_angles, angle, fa_weight_angles,  # noqa: F401  (re-exported)
                        feedback_weight_angles, norm_ratios, output_prediction_angles,
                        static_angles)
from .alignment import __all__  # noqa: F401
