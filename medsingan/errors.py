"""Exceptions with user-readable messages; only the CLI turns them into exit codes. Warnings
the user must read (:class:`MedsinganWarning`) the CLI prints as one ``warning:`` line each."""

from __future__ import annotations

import warnings
from collections.abc import Iterable


class MedsinganError(Exception):
    """Base class: the message is one line that says what is wrong and what to do."""


class ScanReadError(MedsinganError):
    """A file cannot be read as a scan (missing, empty, corrupt, unsupported)."""


class MissingDecoderError(ScanReadError):
    """The scan is compressed with a transfer syntax no installed decoder handles."""


class UnsupportedScanError(ScanReadError):
    """The file is a valid image but not one medsingan can use (colour DICOM, no pixels, ...)."""


class InvalidImageError(MedsinganError):
    """The pixel data cannot be trained on (constant, NaN/inf, too small)."""


class ScanWriteError(MedsinganError):
    """A derived scan cannot be written."""


class ConfigError(MedsinganError):
    """A preset, hyper-parameter or option value is invalid."""


class RunDirError(MedsinganError):
    """A run directory is missing, incomplete or corrupt."""


class TrainingInterrupted(MedsinganError):
    """Training was stopped (Ctrl-C); every scale finished before that is saved and resumable."""


class MedsinganWarning(UserWarning):
    """Something the user must know about an output that is still written (e.g. burned-in
    text in the source's pixels)."""


def warn_user(messages: Iterable[str]) -> None:
    """Issue each message as a :class:`MedsinganWarning`."""
    for message in messages:
        warnings.warn(message, MedsinganWarning, stacklevel=3)
