"""Data: event generation, detector response, truth, readers for the real files, features and targets."""

from tauml.data.features import FEATURE_NAMES, JetArrays, jet_arrays
from tauml.data.schema import DataError

__all__ = ["FEATURE_NAMES", "DataError", "JetArrays", "jet_arrays"]
