"""One exception hierarchy for every user-facing error of the library.

The CLI catches :class:`SeqVAEError` and prints a single line; library code raises the most
specific subclass with a message that names the file, the field and what was expected.
"""


class SeqVAEError(Exception):
    """Base class of every error that pyro-seqvae raises for bad input or state."""


class DataError(SeqVAEError, ValueError):
    """A data file or tensor is missing, corrupt, or has the wrong structure."""


class ConfigError(SeqVAEError, ValueError):
    """An unknown name or an out-of-range hyperparameter."""


class IncompatibleGuideError(SeqVAEError, TypeError):
    """A guide cannot be paired with the given model."""


class CheckpointError(SeqVAEError, ValueError):
    """A checkpoint is missing, corrupt, or does not fit the data or model."""


class DivergenceError(SeqVAEError, RuntimeError):
    """The loss became NaN or infinite during training."""


class RunFolderError(SeqVAEError, OSError):
    """A run folder is taken by another run, locked, or cannot be written."""
