"""The pack's error catalogue.

Every error says what was expected, what was found, and what to do. Nodes let these
propagate: ComfyUI shows the message in the UI, so the message is the user's only help.
"""

from __future__ import annotations


class IPAdapterError(Exception):
    """Base class of every error this pack raises on purpose."""


# --- files -------------------------------------------------------------------------


class CheckpointError(IPAdapterError):
    """A file could not be read as an IP-Adapter checkpoint."""


class UnreadableCheckpointError(CheckpointError):
    """Empty, truncated or corrupt file, or a container format we do not read."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would import or call something beyond plain tensors."""


class NotAnAdapterError(CheckpointError):
    """A readable file that holds some other kind of model."""


class UnknownLayoutError(CheckpointError):
    """Looks like an IP-Adapter, but no known variant has this layout."""


# --- combinations ------------------------------------------------------------------


class IncompatibleModelError(IPAdapterError):
    """The adapter was made for another base model than the one it is applied to."""


class EncoderMismatchError(IPAdapterError):
    """The image features do not come from the encoder the adapter was trained with."""


class MissingModelFileError(IPAdapterError):
    """A preset asked for a file that is not installed."""


class OptionalDependencyError(IPAdapterError):
    """A feature needs a package that is not installed."""


# --- node inputs -------------------------------------------------------------------


class InvalidInputError(IPAdapterError, ValueError):
    """A node input has an unusable value or shape."""


class ImageInputError(InvalidInputError):
    pass


class MaskInputError(InvalidInputError):
    pass


class WeightSpecError(InvalidInputError):
    """Weights, schedules or per-layer weight strings that cannot be used."""
