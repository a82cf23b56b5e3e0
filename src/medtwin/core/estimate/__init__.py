"""Personalisation and population estimation, model-agnostic: MAP (with M3), FOCE-I."""

from medtwin.core.estimate.focei import FOCEI
from medtwin.core.estimate.map import MapResult, ObservedData, check_omega, map_estimate
from medtwin.core.estimate.residual import ResidualError

__all__ = ["FOCEI", "MapResult", "ObservedData", "ResidualError", "check_omega", "map_estimate"]
