"""The downstream side of medsingan: what a researcher does with a manifest.

``pipelines.classify`` trains a MONAI 2D classifier from a manifest's training split and scores
it on its test split, with or without the manifest's synthetic rows.
"""

# medsingan sets OMP_WAIT_POLICY before torch loads OpenMP (see medsingan/__init__.py); the
# pipelines import torch themselves, so medsingan must come first.
import medsingan  # noqa: F401
