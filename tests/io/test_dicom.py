"""Reading real DICOM files and writing derived, de-identified DICOM objects."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence

from medsingan.errors import (
    MissingDecoderError,
    ScanReadError,
    ScanWriteError,
    UnsupportedScanError,
)
from medsingan.io import ScanMetadata, read_scan, write_scan
from medsingan.io.dicom import burned_in_annotation, write_dicom
from tests.conftest import dciodvfy_errors, dicom_file


@pytest.fixture(scope="module")
def chest():
    return read_scan(dicom_file("RG1_UNCR.dcm"))


@pytest.mark.parametrize("name", [
    "RG1_UNCR.dcm", "RG3_UNCR.dcm", "CT_small.dcm", "693_UNCR.dcm", "MR_small.dcm",
    "MR_small_RLE.dcm", "MR2_UNCR.dcm", "RG3_J2KR.dcm", "emri_small.dcm",
    "emri_small_big_endian.dcm",
])
def test_shape_is_rows_by_columns(name):
    header = pydicom.dcmread(dicom_file(name), stop_before_pixels=True)
    scan = read_scan(dicom_file(name))
    assert scan.shape == (header.Rows, header.Columns)
    assert scan.image.dtype == np.float32


def test_monochrome1_chest_shows_bone_brighter_than_lung(chest):
    image = chest.image
    rows, cols = image.shape
    lung = image[int(0.25 * rows):int(0.40 * rows), int(0.20 * cols):int(0.35 * cols)].mean()
    spine = image[int(0.25 * rows):int(0.40 * rows), int(0.47 * cols):int(0.53 * cols)].mean()
    assert chest.meta.photometric == "MONOCHROME1" and chest.meta.inverted
    assert spine > lung + 0.1 * (image.max() - image.min())
    # the stored pixels have the opposite polarity: the inversion is what made bone bright
    raw = pydicom.dcmread(dicom_file("RG1_UNCR.dcm")).pixel_array.astype(float)
    assert raw[int(0.25 * rows):int(0.40 * rows), int(0.47 * cols):int(0.53 * cols)].mean() < \
        raw[int(0.25 * rows):int(0.40 * rows), int(0.20 * cols):int(0.35 * cols)].mean()


def test_chest_is_upright(chest):
    """Lungs (dark) sit above the diaphragm and abdomen (bright) in an upright PA film."""
    image = chest.image
    rows = image.shape[0]
    upper_lungs = image[int(0.2 * rows):int(0.4 * rows)].mean()
    abdomen = image[int(0.8 * rows):int(0.95 * rows)].mean()
    assert abdomen > upper_lungs


def test_monochrome1_keeps_the_15_bit_range(chest):
    assert chest.meta.bits_stored == 15
    assert chest.meta.physical_range == (0.0, 32767.0)
    assert chest.image.min() >= 0 and chest.image.max() <= 32767
    assert chest.image.max() - chest.image.min() > 20000  # not squashed to 8 bits


def test_ct_is_in_hounsfield_units():
    scan = read_scan(dicom_file("693_UNCR.dcm"))
    assert scan.meta.units == "HU"
    inside_fov = scan.image[scan.image > -2000]
    assert -1050 < np.median(inside_fov) < -900  # mostly air around the body: about -1000 HU
    assert scan.image.max() > 500  # and bone well above water


@pytest.mark.parametrize(("compressed", "plain"), [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("RG3_J2KR.dcm", "RG3_UNCR.dcm"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
])
def test_lossless_compressed_decodes_like_uncompressed(compressed, plain):
    np.testing.assert_array_equal(read_scan(dicom_file(compressed)).image,
                                  read_scan(dicom_file(plain)).image)


def test_multiframe_frames_are_selectable():
    frames = pydicom.dcmread(dicom_file("emri_small.dcm")).pixel_array
    scan = read_scan(dicom_file("emri_small.dcm"), frame=3)
    np.testing.assert_array_equal(scan.image, frames[3].astype(np.float32))
    assert scan.meta.frame == 3
    default = read_scan(dicom_file("emri_small.dcm"))
    assert default.meta.frame == 5 and any("frame 5" in note for note in default.meta.notes)
    with pytest.raises(ScanReadError, match="0..9"):
        read_scan(dicom_file("emri_small.dcm"), frame=10)


def test_colour_dicom_is_refused():
    with pytest.raises(UnsupportedScanError, match="colour DICOM"):
        read_scan(dicom_file("SC_rgb.dcm"))


def test_dicom_without_pixel_data_is_refused():
    with pytest.raises(UnsupportedScanError, match="no pixel data"):
        read_scan(dicom_file("rtplan.dcm"))


def test_compressed_without_decoder_names_what_to_install():
    with pytest.raises(MissingDecoderError, match="pylibjpeg-libjpeg"):
        read_scan(dicom_file("JPEG-LL.dcm"))


def test_jpeg2000_without_decoders_names_the_extra(monkeypatch):
    import pydicom.pixels

    decoder = pydicom.pixels.get_decoder(pydicom.uid.JPEG2000Lossless)
    monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    monkeypatch.setattr(type(decoder), "missing_dependencies",
                        property(lambda self: ["pylibjpeg - requires pylibjpeg-openjpeg"]))
    with pytest.raises(MissingDecoderError, match=r"medsingan\[decoders\]"):
        read_scan(dicom_file("RG3_J2KR.dcm"))


def test_truncated_dicom_is_refused(copy_to):
    path = copy_to(dicom_file("CT_small.dcm"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(ScanReadError, match="truncated or corrupt"):
        read_scan(path)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "CT_small.dcm", "MR2_UNCR.dcm",
                                  "emri_small.dcm"])
def test_dicom_round_trip_keeps_values_geometry_and_depth(tmp_path, name):
    source = read_scan(dicom_file(name))
    out = write_scan(source.image, source.meta, tmp_path / "derived.dcm")
    back = read_scan(out)
    step = source.meta.rescale_slope
    assert back.shape == source.shape
    assert np.max(np.abs(back.image - source.image)) <= step * 0.5 + 1e-3
    assert back.meta.pixel_spacing == source.meta.pixel_spacing
    for field in ("bits_stored", "signed", "storage_dtype", "photometric", "rescale_slope",
                  "rescale_intercept", "units"):
        assert getattr(back.meta, field) == getattr(source.meta, field), field


def test_written_dicom_is_derived_new_and_deidentified(tmp_path, chest):
    source = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    out = write_scan(chest.image, chest.meta, tmp_path / "derived.dcm")
    written = pydicom.dcmread(out)
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert written[uid].value != source[uid].value
    assert written.file_meta.MediaStorageSOPInstanceUID == written.SOPInstanceUID
    assert list(written.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "synthetic" in written.DerivationDescription
    assert written.PatientIdentityRemoved == "YES"
    assert str(source.PatientName) and str(written.PatientName) != str(source.PatientName)
    assert written.PatientID != source.PatientID
    text = str(written)
    for identifier in (str(source.PatientName), source.PatientID):
        assert identifier not in text
    assert written.SOPClassUID == source.SOPClassUID  # CR stays CR


def test_identifiers_kept_on_request_and_pseudonym_applied(tmp_path, chest):
    source = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    kept = pydicom.dcmread(write_scan(chest.image, chest.meta, tmp_path / "k.dcm",
                                      keep_identifiers=True))
    assert kept.PatientName == source.PatientName
    pseudo = pydicom.dcmread(write_scan(chest.image, chest.meta, tmp_path / "p.dcm",
                                        patient_id="SUBJ-007"))
    assert pseudo.PatientID == "SUBJ-007"


def test_resized_output_scales_pixel_spacing(tmp_path):
    source = read_scan(dicom_file("CT_small.dcm"))
    half = source.image[::2, ::2]
    back = read_scan(write_scan(half, source.meta, tmp_path / "half.dcm"))
    assert back.shape == (64, 64)
    assert back.meta.pixel_spacing == pytest.approx(tuple(2 * s for s in
                                                          source.meta.pixel_spacing), rel=1e-5)


@pytest.mark.usefixtures("dciodvfy")
@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "CT_small.dcm",
                                  "MR2_UNCR.dcm", "emri_small.dcm", "eCT_Supplemental.dcm"])
def test_written_dicom_passes_dciodvfy_like_its_source(tmp_path, name):
    scan = read_scan(dicom_file(name))
    out = write_scan(scan.image, scan.meta, tmp_path / "derived.dcm")
    assert len(dciodvfy_errors(out)) <= len(dciodvfy_errors(dicom_file(name)))


def test_failed_write_leaves_nothing(tmp_path, chest, monkeypatch):
    import medsingan.io.dicom as dicom_module

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dicom_module.Dataset, "save_as", boom)
    with pytest.raises(Exception, match="No space left"):
        write_scan(chest.image, chest.meta, tmp_path / "derived.dcm")
    assert list(tmp_path.iterdir()) == []


def _transformation(slope: float, intercept: float) -> Sequence:
    item = pydicom.Dataset()
    item.RescaleSlope, item.RescaleIntercept, item.RescaleType = slope, intercept, "HU"
    return Sequence([item])


@pytest.mark.parametrize("frame", [0, 1])
def test_enhanced_ct_frames_are_in_hounsfield_units(frame):
    """eCT_Supplemental keeps its rescale in the shared functional groups, not at top level."""
    source = pydicom.dcmread(dicom_file("eCT_Supplemental.dcm"))
    assert "RescaleIntercept" not in source
    shared = source.SharedFunctionalGroupsSequence[0]
    (transformation,) = shared.PixelValueTransformationSequence
    slope, intercept = float(transformation.RescaleSlope), float(transformation.RescaleIntercept)
    scan = read_scan(dicom_file("eCT_Supplemental.dcm"), frame=frame)
    expected = source.pixel_array[frame] * slope + intercept
    np.testing.assert_array_equal(scan.image, expected.astype(np.float32))
    assert (scan.meta.rescale_slope, scan.meta.rescale_intercept) == (slope, intercept) == \
        (1.0, -1024.0)
    (window,) = shared.FrameVOILUTSequence
    assert (scan.meta.window_center, scan.meta.window_width) == \
        (float(window.WindowCenter), float(window.WindowWidth))
    # anatomy: air around the head near -1000 HU, the brain (grey and white matter, 20 to
    # 45 HU) between CSF (about 5 HU) and fresh blood (about 60 HU)
    image = scan.image
    for corner in (image[:32, :32], image[:32, -32:], image[-32:, :32], image[-32:, -32:]):
        assert -1050 < corner.mean() < -950
    assert 15 < np.median(image[image > -500]) < 60


def test_per_frame_rescale_wins_over_shared_and_top_level(tmp_path):
    """Each frame's own Pixel Value Transformation applies, once, even when the file also
    carries a shared one and a (non-standard) top-level rescale that MONAI's reader applies."""
    ds = pydicom.dcmread(dicom_file("eCT_Supplemental.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = 1, -500
    per_frame = [(2.0, -2048.0), (0.5, -1000.0)]
    for item, (slope, intercept) in zip(ds.PerFrameFunctionalGroupsSequence, per_frame,
                                        strict=True):
        item.PixelValueTransformationSequence = _transformation(slope, intercept)
    path = tmp_path / "per_frame.dcm"
    ds.save_as(path)
    stored = pydicom.dcmread(path).pixel_array
    for frame, (slope, intercept) in enumerate(per_frame):
        scan = read_scan(path, frame=frame)
        np.testing.assert_allclose(scan.image, stored[frame] * slope + intercept, atol=1e-3)
        assert (scan.meta.rescale_slope, scan.meta.rescale_intercept) == (slope, intercept)


@pytest.mark.parametrize("frame", [0, 1])
def test_enhanced_ct_round_trip_keeps_hounsfield_units(tmp_path, frame):
    scan = read_scan(dicom_file("eCT_Supplemental.dcm"), frame=frame)
    written = pydicom.dcmread(write_scan(scan.image, scan.meta, tmp_path / "derived.dcm"))
    assert written.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # a Secondary Capture
    assert written.RescaleType == "HU"
    np.testing.assert_array_equal(apply_modality_lut(written.pixel_array, written), scan.image)
    assert (float(written.WindowCenter), float(written.WindowWidth)) == (49.0, 102.0)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "eCT_Supplemental.dcm"])
