"""Modality presets and the linear intensity mapping to [-1, 1] and back."""

from __future__ import annotations

import numpy as np
import pytest

from medsingan.errors import ConfigError, InvalidImageError
from medsingan.io import read_scan
from medsingan.preprocess import IntensityMapping, prepare_scan
from medsingan.presets import PRESET_NAMES, load_preset, preset_for_modality, resolve_preset
from tests.conftest import dicom_file, nifti_file


@pytest.mark.parametrize(("modality", "preset"), [
    ("CR", "xray"), ("DX", "xray"), ("MG", "xray"), ("IO", "dental"), ("PX", "dental"),
    ("CT", "ct"), ("MR", "mri"), ("NM", "generic"), (None, "generic"),
])
def test_auto_modality(modality, preset):
    assert preset_for_modality(modality) == preset


def test_every_preset_loads_with_training_defaults():
    for name in PRESET_NAMES:
        preset = load_preset(name)
        assert preset.name == name
        assert preset.train["min_size"] < preset.train["max_size"]
    with pytest.raises(ConfigError, match="choose one of"):
        load_preset("pet")


def test_radiograph_maps_its_full_stored_range_and_back_exactly():
    scan = read_scan(dicom_file("RG3_UNCR.dcm"))
    mapping, unit = prepare_scan(scan, resolve_preset("auto", scan.meta.modality))
    assert (mapping.low, mapping.high) == (0.0, 1023.0)
    assert unit.min() >= -1 and unit.max() <= 1 and unit.dtype == np.float32
    restored = scan.meta.to_stored(mapping.from_unit(unit))
    np.testing.assert_array_equal(restored, scan.meta.to_stored(scan.image))


def test_ct_window_clips_outside_hu_and_inverts_inside():
    scan = read_scan(dicom_file("693_UNCR.dcm"))
    mapping, unit = prepare_scan(scan, load_preset("ct"), window="soft_tissue")
    assert (mapping.low, mapping.high) == (-160.0, 240.0)
    inside = (scan.image > -160) & (scan.image < 240)
    np.testing.assert_allclose(mapping.from_unit(unit)[inside], scan.image[inside], atol=1e-3)
    assert unit[scan.image < -500].max() == -1.0


def test_mri_percentiles_are_robust_to_outliers():
    scan = read_scan(nifti_file("anatomical.nii"))
    mapping, unit = prepare_scan(scan, load_preset("mri"))
    assert mapping.high < scan.image.max()
    assert np.mean(unit == 1.0) <= 0.01


def test_degenerate_mappings_are_refused():
    with pytest.raises(ConfigError):
        IntensityMapping(low=5.0, high=5.0, method="window")
    scan = read_scan(dicom_file("693_UNCR.dcm"))
    scan.image[:] = -3000.0  # every pixel below any window
    with pytest.raises(InvalidImageError, match="constant"):
        prepare_scan(scan, load_preset("ct"))
