"""medsingan: single-image GAN (SinGAN) augmentation for medical scans."""

import os
from importlib.metadata import PackageNotFoundError, version

# SinGAN runs thousands of small convolutions. With OpenMP's default busy-waiting, intra-op
# threads that share cores with any other process (a second training, a cohort worker) spin
# instead of yielding: a toy 3-scale run took > 200 s instead of 12 s on a loaded 2-core machine.
# Must be set before torch loads OpenMP; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("medsingan")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
