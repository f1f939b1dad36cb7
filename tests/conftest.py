"""Shared fixtures: real scans shipped by the pydicom, pydicom-data and nibabel packages."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel
import pytest
import torch
from pydicom.data import get_testdata_file

# Tiny test tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
# spinning threads thrash (a 3-scale toy run took 190 s instead of 4 s): one thread keeps test
# times stable. CLI subprocesses inherit the environment variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

NIBABEL_DATA = Path(os.path.dirname(nibabel.__file__)) / "tests" / "data"


def dicom_file(name: str) -> Path:
    """Path of a DICOM test file by exact name (never a wildcard: that would try a download)."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} not found: install the dev extra (pydicom-data)"
    return Path(path)


def nifti_file(name: str) -> Path:
    path = NIBABEL_DATA / name
    assert path.exists(), path
    return path


@pytest.fixture(scope="session")
def ct_image() -> torch.Tensor:
    """pydicom's CT_small.dcm (128 x 128) scaled to [-1, 1], ``(1, 1, 128, 128)``."""
    import numpy as np
    import pydicom

    pixels = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array.astype(np.float32)
    unit = (pixels - pixels.min()) / (pixels.max() - pixels.min()) * 2 - 1
    return torch.from_numpy(unit)[None, None]


@pytest.fixture
def copy_to(tmp_path: Path):
    """Copy a file into the test's folder (to damage it or write beside it)."""

    def _copy(source: Path, name: str | None = None) -> Path:
        target = tmp_path / (name or source.name)
        shutil.copyfile(source, target)
        return target

    return _copy


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines dciodvfy (Debian's dicom3tools) reports for a file."""
    import subprocess

    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Error")]


@pytest.fixture(scope="session")
def dciodvfy() -> None:
    """dciodvfy must be there in CI (.ci/run installs it); locally a test may skip without it."""
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is missing: .ci/run installs Debian's dicom3tools")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")


def _stand_in_weights(folder: Path, name: str, **inception_kwargs) -> Path:
    """torchvision's InceptionV3 built with ``inception_kwargs`` and seeded random values,
    saved as ``folder / name``: the networks cannot be downloaded here, but every loading step
    and every score is real."""
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = torchvision.models.inception_v3(weights=None, init_weights=True,
                                                  **inception_kwargs)
    path = folder / name
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """A stand-in for torchvision's ImageNet InceptionV3 weights (the default ``paper`` SIFID
    variant): the same file name, layer names and shapes."""
    from medsingan.metrics.sifid import PAPER_WEIGHTS_NAME

    return _stand_in_weights(tmp_path_factory.mktemp("weights"), PAPER_WEIGHTS_NAME,
                             aux_logits=True)


@pytest.fixture(scope="session")
def fid_inception_weights(tmp_path_factory) -> Path:
    """A stand-in for pytorch-fid's FID Inception weights (the ``fid64`` SIFID variant): its
    file name, layer names and shapes (1008 classes, no auxiliary classifier)."""
    from medsingan.metrics.sifid import FID_WEIGHTS_NAME

    return _stand_in_weights(tmp_path_factory.mktemp("fid_weights"), FID_WEIGHTS_NAME,
                             aux_logits=False, num_classes=1008)
