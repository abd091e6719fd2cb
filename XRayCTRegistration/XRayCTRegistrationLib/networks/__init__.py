"""Stage-1 initialisation networks: the patient-specific pose regressor and SOPI's RTPI module.

All networks are plain torch (no torchvision) and small enough to train on a few CPU cores.
"""

from .regressor import PoseRegressor, RegressorConfig
from .rtpi import RTPI, RTPIConfig

__all__ = ["PoseRegressor", "RegressorConfig", "RTPI", "RTPIConfig"]
