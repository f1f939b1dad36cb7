"""Reading slices of real NIfTI volumes and writing derived slices with their geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medsingan.errors import ScanReadError
from medsingan.io import read_scan, write_scan
from tests.conftest import nifti_file


def _display(voxels: np.ndarray, transform: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, flip_rows, flip_columns = transform
    image = voxels.T if transpose else voxels
    image = image[::-1] if flip_rows else image
    return image[:, ::-1] if flip_columns else image


def _volume(path, data: np.ndarray, affine: np.ndarray):
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_are_shown_as_viewers_show_them_whatever_the_storage_order(tmp_path, axis):
    """Radiological display: superior (sagittal/coronal) or anterior (axial) at the top,
    the patient's right (or, sagittal, anterior) on the left; the same anatomy stored RAS,
    LPS or with permuted axes gives the same image."""
    ras = np.random.default_rng(0).random((6, 7, 5))
    expected = np.take(ras, 2, axis=axis).T[::-1, ::-1]  # RAS+: world decreasing on screen
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:2, 3] = [5, 6]
    permuted = np.zeros((4, 4))
    permuted[0, 1] = permuted[1, 0] = permuted[2, 2] = permuted[3, 3] = 1.0
    stored = {
        "ras": (ras, np.eye(4)),
        "lps": (ras[::-1, ::-1], lps),
        "yxz": (ras.transpose(1, 0, 2), permuted),
    }
    for name, (data, affine) in stored.items():
        storage_axis = {0: 1, 1: 0}.get(axis, axis) if name == "yxz" else axis
        # LPS stores x and y reversed: the same slice has the mirrored index
        index = ras.shape[axis] - 1 - 2 if name == "lps" and axis < 2 else 2
        scan = read_scan(_volume(tmp_path / f"{name}.nii.gz", data, affine), slice_index=index,
                         slice_axis=storage_axis)
        np.testing.assert_allclose(scan.image, expected, err_msg=name)
        back = read_scan(write_scan(scan.image, scan.meta, tmp_path / f"{name}_out.nii.gz"))
        np.testing.assert_allclose(back.image, expected, atol=1e-5, err_msg=name)


def test_a_resized_slice_covers_the_source_slice_exactly(tmp_path):
    source = read_scan(nifti_file("anatomical.nii"), slice_index=7)
    doubled = np.kron(source.image, np.ones((2, 2), dtype=np.float32))
    written = nib.load(write_scan(doubled, source.meta, tmp_path / "x2.nii.gz"))
    # the four new voxels over source voxel (0, 0) are centred on it
    np.testing.assert_allclose(written.affine @ [0.5, 0.5, 0, 1],
                               np.asarray(source.meta.affine) @ [0, 0, 7, 1], atol=1e-5)


def test_big_endian_3d_default_slice_is_the_middle_one():
    path = nifti_file("anatomical.nii")
    volume = nib.load(path)
    assert volume.header.endianness == ">"
    scan = read_scan(path)
    voxels = volume.get_fdata()[:, :, 12]
    np.testing.assert_allclose(scan.image, _display(voxels, scan.meta.display_transform))
    assert scan.meta.slice_index == 12 and scan.meta.notes
    spacing = volume.header.get_zooms()[:2]
    if scan.meta.display_transform[0]:
        spacing = spacing[::-1]
    assert scan.meta.pixel_spacing == pytest.approx(spacing)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_along_any_axis(axis):
    path = nifti_file("anatomical.nii")
    data = nib.load(path).get_fdata()
    scan = read_scan(path, slice_index=4, slice_axis=axis)
    np.testing.assert_allclose(scan.image, _display(np.take(data, 4, axis=axis),
                                                    scan.meta.display_transform))


def test_4d_needs_a_volume_choice():
    path = nifti_file("example4d.nii.gz")
    with pytest.raises(ScanReadError, match="--volume 0..1"):
        read_scan(path)
    data = nib.load(path).get_fdata()
    scan = read_scan(path, volume=1, slice_index=10)
    np.testing.assert_allclose(scan.image, _display(data[:, :, 10, 1],
                                                    scan.meta.display_transform))
    assert sorted(scan.shape) == [96, 128]
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
    voxels = nib.load(nifti_file(name)).get_fdata()
    voxels = voxels[:, :, kwargs["slice_index"]] if voxels.ndim == 3 else \
        voxels[:, :, kwargs["slice_index"], kwargs["volume"]]
    assert written.shape == (*voxels.shape, 1)
    assert written.get_data_dtype() == np.dtype(source.meta.storage_dtype)
    # back in the source's voxel order
    np.testing.assert_allclose(written.get_fdata()[:, :, 0], voxels, atol=0.5)
    # voxel (i, j, 0) of the derived slice sits where voxel (i, j, k) of the source did
    src_affine = np.asarray(source.meta.affine)
    np.testing.assert_allclose(written.affine @ [3, 5, 0, 1],
                               src_affine @ [3, 5, kwargs["slice_index"], 1], atol=1e-4)
    np.testing.assert_allclose(written.header.get_zooms()[:2],
                               nib.load(nifti_file(name)).header.get_zooms()[:2])
    back = read_scan(out)
    np.testing.assert_allclose(back.image, source.image, atol=0.5)


def test_a_dicom_slice_written_as_nifti_keeps_its_place_in_the_patient(tmp_path):
    import pydicom

    from tests.conftest import dicom_file

    ds = pydicom.dcmread(dicom_file("CT_small.dcm"), stop_before_pixels=True)
    source = read_scan(dicom_file("CT_small.dcm"))
    written = nib.load(write_scan(source.image, source.meta, tmp_path / "ct.nii.gz"))
    row, column = 10, 20
    lps = (np.array(ds.ImagePositionPatient, float)
           + column * float(ds.PixelSpacing[1]) * np.array(ds.ImageOrientationPatient[:3], float)
           + row * float(ds.PixelSpacing[0]) * np.array(ds.ImageOrientationPatient[3:], float))
    ras = lps * [-1, -1, 1]
    np.testing.assert_allclose((written.affine @ [row, column, 0, 1])[:3], ras, atol=1e-4)
    np.testing.assert_allclose(written.header.get_zooms()[:2],
                               [float(v) for v in ds.PixelSpacing], rtol=1e-5)
    np.testing.assert_allclose(written.get_fdata()[:, :, 0], source.image, atol=0.5)


def test_units_and_the_space_the_affine_refers_to_are_kept(tmp_path):
    image = nib.Nifti1Image(np.random.default_rng(1).random((20, 30, 3)).astype(np.float32),
                            np.diag([0.5, 0.5, 2.0, 1.0]))
    image.header.set_xyzt_units("micron")
    image.set_sform(image.affine, code=4)  # MNI space
    nib.save(image, str(tmp_path / "mni.nii.gz"))
    scan = read_scan(tmp_path / "mni.nii.gz", slice_index=1)
    written = nib.load(write_scan(scan.image, scan.meta, tmp_path / "out.nii.gz"))
    assert written.header.get_xyzt_units()[0] == "micron"
    assert int(written.header["sform_code"]) == 4


def test_complex_voxels_are_refused_not_truncated(tmp_path):
    from medsingan.errors import UnsupportedScanError

    data = (np.ones((8, 8, 3)) + 1j).astype(np.complex64)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "c.nii"))
    with pytest.raises(UnsupportedScanError, match="complex"):
        read_scan(tmp_path / "c.nii")


@pytest.mark.parametrize("source", ["RG1_UNCR.dcm", "gradient.png"])
def test_a_scan_without_patient_geometry_written_as_nifti_keeps_rows_and_columns(
        tmp_path, source):
    """A radiograph (no Image Position/Orientation) or a raster: DICOM's default plane,
    rows to the patient's posterior and columns to the left, so every reader shows it as
    stored: nibabel's voxel axes are the rows and the columns, and it reads back unturned."""
    from PIL import Image

    from tests.conftest import dicom_file

    if source.endswith(".png"):
        pixels = (np.arange(60 * 90).reshape(60, 90) * 3 % 251).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / source)
        path = tmp_path / source
    else:
        path = dicom_file(source)
    scan = read_scan(path)
    image = scan.image[::8, ::8] if scan.shape[0] > 1000 else scan.image
    out = write_scan(image, scan.meta, tmp_path / "slice.nii.gz")
    written = nib.load(out)
    assert written.shape[:2] == image.shape
    np.testing.assert_allclose(written.get_fdata()[:, :, 0], image, atol=0.5)
    assert nib.aff2axcodes(written.affine) == ("P", "L", "S")
    back = read_scan(out)
    assert back.shape == image.shape
    np.testing.assert_allclose(back.image, image, atol=0.5)
