"""MHA and NRRD through SimpleITK: a real volume converted by SimpleITK reads as its NIfTI
original does, and a derived slice goes back with its geometry, checked by SimpleITK."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_modality_lut

from medsingan.errors import ScanReadError, ScanWriteError, UnsupportedScanError
from medsingan.io import read_scan, write_scan
from tests.conftest import dicom_file, nifti_file

ANATOMICAL = nifti_file("anatomical.nii")
NIFTI = nib.load(ANATOMICAL)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
FORMATS = [".nrrd", ".mha"]


# Voxel axes (rows, columns, slices) of slices across each voxel axis as viewers show them:
# axial anterior up and the patient's right on the left (rows to posterior, columns to the
# left), coronal superior up and right on the left, sagittal superior up and anterior left.
SHOWN_CODES = {2: ("P", "L", "S"), 1: ("I", "L", "A"), 0: ("I", "P", "R")}


def _turn(axis: int) -> np.ndarray:
    """nibabel's orientation transform from the file's voxel axes to SHOWN_CODES[axis]."""
    return nib.orientations.ornt_transform(nib.io_orientation(NIFTI.affine),
                                           nib.orientations.axcodes2ornt(SHOWN_CODES[axis]))


def _shown(axis: int, index: int) -> np.ndarray:
    """Slice ``index`` across voxel axis ``axis``, turned by nibabel as viewers show it."""
    turn = _turn(axis)
    assert turn[axis, 0] == 2  # the slice axis stays the slice axis
    if turn[axis, 1] < 0:  # reversed by the turn
        index = NIFTI.shape[axis] - 1 - index
    return np.asanyarray(NIFTI.as_reoriented(turn).dataobj)[:, :, index]


@pytest.fixture(scope="module", params=FORMATS)
def converted(request, tmp_path_factory) -> Path:
    """anatomical.nii converted by SimpleITK itself."""
    path = tmp_path_factory.mktemp("sitk") / f"anatomical{request.param}"
    sitk.WriteImage(sitk.ReadImage(str(ANATOMICAL)), str(path))
    return path


@pytest.mark.parametrize("k", [0, 5, 12, 24])
def test_a_converted_volume_reads_as_its_nifti_original(converted, k):
    scan = read_scan(converted, slice_index=k)
    nifti = read_scan(ANATOMICAL, slice_index=k)
    np.testing.assert_array_equal(scan.image, nifti.image)
    # axial: slice k of the voxel grid, the way nibabel turns it for viewing
    np.testing.assert_array_equal(scan.image, _shown(2, k))
    np.testing.assert_allclose(scan.meta.affine, NIFTI.affine, atol=1e-6)
    assert scan.meta.pixel_spacing == nifti.meta.pixel_spacing == (2.0, 2.0)
    assert scan.meta.display_transform == nifti.meta.display_transform
    assert (scan.meta.slice_axis, scan.meta.slice_index) == (2, k)
    assert scan.meta.format == {".nrrd": "nrrd", ".mha": "mha"}[converted.suffix]
    assert (scan.meta.storage_dtype, scan.meta.signed, scan.meta.bits_stored) == ("int16",
                                                                                  True, 16)


@pytest.mark.parametrize("axis", [0, 1])
def test_coronal_and_sagittal_slices_are_shown_as_their_nifti_originals(converted, axis):
    scan = read_scan(converted, slice_index=10, slice_axis=axis)
    np.testing.assert_array_equal(scan.image,
                                  read_scan(ANATOMICAL, slice_index=10, slice_axis=axis).image)
    np.testing.assert_array_equal(scan.image, _shown(axis, 10))


def test_the_default_slice_is_the_middle_one_with_a_note(converted):
    scan = read_scan(converted)
    assert scan.meta.slice_index == NIFTI.shape[2] // 2
    assert any("--slice" in note for note in scan.meta.notes)


def _sitk_geometry(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array(image.GetOrigin()), np.array(image.GetSpacing()),
            np.reshape(image.GetDirection(), (image.GetDimension(),) * 2))


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_derived_slice_goes_back_with_its_geometry(converted, tmp_path, suffix):
    k = 17
    scan = read_scan(converted, slice_index=k)
    derived = scan.image + np.arange(scan.image.size).reshape(scan.image.shape) % 7
    derived[0, 0] = 3000  # the top left corner: anterior and on the patient's right
    out = write_scan(derived, scan.meta, tmp_path / f"derived{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary left
    written = sitk.ReadImage(str(out))
    origin, spacing, direction = _sitk_geometry(written)
    assert written.GetSize() == (*NIFTI.shape[:2], 1)
    assert written.GetPixelID() == sitk.sitkInt16
    np.testing.assert_allclose(origin, (LPS @ NIFTI.affine @ [0, 0, k, 1])[:3], atol=1e-6)
    np.testing.assert_allclose(spacing, NIFTI.header.get_zooms(), atol=1e-6)
    source_direction = LPS[:3, :3] @ NIFTI.affine[:3, :3] / NIFTI.header.get_zooms()
    np.testing.assert_allclose(direction, source_direction, atol=1e-6)
    # the file's voxels, (x, y) as SimpleITK indexes them, are the derived image turned back
    # by nibabel to the source's voxel order
    voxels = sitk.GetArrayFromImage(written)[0].T
    back_turn = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(SHOWN_CODES[2]),
                                                nib.io_orientation(NIFTI.affine))
    expected = nib.orientations.apply_orientation(derived[:, :, None], back_turn)[:, :, 0]
    np.testing.assert_array_equal(voxels, expected)
    # the marked corner is the most anterior, most right-hand point of the slice
    corner = np.argwhere(voxels == 3000)[0]
    point = np.array(written.TransformIndexToPhysicalPoint((int(corner[0]), int(corner[1]), 0)))
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in NIFTI.shape[:2]), indexing="ij"), -1)
    world = (NIFTI.affine[:2, :2] @ grid.reshape(-1, 2).T).T + NIFTI.affine[:2, 3]
    np.testing.assert_allclose([-point[0], -point[1]], [world[:, 0].max(), world[:, 1].max()])
    back = read_scan(out)
    np.testing.assert_array_equal(back.image, derived)
    np.testing.assert_allclose(back.meta.affine @ np.array([0, 0, 0, 1]),
                               NIFTI.affine @ [0, 0, k, 1], atol=1e-6)


def test_a_resized_slice_covers_the_source_slice(converted, tmp_path):
    scan = read_scan(converted, slice_index=3)
    half = scan.image[::2, ::2][:20, :16]  # 20 x 16 over the source's 41 x 33 pixels
    written = sitk.ReadImage(str(write_scan(half, scan.meta, tmp_path / "half.mha")))
    source = sitk.ReadImage(str(converted))
    for corner in ((-0.5, -0.5), (32.5, 40.5)):  # outer edges of the source's corner voxels
        index = [(c + 0.5) * new / size - 0.5
                 for c, size, new in zip(corner, (33, 41), written.GetSize()[:2], strict=True)]
        np.testing.assert_allclose(
            written.TransformContinuousIndexToPhysicalPoint((*index, 0.0)),
            source.TransformContinuousIndexToPhysicalPoint((*corner, 3.0)), atol=1e-6)


def test_a_2d_image_is_read_and_written_back_2d(tmp_path):
    plane = sitk.ReadImage(str(ANATOMICAL))[:, :, 12]  # SimpleITK's own 2D slice
    path = tmp_path / "plane.mha"
    sitk.WriteImage(plane, str(path))
    scan = read_scan(path)
    np.testing.assert_array_equal(scan.image, read_scan(ANATOMICAL, slice_index=12).image)
    assert not scan.meta.notes
    written = sitk.ReadImage(str(write_scan(scan.image, scan.meta, tmp_path / "out.nrrd")))
    assert written.GetDimension() == 2
    for got, want in zip(_sitk_geometry(written), _sitk_geometry(plane), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written),
                                  sitk.GetArrayFromImage(plane))


def test_ct_values_keep_their_hounsfield_units_and_place(tmp_path):
    source = dicom_file("CT_small.dcm")
    scan = read_scan(source)
    written = sitk.ReadImage(str(write_scan(scan.image, scan.meta, tmp_path / "ct.mha")))
    ds = pydicom.dcmread(source)
    hounsfield = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written)[0], hounsfield)
    origin, spacing, direction = _sitk_geometry(written)
    np.testing.assert_allclose(origin, [float(v) for v in ds.ImagePositionPatient], atol=1e-4)
    np.testing.assert_allclose(spacing[:2], [float(v) for v in ds.PixelSpacing][::-1])
    cosines = [float(v) for v in ds.ImageOrientationPatient]
    np.testing.assert_allclose(direction[:, 0], cosines[:3], atol=1e-6)  # x: along a row
    np.testing.assert_allclose(direction[:, 1], cosines[3:], atol=1e-6)  # y: down a column
    back = read_scan(tmp_path / "ct.mha")
    assert back.meta.units == "HU"
    np.testing.assert_array_equal(back.image, hounsfield)
    # a CT window the values were clipped to is recorded beside them
    clipped = np.clip(scan.image, -160, 240)
    windowed = sitk.ReadImage(str(write_scan(clipped, scan.meta, tmp_path / "window.nrrd",
                                             clip_window=(-160.0, 240.0))))
    assert windowed.GetMetaData("medsingan_clip_window") == "-160 240 HU"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(windowed)[0],
                                  np.clip(hounsfield, -160, 240))


def _vector(path: Path) -> list[str]:
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkVectorUInt8, 3), str(path))
    return ["3-component"]


def _complex(path: Path) -> list[str]:
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkComplexFloat32), str(path))
    # MetaImage has no complex type: SimpleITK stores it as two components
    return ["complex" if path.suffix == ".nrrd" else "2-component"]


def _four_d(path: Path) -> list[str]:
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkInt16), str(path))
    return ["4D"]


def _garbage(path: Path) -> list[str]:
    path.write_bytes(b"this is not an image\n" * 10)
    return ["cannot read", "corrupt"]


def _truncated(path: Path) -> list[str]:
    sitk.WriteImage(sitk.ReadImage(str(ANATOMICAL)), str(path))
    path.write_bytes(path.read_bytes()[:-4000])
    return ["cannot read", "truncated"]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("make", [_vector, _complex, _four_d, _garbage, _truncated])
def test_images_medsingan_cannot_use_get_one_line(tmp_path, make, suffix):
    path = tmp_path / f"bad{suffix}"
    fragments = make(path)
    with pytest.raises(ScanReadError) as error:
        read_scan(path)
    assert "\n" not in str(error.value)
    for fragment in fragments:
        assert fragment in str(error.value)
    if make in (_vector, _complex, _four_d):
        assert isinstance(error.value, UnsupportedScanError)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("compressed", [False, True])
def test_a_header_claiming_gigabytes_is_refused_before_they_are_allocated(tmp_path, suffix,
                                                                          compressed):
    """A small real image whose header is edited to announce 32767 x 32767 x 3 pixels (6 GiB
    of int16): one line naming the claim, without the reader first allocating it (the
    process's peak memory grows by far less than the claim)."""
    import resource

    path = tmp_path / f"huge{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(ANATOMICAL)), str(path), useCompression=compressed)
    data = path.read_bytes()
    key = b"sizes: " if suffix == ".nrrd" else b"DimSize = "
    start = data.index(key) + len(key)
    end = data.index(b"\n", start)
    assert data[start:end].split() == [str(n).encode() for n in NIFTI.shape]
    path.write_bytes(data[:start] + b"32767 32767 3" + data[end:])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB
    with pytest.raises(ScanReadError) as error:
        read_scan(path)
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    message = str(error.value)
    assert "\n" not in message and "32767x32767x3" in message and "6.0 GiB" in message
    assert grown_gib < 1.0


def test_headers_written_otherwise_still_read_as_their_source(tmp_path):
    """The size check reads the header itself: CRLF line ends in an NRRD, ``Key : Value``
    and ``CompressedData = T`` in a MetaImage, and an ASCII MetaImage of floats (text
    shorter than the float32 pixels) are valid (SimpleITK reads them), and their slice reads
    as the source NIfTI's slice (nibabel)."""
    image = sitk.Cast(sitk.ReadImage(str(ANATOMICAL))[:, :, 10:13], sitk.sitkFloat32)
    cases = []
    nrrd = tmp_path / "crlf.nrrd"
    sitk.WriteImage(image, str(nrrd), useCompression=True)
    data = nrrd.read_bytes()
    end = data.index(b"\n\n")
    nrrd.write_bytes(data[:end].replace(b"\n", b"\r\n") + b"\r\n\r\n" + data[end + 2:])
    cases.append(nrrd)
    mha = tmp_path / "t.mha"
    sitk.WriteImage(image, str(mha), useCompression=True)
    data = mha.read_bytes()
    mha.write_bytes(data.replace(b"CompressedData = True", b"CompressedData : T", 1))
    cases.append(mha)
    text = tmp_path / "ascii.mha"
    voxels = sitk.GetArrayFromImage(image).ravel()
    text.write_text("NDims = 3\nDimSize = " + " ".join(map(str, image.GetSize())) +
                    "\nElementType = MET_FLOAT\nBinaryData = False\nElementDataFile = LOCAL\n"
                    + " ".join("0" if v == 0 else "1" for v in voxels) + "\n")
    cases.append(text)
    original = read_scan(ANATOMICAL, slice_index=11).image.astype(np.float32)  # nibabel's
    for path in cases:
        expected = (original != 0).astype(np.float32) if path == text else original
        np.testing.assert_array_equal(read_scan(path, slice_index=1).image, expected,
                                      err_msg=path.name)


def test_a_detached_header_without_its_data_gets_one_line(tmp_path):
    header = tmp_path / "scan.mhd"
    sitk.WriteImage(sitk.ReadImage(str(ANATOMICAL)), str(header))
    np.testing.assert_array_equal(read_scan(header, slice_index=4).image,
                                  read_scan(ANATOMICAL, slice_index=4).image)
    for data in tmp_path.glob("scan.*raw"):
        data.unlink()
    with pytest.raises(ScanReadError) as error:
        read_scan(header)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("options", "fragment"), [
    ({"slice_index": 25}, "0..24"),
    ({"slice_axis": 3}, "0, 1 or 2"),
    ({"volume": 0}, "--volume applies to 4D NIfTI"),
    ({"frame": 0}, "--frame applies to multi-frame DICOM"),
])
def test_options_that_do_not_fit_get_one_line(converted, options, fragment):
    with pytest.raises(ScanReadError) as error:
        read_scan(converted, **options)
    assert "\n" not in str(error.value) and fragment in str(error.value)


def test_a_detached_header_is_not_written(converted, tmp_path):
    scan = read_scan(converted, slice_index=1)
    with pytest.raises(ScanWriteError, match="choose .mha or .nrrd"):
        write_scan(scan.image, scan.meta, tmp_path / "out.mhd")
    assert list(tmp_path.iterdir()) == []
