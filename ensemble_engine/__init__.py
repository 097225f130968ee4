"""ensemble-engine: a plugin-based ensemble engine with a stable prediction format."""

from .errors import EEError
from .losses import create_loss
from .store import PredictionStore, open_store
from .strict_yaml import load_yaml

__all__ = ["EEError", "PredictionStore", "create_loss", "load_yaml", "open_store"]
