"""Glucose-domain constants, each typed once: the insulin unit factor and glycaemic thresholds.

- ``INSULIN_PMOL_PER_UNIT``: 1 U of insulin = 6000 pmol, the factor of the UVA/Padova model as
  simglucose 0.2.11 implements it (``u2ss * BW / 6000`` U/min is the basal rate).
- Thresholds [mg/dL] of the international consensus on time in range (Battelino et al.,
  Diabetes Care 2019;42:1593-1603): level 1 hypoglycaemia < 70, level 2 < 54; target range
  70-180; level 1 hyperglycaemia > 180, level 2 > 250.
"""

from __future__ import annotations

INSULIN_PMOL_PER_UNIT = 6000.0
HYPO_THRESHOLD = 70.0  # mg/dL
SEVERE_HYPO_THRESHOLD = 54.0  # mg/dL
HYPER_THRESHOLD = 180.0  # mg/dL
SEVERE_HYPER_THRESHOLD = 250.0  # mg/dL
TARGET_RANGE: tuple[float, float] = (HYPO_THRESHOLD, HYPER_THRESHOLD)
