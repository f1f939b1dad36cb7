"""Exceptions with user-readable messages; only the CLI turns them into exit codes."""


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
