"""Errors for people: each names the file, key or shape at fault and says what to do.

The CLI prints an :class:`IntrudimError` as one paragraph (no traceback) and exits with status 2.
"""

from __future__ import annotations


class IntrudimError(Exception):
    """A problem with the user's input or environment, explained in plain words."""


class InputNotFoundError(IntrudimError):
    """A path given by the user does not exist."""


class IncompatibleWeightsError(IntrudimError):
    """Two sets of weights (base vs tuned, base vs adapter) do not fit together."""


class CorruptFileError(IntrudimError):
    """A weight file cannot be read (truncated, corrupt, or not the format it claims)."""


class PickleRefusedError(IntrudimError):
    """A pickle checkpoint was given without opting in to loading pickles."""


class InvalidConfigError(IntrudimError, ValueError):
    """A configuration value is out of its allowed range."""


class NonFiniteWeightsError(IntrudimError):
    """A weight matrix holds NaN or Inf values."""


class HubError(IntrudimError):
    """A Hugging Face Hub repository cannot be used: not cached while offline, not found, gated or private."""


class CacheDtypeError(IntrudimError):
    """A base SVD cache entry was written at another precision than the run asks for (half precision involved)."""
