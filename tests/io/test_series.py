"""DICOM series folders: a real MR volume exported as one file per slice reads back slice by
slice as the volume does; a folder that is not one clean series gets one line."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsingan.errors import ScanReadError
from medsingan.io import read_scan, write_scan
from tests.conftest import dciodvfy_errors, dicom_file, nifti_file

ANATOMICAL = nifti_file("anatomical.nii")


def _shown_volume() -> nib.Nifti1Image:
    """anatomical.nii turned by nibabel so that voxel (row, column, slice) runs to the
    patient's posterior, left and superior: the way an axial DICOM slice is stored and shown
    (Image Orientation 1\\0\\0\\0\\1\\0)."""
    image = nib.load(ANATOMICAL)
    turn = nib.orientations.ornt_transform(nib.io_orientation(image.affine),
                                           nib.orientations.axcodes2ornt(("P", "L", "S")))
    return image.as_reoriented(turn)


SHOWN = _shown_volume()
VOXELS = np.asanyarray(SHOWN.dataobj)
SLICES = VOXELS.shape[2]
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _file_name(index: int) -> str:
    """Shuffled names, no suffix (as many exports): the name order is not the slice order."""
    return f"IM{(index * 7 + 3) % SLICES:04d}"


def _write_series(folder: Path, *, positions: bool = True) -> Path:
    """One single-frame MR file per slice of the volume, on a real MR header (MR_small.dcm),
    with the geometry of the volume's affine; instance numbers run against the positions."""
    folder.mkdir()
    template = pydicom.dcmread(dicom_file("MR_small.dcm"))
    for keyword in ("PixelData", "DataSetTrailingPadding", "SmallestImagePixelValue",
                    "LargestImagePixelValue"):
        if keyword in template:
            del template[keyword]
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    world = LPS @ SHOWN.affine
    row_step, column_step, slice_step = (np.linalg.norm(world[:3, a]) for a in range(3))
    order = np.random.default_rng(0).permutation(SLICES)  # the order the files are written in
    for index in order:
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.InstanceNumber = SLICES - int(index)
        origin = (world @ [0, 0, index, 1])[:3]
        if positions:
            ds.ImagePositionPatient = [f"{v:.6g}" for v in origin]
            ds.SliceLocation = f"{origin[2]:.6g}"
        else:
            for keyword in ("ImagePositionPatient", "SliceLocation"):
                del ds[keyword]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*world[:3, 1] / column_step,
                                                          *world[:3, 0] / row_step)]
        ds.PixelSpacing = [f"{row_step:.6g}", f"{column_step:.6g}"]
        ds.SliceThickness = f"{slice_step:.6g}"
        pixels = np.ascontiguousarray(VOXELS[:, :, index], dtype="<i2")
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        ds.save_as(folder / _file_name(int(index)), enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    return _write_series(tmp_path_factory.mktemp("series") / "mr")


@pytest.fixture
def own_series(series, tmp_path) -> Path:
    """A copy of the series to damage."""
    return Path(shutil.copytree(series, tmp_path / "mr"))


def _edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


@pytest.mark.parametrize("k", [0, 7, 12, SLICES - 1])
def test_slice_k_of_a_series_is_slice_k_of_the_volume_in_pixels_and_place(series, k):
    scan = read_scan(series, slice_index=k)
    np.testing.assert_array_equal(scan.image, VOXELS[:, :, k])
    np.testing.assert_array_equal(scan.image, read_scan(ANATOMICAL, slice_index=k).image)
    # pixel (row, column) lies where nibabel puts voxel (row, column, k) of the volume
    expected = SHOWN.affine.copy()
    expected[:, 3] = SHOWN.affine @ [0, 0, k, 1]
    np.testing.assert_allclose(scan.meta.affine, expected, atol=1e-4)
    assert scan.meta.pixel_spacing == (2.0, 2.0)
    assert (scan.meta.format, scan.meta.modality) == ("dicom", "MR")
    assert (scan.meta.series_slices, scan.meta.series_index) == (SLICES, k)
    assert scan.meta.series_folder == str(series.resolve())
    assert Path(scan.meta.source_path).parent == series.resolve()
    # the slice's file alone reads the same (what a run re-reads for --keep-identifiers)
    np.testing.assert_array_equal(read_scan(scan.meta.source_path).image, scan.image)


def test_the_default_is_the_middle_slice_with_a_note(series):
    scan = read_scan(series)
    assert scan.meta.series_index == SLICES // 2
    np.testing.assert_array_equal(scan.image, VOXELS[:, :, SLICES // 2])
    assert any("--slice" in note and str(SLICES) in note for note in scan.meta.notes)


def test_without_positions_the_instance_numbers_order_the_slices(tmp_path):
    folder = _write_series(tmp_path / "mr", positions=False)
    scan = read_scan(folder, slice_index=3)
    # instance numbers run from the top: instance 4 is the fourth slice from the top
    np.testing.assert_array_equal(scan.image, VOXELS[:, :, SLICES - 4])
    assert any("Instance Number" in note for note in scan.meta.notes)


def test_files_that_are_not_dicom_images_are_skipped(own_series):
    (own_series / "README.txt").write_text("exported by a workstation\n")
    shutil.copyfile(dicom_file("rtplan.dcm"), own_series / "RTPLAN")  # DICOM, no image
    scan = read_scan(own_series, slice_index=5)
    np.testing.assert_array_equal(scan.image, VOXELS[:, :, 5])
    assert any("2 file(s)" in note for note in scan.meta.notes)


def _mixed_series(folder: Path) -> list[str]:
    _edit(folder / _file_name(3), SeriesInstanceUID="1.2.826.0.1.3680043.99.1")
    return [pydicom.dcmread(folder / _file_name(0)).SeriesInstanceUID,
            "1.2.826.0.1.3680043.99.1", "2 DICOM series"]


def _missing_slice(folder: Path) -> list[str]:
    (folder / _file_name(10)).unlink()
    return ["missing", _file_name(9), _file_name(11)]


def _one_of_three_missing(folder: Path) -> list[str]:
    """Slices 0, 1 and 3 only: one step is twice the other (a median of two hides it)."""
    for index in range(SLICES):
        if index not in (0, 1, 3):
            (folder / _file_name(index)).unlink()
    return ["missing", _file_name(1), _file_name(3)]


def _uneven_steps(folder: Path) -> list[str]:
    """Slice 5 moved 15 % of a step towards slice 6: steps of 1.15 and 0.85 slice steps."""
    here = np.array(pydicom.dcmread(folder / _file_name(5)).ImagePositionPatient, float)
    there = np.array(pydicom.dcmread(folder / _file_name(6)).ImagePositionPatient, float)
    _edit(folder / _file_name(5),
          ImagePositionPatient=[f"{v:.6g}" for v in here + 0.15 * (there - here)])
    return ["uneven slice spacing"]


def _other_spacing(folder: Path) -> list[str]:
    _edit(folder / _file_name(4), PixelSpacing=["2.5", "2.5"])
    return ["pixel spacing", _file_name(4)]


def _other_orientation(folder: Path) -> list[str]:
    tilt = np.deg2rad(10)
    _edit(folder / _file_name(6), ImageOrientationPatient=[
        "1", "0", "0", "0", f"{np.cos(tilt):.6f}", f"{np.sin(tilt):.6f}"])
    return ["orientation", _file_name(6)]


def _duplicate_position(folder: Path) -> list[str]:
    ds = pydicom.dcmread(folder / _file_name(8))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "IM9999")
    return ["same position", _file_name(8), "IM9999"]


def _other_size(folder: Path) -> list[str]:
    ds = pydicom.dcmread(folder / _file_name(2))
    pixels = ds.pixel_array[:-1]
    ds.Rows = pixels.shape[0]
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds.save_as(folder / _file_name(2))
    return ["differ in size", _file_name(2)]


def _empty(folder: Path) -> list[str]:
    shutil.rmtree(folder)
    folder.mkdir()
    return ["no files"]


def _not_dicom(folder: Path) -> list[str]:
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    (folder / "image.raw").write_bytes(bytes(range(256)) * 4)
    return ["2 file(s), none a DICOM image"]


def _only_folders(folder: Path) -> list[str]:
    """An export tree: the series sits one level down."""
    inner = folder.parent / "inner"
    folder.rename(inner)
    folder.mkdir()
    inner.rename(folder / "SERIES1")
    return ["only folders (SERIES1)"]


def _multi_frame(folder: Path) -> list[str]:
    shutil.rmtree(folder)
    folder.mkdir()
    shutil.copyfile(dicom_file("emri_small.dcm"), folder / "emri_small.dcm")
    return ["multi-frame", "--frame"]


@pytest.mark.parametrize("damage", [_mixed_series, _missing_slice, _one_of_three_missing,
                                    _uneven_steps, _other_spacing,
                                    _other_orientation, _duplicate_position, _other_size,
                                    _empty, _not_dicom, _only_folders, _multi_frame])
def test_a_folder_that_is_not_one_clean_series_gets_one_line(own_series, damage):
    fragments = damage(own_series)
    with pytest.raises(ScanReadError) as error:
        read_scan(own_series, slice_index=0)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(("options", "fragment"), [
    ({"slice_index": SLICES}, f"0..{SLICES - 1}"),
    ({"slice_index": -1}, "out of range"),
    ({"slice_axis": 1}, "--slice-axis does not apply"),
    ({"volume": 0}, "--volume does not apply"),
    ({"frame": 2, "slice_axis": 0}, "--frame and --slice-axis do not apply"),
])
def test_options_that_do_not_fit_a_series_get_one_line(series, options, fragment):
    with pytest.raises(ScanReadError) as error:
        read_scan(series, **options)
    assert "\n" not in str(error.value) and fragment in str(error.value)


def test_a_derived_slice_keeps_its_place_in_the_patient(series, tmp_path):
    k = 9
    scan = read_scan(series, slice_index=k)
    source = pydicom.dcmread(scan.meta.source_path)
    derived = pydicom.dcmread(write_scan(scan.image, scan.meta, tmp_path / "derived.dcm"))
    np.testing.assert_array_equal(derived.pixel_array, VOXELS[:, :, k])
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "SliceThickness"):
        assert derived[keyword].value == source[keyword].value, keyword
    # as NIfTI too: nibabel puts the one slice where the volume has slice k
    nifti = nib.load(write_scan(scan.image, scan.meta, tmp_path / "derived.nii.gz"))
    np.testing.assert_allclose(nifti.affine @ [0, 0, 0, 1], SHOWN.affine @ [0, 0, k, 1],
                               atol=1e-4)
    np.testing.assert_allclose(nifti.affine[:3, :3], SHOWN.affine[:3, :3], atol=1e-4)


def test_a_derived_slice_is_no_worse_a_dicom_object_than_its_source(series, tmp_path,
                                                                     dciodvfy):
    scan = read_scan(series, slice_index=4)
    derived = write_scan(scan.image, scan.meta, tmp_path / "derived.dcm")
    source_errors = dciodvfy_errors(Path(scan.meta.source_path))
    assert len(dciodvfy_errors(derived)) <= len(source_errors), dciodvfy_errors(derived)
