"""PNG/TIFF/JPEG: 8- and 16-bit grayscale, RGB converted, round trips."""

from __future__ import annotations

import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from medsingan.errors import ScanReadError, UnsupportedScanError
from medsingan.io import read_scan, write_scan
from tests.conftest import dicom_file


@pytest.fixture(scope="module")
def ct_pixels() -> np.ndarray:
    """A real CT slice's stored values (0..~3000), as a 16-bit test image."""
    import pydicom

    return pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array.astype(np.uint16)


def test_png16_round_trip_is_exact(tmp_path, ct_pixels):
    Image.fromarray(ct_pixels).save(tmp_path / "ct16.png")
    scan = read_scan(tmp_path / "ct16.png")
    assert scan.meta.bits_stored == 16 and scan.meta.storage_dtype == "uint16"
    np.testing.assert_array_equal(scan.image, ct_pixels)
    out = write_scan(scan.image, scan.meta, tmp_path / "out.png")
    with Image.open(out) as written:
        assert written.mode.startswith("I")
        np.testing.assert_array_equal(np.asarray(written), ct_pixels)


def test_png8_and_tiff_read_in_row_order(tmp_path, ct_pixels):
    gradient = (np.arange(40 * 60).reshape(40, 60) % 256).astype(np.uint8)
    Image.fromarray(gradient).save(tmp_path / "g.png")
    Image.fromarray(ct_pixels).save(tmp_path / "ct.tiff")
    png = read_scan(tmp_path / "g.png")
    assert png.shape == (40, 60) and png.meta.bits_stored == 8
    np.testing.assert_array_equal(png.image, gradient)
    np.testing.assert_array_equal(read_scan(tmp_path / "ct.tiff").image, ct_pixels)


