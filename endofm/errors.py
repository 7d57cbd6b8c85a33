"""Exception types of the package.

Every error a user can cause (a bad file, a bad value, a bad checkpoint) is raised as a subclass of
:class:`EndoFMError`, with a message that names the file or key at fault. The command line prints these
messages without a traceback and exits with a non-zero status.
"""

from __future__ import annotations


class EndoFMError(Exception):
    """Base class of every error the package raises on purpose."""


class InputError(EndoFMError, ValueError):
    """An argument or tensor that the function cannot work with (wrong shape, missing path, ...)."""


class CheckpointError(EndoFMError):
    """A checkpoint that is not an Endo-FM layout, is truncated, or pickles objects we refuse to load."""


class ConfigError(EndoFMError, ValueError):
    """A configuration key that does not exist or a value of the wrong type or range."""


class VideoError(EndoFMError):
    """A video or frame folder that cannot be opened or decoded."""


class DatasetError(EndoFMError):
    """A dataset folder in the wrong layout, or with labels or annotations that do not fit."""


class TrainingError(EndoFMError):
    """A training run that cannot go on (a non-finite loss, a resume that does not fit the config)."""


class StreamError(EndoFMError):
    """A live source that cannot be opened, is busy, stalls or breaks off."""


class ExportError(EndoFMError):
    """A model that cannot be exported, or an exported file that is not the model a command needs."""
