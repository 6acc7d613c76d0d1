"""The errors a user can cause and fix. Imports nothing.

Everything raised for bad input (a config key, a data file, a checkpoint, an output folder, a
setting the machine cannot honour) derives from PixelwiseError, whose message names the file or
key, the value and what was expected. The command line prints such an error in one line and
exits 2; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["PixelwiseError", "ConfigError", "DataError", "DatasetNotFoundError", "CheckpointError", "TrainingError",
           "WeightsError", "OutputError", "InferenceError"]


class PixelwiseError(Exception):
    """An error the user can fix; its message says what was found and what was expected."""


class ConfigError(PixelwiseError, ValueError):
    """A configuration file, override or argument that cannot be used as written."""


class DataError(PixelwiseError, ValueError):
    """A data file that cannot be used as it is (missing, corrupt, wrong mode, values or size)."""


class DatasetNotFoundError(PixelwiseError, FileNotFoundError):
    """A dataset folder that does not exist; the message says where it looked and how to get the data."""


class CheckpointError(PixelwiseError, RuntimeError):
    """A checkpoint that cannot be read, is not safe to read, or does not fit."""


class TrainingError(PixelwiseError, RuntimeError):
    """A run that cannot start or go on (non-finite loss, a run folder in use, a task mismatch)."""


class WeightsError(PixelwiseError, RuntimeError):
    """Weights that cannot be found, downloaded or fitted to a model."""


class OutputError(PixelwiseError, OSError):
    """A file or folder that cannot be written (no permission, no space, a file in place of a folder)."""


class InferenceError(PixelwiseError, RuntimeError):
    """An image that cannot be predicted as configured (for example too large for memory in one pass)."""
