"""User-facing errors.

Every error a user can cause (a bad file, an unknown layer, a head that does not fit the backbone)
is a :class:`TameError` whose message is one line saying what is wrong. The CLI and the app print
that line and nothing else; anything that is not a ``TameError`` is a bug and keeps its traceback.
"""

from __future__ import annotations


class TameError(Exception):
    """Base class: the message is a complete, one-line explanation for the user."""

    def __str__(self) -> str:  # keep it to one line whatever the caller passed
        return " ".join(str(self.args[0]).split()) if self.args else self.__class__.__name__


class ImageLoadError(TameError, ValueError):
    """An image file could not be read or is unsafe to decode."""


class BackboneError(TameError, ValueError):
    """Unknown backbone name, or weights that do not fit it."""


class LayerError(TameError, ValueError):
    """Unknown layer, or a layer whose output cannot become a spatial map."""


class ClassError(TameError, ValueError):
    """Unknown class name or index."""


class CheckpointError(TameError, ValueError):
    """A head checkpoint is malformed or was made for another backbone/layers."""


class HubError(TameError, RuntimeError):
    """A Hugging Face Hub repository, revision or file could not be reached or verified."""


class EvaluationError(TameError, ValueError):
    """Bad input to a metric, a baseline method or an evaluation run (unknown method, wrong shapes)."""


class TrainingError(TameError, ValueError):
    """A training option, data folder or saved training state that cannot be used."""


class OptionError(TameError, ValueError):
    """An option outside the values it can take (a batch size, a geometry, a limit)."""


class OutputError(TameError, OSError):
    """An output file or folder that cannot be written (an existing file in the way, no permission)."""


class AccessError(TameError, PermissionError):
    """A server path outside the folders a deployment lets app users read (``TAME_ALLOWED_ROOTS``)."""