def test_burned_in_annotation_survives_into_derived_files(tmp_path, name):
    """Text burned into the film can survive in SinGAN's patches: the flag must survive too."""
    ds = pydicom.dcmread(dicom_file(name))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "annotated.dcm")
    scan = read_scan(tmp_path / "annotated.dcm")
    assert burned_in_annotation(scan.meta) == "YES"
    for keep_identifiers in (False, True):
        out = write_scan(scan.image, scan.meta, tmp_path / f"derived_{keep_identifiers}.dcm",
                         keep_identifiers=keep_identifiers)
        assert pydicom.dcmread(out).BurnedInAnnotation == "YES"


@pytest.mark.parametrize(("name", "flag"), [("eCT_Supplemental.dcm", "NO"),
                                            ("CT_small.dcm", None)])
def test_burned_in_annotation_no_or_absent_stays_so(tmp_path, name, flag):
    assert pydicom.dcmread(dicom_file(name)).get("BurnedInAnnotation") == flag
    scan = read_scan(dicom_file(name))
    assert burned_in_annotation(scan.meta) == flag
    written = pydicom.dcmread(write_scan(scan.image, scan.meta, tmp_path / "derived.dcm"))
    assert written.get("BurnedInAnnotation") == flag


def test_burned_in_annotation_is_unknown_without_a_dicom_header():
    meta = ScanMetadata(format="png", source_path="film.png", sha256="0", rows=2, columns=2)
    assert burned_in_annotation(meta) is None


