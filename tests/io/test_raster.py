"""PNG/TIFF/JPEG: 8- and 16-bit grayscale, RGB converted, round trips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsingan.errors import ScanReadError
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


def test_dicom_source_written_as_png_keeps_stored_values(tmp_path):
    scan = read_scan(dicom_file("RG3_UNCR.dcm"))
    out = write_scan(scan.image[::8, ::8], scan.meta, tmp_path / "rg3.png")
    with Image.open(out) as written:
        values = np.asarray(written)
    assert values.dtype == np.uint16
    np.testing.assert_array_equal(values, scan.meta.to_stored(scan.image[::8, ::8]))
