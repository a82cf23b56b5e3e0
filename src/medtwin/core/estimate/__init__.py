"""Personalisation and population estimation, model-agnostic: MAP (with M3), FOCE-I, and the
sequential filters (ensemble and unscented Kalman, particle) over any Model."""

from medtwin.core.estimate.dynamics import Dynamics, ModelDynamics
from medtwin.core.estimate.enkf import EnsembleKalmanFilter, eakf_update
from medtwin.core.estimate.ensemble import OrnsteinUhlenbeck, RandomWalk, propagate_batch
from medtwin.core.estimate.focei import FOCEI
from medtwin.core.estimate.map import MapResult, ObservedData, check_omega, map_estimate
from medtwin.core.estimate.observation import NoiseModel, ObservationModel, Reading
from medtwin.core.estimate.particle import ParticleFilter
from medtwin.core.estimate.priors import LearnedParameter
from medtwin.core.estimate.residual import ResidualError
from medtwin.core.estimate.sequential import SequentialFilter
from medtwin.core.estimate.ukf import UnscentedKalmanFilter

__all__ = ["FOCEI", "Dynamics", "EnsembleKalmanFilter", "LearnedParameter", "MapResult",
           "ModelDynamics", "NoiseModel", "ObservationModel", "ObservedData",
           "OrnsteinUhlenbeck", "ParticleFilter", "RandomWalk", "Reading", "ResidualError",
           "SequentialFilter", "UnscentedKalmanFilter", "check_omega", "eakf_update",
           "map_estimate", "propagate_batch"]