def test_rgb_is_converted_to_grayscale_with_a_note(tmp_path):
    rgb = np.zeros((30, 40, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    scan = read_scan(tmp_path / "rgb.png")
    assert scan.shape == (30, 40)
    np.testing.assert_allclose(scan.image, 0.587 * 200, atol=0.01)
    assert any("grayscale" in note for note in scan.meta.notes)


def test_text_file_named_png_is_refused(tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(ScanReadError, match="not a readable image"):
        read_scan(tmp_path / "fake.png")


def chest_regions(pixels: np.ndarray) -> dict[str, float]:
    """Mean of lung, spine and abdomen on the RG1_UNCR chest film (PA view)."""
    rows, cols = pixels.shape
    upper = slice(int(0.25 * rows), int(0.40 * rows))
    return {
        "lung": pixels[upper, int(0.20 * cols):int(0.35 * cols)].mean(),
        "spine": pixels[upper, int(0.47 * cols):int(0.53 * cols)].mean(),
        "abdomen": pixels[int(0.80 * rows):int(0.95 * rows)].mean(),
    }


def test_a_monochrome1_film_written_as_png_shows_bone_bright(tmp_path):
    # RG1_UNCR is MONOCHROME1: low stored values are white. A PNG has no photometric
    # interpretation, so it must hold what a viewer shows.
    scan = read_scan(dicom_file("RG1_UNCR.dcm"))
    out = write_scan(scan.image[::4, ::4], scan.meta, tmp_path / "chest.png")
    with Image.open(out) as written:
        values = np.asarray(written, dtype=float)
    region = chest_regions(values)
    assert region["spine"] > region["lung"] + 400 and region["abdomen"] > region["lung"]
    # against pydicom: the PNG is the stored film inverted (display = max - stored)
    stored = pydicom.dcmread(dicom_file("RG1_UNCR.dcm")).pixel_array[::4, ::4].astype(float)
    assert np.corrcoef(values.ravel(), stored.ravel())[0, 1] < -0.999
    back = read_scan(out)
    assert back.image == pytest.approx(scan.image[::4, ::4])
    # read back as the 15-bit film it is, so a model trained on the PNG maps it alike
    assert back.meta.bits_stored == 15 and back.meta.physical_range == (0, 32767)


def test_a_ct_written_as_png_fills_16_bits_and_reads_back_in_hu(tmp_path):
    scan = read_scan(dicom_file("CT_small.dcm"))
    source = pydicom.dcmread(dicom_file("CT_small.dcm"))
    hu = pydicom.pixels.apply_modality_lut(source.pixel_array, source).astype(float)
    window = (-160.0, 240.0)
    clipped = np.clip(scan.image, *window)
    out = write_scan(clipped, scan.meta, tmp_path / "ct.png", clip_window=window)
    with Image.open(out) as written:
        values = np.asarray(written, dtype=float)
    # the window spans the PNG's range: a viewer sees soft tissue, not a grey blank
    assert values.min() == 0 and values.max() == 65535
    assert np.corrcoef(values.ravel(), np.clip(hu, *window).ravel())[0, 1] > 0.9999
    back = read_scan(out)
    assert back.meta.units == "HU" and back.meta.modality == "CT"
    np.testing.assert_allclose(back.image, np.clip(hu, *window), atol=400 / 65535)
    # no window given: the whole int16 range, exact to the HU
    full = read_scan(write_scan(scan.image, scan.meta, tmp_path / "full.png"))
    np.testing.assert_allclose(full.image, hu, atol=1e-3)


def test_an_unsigned_ct_written_as_png_spreads_its_window_too(tmp_path):
    # eCT_Supplemental stores HU + 1024 as uint16: its stored values fit a PNG, but a soft-tissue
    # window of them would be 2 % of the 16-bit range, a black image
    scan = read_scan(dicom_file("eCT_Supplemental.dcm"), frame=0)
    window = (-160.0, 240.0)
    clipped = np.clip(scan.image, *window)
    out = write_scan(clipped, scan.meta, tmp_path / "ect.png", clip_window=window)
    with Image.open(out) as written:
        values = np.asarray(written, dtype=float)
    # air at the window's floor; the frame's densest tissue (172 HU) at 332/400 of the range
    assert values.min() == 0 and values.max() == pytest.approx(65535 * 332 / 400, abs=1)
    source = pydicom.dcmread(dicom_file("eCT_Supplemental.dcm"))
    hu = source.pixel_array[0].astype(float) - 1024  # its shared Pixel Value Transformation
    np.testing.assert_allclose(read_scan(out).image, np.clip(hu, *window), atol=400 / 65535)


def test_a_corrupt_units_chunk_is_refused(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    from medsingan.io.raster import UNITS_CHUNK

    info = PngInfo()
    info.add_text(UNITS_CHUNK, '{"slope": 0, "intercept": 1, "units": "HU"}')
    Image.fromarray(np.zeros((30, 30), np.uint16)).save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(UnsupportedScanError, match="slope 0"):
        read_scan(tmp_path / "bad.png")


@pytest.fixture
def gray() -> np.ndarray:
    return (np.arange(30 * 50).reshape(30, 50) * 7 % 256).astype(np.uint8)


def test_palette_images_are_read_through_their_palette(tmp_path, gray):
    Image.fromarray(gray).convert("P").save(tmp_path / "p.png")  # greyscale palette
    np.testing.assert_allclose(read_scan(tmp_path / "p.png").image, gray, atol=0.6)


def test_opaque_alpha_is_dropped_and_transparency_refused(tmp_path, gray):
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    scan = read_scan(tmp_path / "opaque.png")
    np.testing.assert_allclose(scan.image, gray, atol=0.6)
    assert any("alpha" in note for note in scan.meta.notes)
    rgba[:5, :5, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "holes.png")
    with pytest.raises(UnsupportedScanError, match="transparent"):
        read_scan(tmp_path / "holes.png")


def test_exif_orientation_is_applied_as_viewers_do(tmp_path, gray):
    image = Image.fromarray(gray)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    scan = read_scan(tmp_path / "rotated.jpg")
    assert scan.shape == (50, 30)
    np.testing.assert_allclose(scan.image, np.rot90(gray, k=-1), atol=12)


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda g: Image.fromarray(g > 128), "1-bit"),
    (lambda g: Image.fromarray(g.astype(np.float32) / 255), "floating-point"),
    (lambda g: Image.fromarray(g.astype(np.int32) * 1000), "outside 0..65535"),
    (lambda g: Image.fromarray(g).convert("CMYK"), "CMYK"),
])
def test_rasters_that_would_read_as_something_else_are_refused(tmp_path, gray, make, fragment):
    path = tmp_path / ("x.jpg" if fragment == "CMYK" else "x.tiff")
    make(gray).save(path)
    with pytest.raises(UnsupportedScanError, match=fragment):
        read_scan(path)


def test_16_bit_colour_png_is_refused(tmp_path, gray):
    # Pillow cannot write 16-bit RGB: build the IHDR of one by hand on an 8-bit RGB file
    Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "rgb.png")
    data = bytearray((tmp_path / "rgb.png").read_bytes())
    data[24] = 16
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    (tmp_path / "rgb16.png").write_bytes(bytes(data))
    with pytest.raises(UnsupportedScanError, match="16-bit colour"):
        read_scan(tmp_path / "rgb16.png")


def test_a_colour_key_marks_transparent_pixels_too(tmp_path, gray):
    image = Image.fromarray(gray)
    image.info["transparency"] = int(gray[0, 0])
    image.save(tmp_path / "keyed.png", transparency=int(gray[0, 0]))
    with pytest.raises(UnsupportedScanError, match="transparent"):
        read_scan(tmp_path / "keyed.png")


def test_a_16_bit_image_with_an_unused_colour_key_keeps_its_16_bits(tmp_path, ct_pixels):
    Image.fromarray(ct_pixels).save(tmp_path / "keyed16.png", transparency=65535)
    scan = read_scan(tmp_path / "keyed16.png")
    assert scan.meta.bits_stored == 16
    np.testing.assert_array_equal(scan.image, ct_pixels)
