"""Reading slices of real NIfTI volumes and writing derived slices with their geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medsingan.errors import ScanReadError
from medsingan.io import read_scan, write_scan
from tests.conftest import nifti_file


def test_big_endian_3d_default_slice_is_the_middle_one():
    path = nifti_file("anatomical.nii")
    volume = nib.load(path)
    assert volume.header.endianness == ">"
    scan = read_scan(path)
    np.testing.assert_allclose(scan.image, volume.get_fdata()[:, :, 12])
    assert scan.shape == (33, 41)
    assert scan.meta.slice_index == 12 and scan.meta.notes
    assert scan.meta.pixel_spacing == pytest.approx(volume.header.get_zooms()[:2])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_along_any_axis(axis):
    path = nifti_file("anatomical.nii")
    data = nib.load(path).get_fdata()
    scan = read_scan(path, slice_index=4, slice_axis=axis)
    np.testing.assert_allclose(scan.image, np.take(data, 4, axis=axis))


def test_4d_needs_a_volume_choice():
    path = nifti_file("example4d.nii.gz")
    with pytest.raises(ScanReadError, match="--volume 0..1"):
        read_scan(path)
    data = nib.load(path).get_fdata()
    scan = read_scan(path, volume=1, slice_index=10)
    np.testing.assert_allclose(scan.image, data[:, :, 10, 1])
    assert scan.shape == (128, 96)
    with pytest.raises(ScanReadError, match="volume"):
        read_scan(path, volume=2)


def test_slice_out_of_range():
    with pytest.raises(ScanReadError, match=r"slice 25 is out of range.*0\.\.24"):
        read_scan(nifti_file("anatomical.nii"), slice_index=25)


def test_affine_is_kept():
    path = nifti_file("example4d.nii.gz")
    scan = read_scan(path, volume=0, slice_index=3)
    np.testing.assert_allclose(scan.meta.affine, nib.load(path).affine)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("anatomical.nii", {"slice_index": 7}),
    ("example4d.nii.gz", {"volume": 1, "slice_index": 10}),
])
def test_nifti_round_trip_keeps_values_and_world_position(tmp_path, name, kwargs):
    source = read_scan(nifti_file(name), **kwargs)
    out = write_scan(source.image, source.meta, tmp_path / "derived.nii.gz")
    written = nib.load(out)
    assert written.shape == (*source.shape, 1)
    assert written.get_data_dtype() == np.dtype(source.meta.storage_dtype)
    np.testing.assert_allclose(written.get_fdata()[:, :, 0], source.image, atol=0.5)
    # voxel (i, j, 0) of the derived slice sits where voxel (i, j, k) of the source did
    src_affine = np.asarray(source.meta.affine)
    np.testing.assert_allclose(written.affine @ [3, 5, 0, 1],
                               src_affine @ [3, 5, kwargs["slice_index"], 1], atol=1e-4)
    np.testing.assert_allclose(written.header.get_zooms()[:2],
                               nib.load(nifti_file(name)).header.get_zooms()[:2])
    back = read_scan(out)
    np.testing.assert_allclose(back.image, source.image, atol=0.5)
