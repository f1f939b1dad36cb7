"""Every output format is faithful: a cohort written as DICOM, NIfTI or PNG from a MONOCHROME1
radiograph, a CT and an MR reads back in the source's orientation, polarity and units, and an
interrupted cohort of each completes with the diversity of an uninterrupted one."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsingan.augment import AugmentRequest, augment, load_complete_run
from medsingan.generate import sample
from medsingan.io import read_scan
from medsingan.preprocess import IntensityMapping
from medsingan.runs import train_scan
from tests.conftest import dicom_file

TINY = {"max_size": 32, "iters": 12, "nfc": 16, "max_nfc": 16, "seed": 0}
SOURCES = {"cr": ("RG1_UNCR.dcm", "xray"), "ct": ("CT_small.dcm", "ct"),
           "mr": ("MR_small.dcm", "mri")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    for name, (source, modality) in SOURCES.items():
        train_scan(dicom_file(source), folder / name, modality=modality, overrides=TINY,
                   progress=False)
    return folder


def cohort(run_dir, out, fmt, n):
    return augment(AugmentRequest(run_dir=run_dir, n=n, sifid=False, progress=False,
                                  out=out / "samples", manifest=out / "manifest.csv",
                                  output_format=fmt))


def expected_samples(run_dir, n: int) -> tuple[list[np.ndarray], IntensityMapping]:
    """The cohort's samples as the generator draws them, in the scan's units."""
    pyramid, extra = load_complete_run(run_dir)
    mapping = IntensityMapping.from_dict(extra["intensity_mapping"])
    units = sample(pyramid, n, pyramid.coarsest, 0, batch_size=n, shapes=pyramid.shapes)
    return [mapping.from_unit(u[0].numpy()) for u in units], mapping


@pytest.mark.parametrize("fmt", ["dcm", "nii", "png"])
@pytest.mark.parametrize("name", list(SOURCES))
def test_a_cohort_reads_back_as_it_was_generated_and_completes_alike(runs, tmp_path, name,
                                                                     fmt):
    run_dir = runs / name
    whole = cohort(run_dir, tmp_path / "whole", fmt, 4)
    expected, mapping = expected_samples(run_dir, 4)
    source = read_scan(dicom_file(SOURCES[name][0]))
    # one quantisation step of the stored values (the PNG of a signed source: its window
    # over 16 bits), and float rounding
    step = source.meta.rescale_slope
    if fmt == "png" and source.meta.signed:
        step = (mapping.high - mapping.low) / 65535
    for path, image in zip(sorted(whole.written), expected, strict=True):
        back = read_scan(path)
        assert back.shape == image.shape  # not transposed
        np.testing.assert_allclose(back.image, image,  # not mirrored, inverted or rescaled
                                   atol=step / 2 + 1e-4 * (mapping.high - mapping.low))
        if source.meta.units == "HU":
            assert back.meta.units == "HU"
    if fmt == "dcm":  # the stored pixels, as pydicom decodes them, in the source's polarity
        written = pydicom.dcmread(whole.written[0])
        assert written.PhotometricInterpretation == source.meta.photometric
        hu = pydicom.pixels.apply_modality_lut(written.pixel_array, written)
        if source.meta.inverted:
            hu = source.meta.physical_range[1] - hu
        np.testing.assert_allclose(hu, expected[0], atol=step / 2 + 1e-3)
    if fmt == "nii":
        np.testing.assert_allclose(nib.load(whole.written[0]).get_fdata()[:, :, 0],
                                   expected[0], atol=step / 2 + 1e-3)
    # interrupted after two samples, completed later: the same cohort
    cohort(run_dir, tmp_path / "parts", fmt, 2)
    rest = cohort(run_dir, tmp_path / "parts", fmt, 4)
    assert rest.skipped == 2
    assert rest.summary["diversity"] == pytest.approx(whole.summary["diversity"], rel=1e-3)
