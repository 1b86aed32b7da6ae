"""Error types whose messages are meant for a person, not a stack trace.

Every failure a user can cause (a bad file, a missing folder, an unavailable model) raises a
subclass of :class:`MedotError`; the CLI and the app print ``str(error)`` and keep going.
"""


class MedotError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class ImageReadError(MedotError):
    """An image file (or upload) could not be turned into a valid image."""


class BackboneUnavailableError(MedotError):
    """A requested backbone cannot be loaded here (weights missing, no network, bad name)."""


class DatasetLayoutError(MedotError):
    """A dataset folder does not follow the expected layout."""


class CheckpointError(MedotError):
    """A checkpoint is missing, malformed or incompatible."""


class PathNotAllowedError(MedotError):
    """A user-typed path points outside the configured data root."""


class OTError(MedotError):
    """An optimal-transport solve failed (non-finite values, no feasible plan)."""


class OTConvergenceWarning(UserWarning):
    """An optimal-transport solve stopped at its iteration budget before meeting its tolerance.

    Issued once per call site (Python's default warning filter), like POT's ``UserWarning``; the
    message names the fix to try. ``result.diagnostics.converged`` says which problems missed.
    """