@pytest.mark.usefixtures("dciodvfy")
def test_annotated_source_written_passes_dciodvfy_like_its_source(tmp_path):
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "annotated.dcm")
    scan = read_scan(tmp_path / "annotated.dcm")
    out = write_scan(scan.image, scan.meta, tmp_path / "derived.dcm")
    assert len(dciodvfy_errors(out)) <= len(dciodvfy_errors(tmp_path / "annotated.dcm"))


@pytest.mark.parametrize(("name", "window"), [("CT_small.dcm", (-160.0, 240.0)),
                                              ("RG1_UNCR.dcm", (10000.0, 30000.0))])
def test_clip_window_becomes_the_display_window(tmp_path, name, window):
    """The written window spans exactly the file's values: its ends are the clipped ones."""
    scan = read_scan(dicom_file(name))
    clipped = np.clip(scan.image, *window)
    out = write_scan(clipped, scan.meta, tmp_path / "clipped.dcm", clip_window=window)
    written = pydicom.dcmread(out)
    values = apply_modality_lut(written.pixel_array, written)
    center, width = float(written.WindowCenter), float(written.WindowWidth)
    assert (values.min(), values.max()) == (center - width / 2, center + width / 2)
    assert written.WindowCenterWidthExplanation == "MEDSINGAN CLIP"
    assert written.DerivationDescription.endswith(
        f"; intensities clipped to [{values.min():g}, {values.max():g}] {scan.meta.units}")


