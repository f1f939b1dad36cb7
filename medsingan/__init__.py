"""medsingan: single-image GAN (SinGAN) augmentation for medical scans."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medsingan")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