def test_ct_clipped_to_soft_tissue_window_says_so(tmp_path, copy_to):
    source = copy_to(dicom_file("CT_small.dcm"))
    ds = pydicom.dcmread(source)
    ds.WindowCenter, ds.WindowWidth = [40, 400], [400, 2000]
    ds.WindowCenterWidthExplanation = ["SOFT", "BONE"]
    ds.save_as(source)
    scan = read_scan(source)
    out = write_scan(np.clip(scan.image, -160, 240), scan.meta, tmp_path / "soft.dcm",
                     clip_window=(-160, 240))
    written = pydicom.dcmread(out)
    assert (written.WindowCenter, written.WindowWidth) == (40, 400)  # one window, not two
    assert written["WindowCenter"].VM == written["WindowWidth"].VM == 1
    assert written.WindowCenterWidthExplanation == "MEDSINGAN CLIP"
    assert written.DerivationDescription.endswith("; intensities clipped to [-160, 240] HU")
    long = write_dicom(np.clip(scan.image, -160, 240), scan.meta, tmp_path / "long.dcm",
                       description="x" * 2000, clip_window=(-160, 240))
    description = pydicom.dcmread(long).DerivationDescription
    assert len(description) <= 1024 and description.endswith("[-160, 240] HU")


@pytest.mark.usefixtures("dciodvfy")
def test_clipped_ct_passes_dciodvfy(tmp_path):
    scan = read_scan(dicom_file("CT_small.dcm"))
    out = write_scan(np.clip(scan.image, -160, 240), scan.meta, tmp_path / "soft.dcm",
                     clip_window=(-160, 240))
    assert dciodvfy_errors(out) == dciodvfy_errors(dicom_file("CT_small.dcm")) == []


def test_clip_window_must_be_an_interval(tmp_path):
    scan = read_scan(dicom_file("CT_small.dcm"))
    with pytest.raises(ScanWriteError, match="low < high"):
        write_scan(scan.image, scan.meta, tmp_path / "bad.dcm", clip_window=(240, -160))
