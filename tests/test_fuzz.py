"""Fuzzed scans: real files with damaged headers and pixel data, the way hospital exports come.

The property, for every reader: :func:`medsingan.io.read_scan` either returns a finite 2D
image whose metadata agrees with it (and with what the file's own library reads), or raises a
:class:`MedsinganError` whose message is one line; the command line (``medsingan inspect``)
exits 0 or 2 and never prints a traceback.

Hypothesis runs a fixed number of examples from a fixed seed (``derandomize``), so CI sees the
same files every time. A longer search by hand::

    MEDSINGAN_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest -q tests/test_fuzz.py

(``MEDSINGAN_FUZZ_RANDOM=1`` draws new files on each run instead of the fixed ones.)
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import struct
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag

from medsingan.errors import MedsinganError
from medsingan.io import read_scan
from tests.conftest import dicom_file, nifti_file

# Examples per DICOM file test; the cheaper readers get 4/3 of it, a 3-file series folder 1/3,
# the command line 1/6.
EXAMPLES = int(os.environ.get("MEDSINGAN_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES, derandomize=not os.environ.get("MEDSINGAN_FUZZ_RANDOM"),
    deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One folder per module: each example overwrites its file there."""
    return tmp_path_factory.mktemp("fuzz")


def check_read(path: Path, **options) -> object | None:
    """The property: a consistent finite scan, or a one-line MedsinganError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scan = read_scan(path, **options)
        except MedsinganError as exc:
            message = str(exc)
            assert message.strip(), f"empty message from {type(exc).__name__}"
            assert "\n" not in message and "\r" not in message, message
            return None
    image, meta = scan.image, scan.meta
    assert image.dtype == np.float32 and image.ndim == 2, (image.dtype, image.shape)
    assert image.shape == (meta.rows, meta.columns) and min(image.shape) >= 1
    assert np.isfinite(image).all()
    assert math.isfinite(meta.rescale_slope) and meta.rescale_slope != 0
    assert math.isfinite(meta.rescale_intercept)
    if meta.pixel_spacing is not None:
        assert all(math.isfinite(s) and s > 0 for s in meta.pixel_spacing), meta.pixel_spacing
    if not meta.storage_dtype.startswith("float"):
        assert all(math.isfinite(v) for v in meta.physical_range)
    np.dtype(meta.storage_dtype)  # a writer can store in it
    # what a run's config.json records of the source must be strict JSON
    json.dumps(meta.to_dict(), allow_nan=False)
    return scan


# ---------------------------------------------------------------------------------------------
# DICOM: real pydicom-data files, tags replaced by raw bytes (any value a file can hold)

DICOM_BASES = ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "MR_small_RLE.dcm",
               "JPEG2000.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
               "rtdose.dcm")
_US = (st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 24, 31, 32, 33, 63, 64, 65, 128,
                        255, 256, 4096, 65535]) | st.integers(0, 65535))
_NUMBER_TEXT = st.sampled_from(["0", "1", "-1", "2", "10", "1.5", "1e400", "-1e400", "nan",
                                "inf", "-inf", "abc", "", "  ", "1\\2", "1e-320", "-0",
                                "99999999999", "0.001", "65536", "1\r\n2"])
_PAIR_TEXT = st.sampled_from(["1\\1", "0\\0", "-1\\1", "nan\\1", "inf\\inf", "1", "abc\\1", "",
                              "1e400\\1", "0.5\\0.5\\0.5"])
_TRIPLE_TEXT = st.sampled_from(["0\\0\\0", "nan\\0\\0", "1e400\\0\\0", "1\\2", "abc", "",
                                "-100\\-100\\50"])
_COSINES_TEXT = st.sampled_from(["1\\0\\0\\0\\1\\0", "0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0",
                                 "nan\\0\\0\\0\\1\\0", "1\\0\\0", "inf\\1\\0\\0\\1\\0", ""])
_DICOM_FIELDS = {
    "Rows": (0x00280010, "US", _US),
    "Columns": (0x00280011, "US", _US),
    "BitsAllocated": (0x00280100, "US", _US),
    "BitsStored": (0x00280101, "US", _US),
    "HighBit": (0x00280102, "US", _US),
    "PixelRepresentation": (0x00280103, "US", st.sampled_from([0, 1, 2, 65535])),
    "SamplesPerPixel": (0x00280002, "US", st.sampled_from([0, 1, 2, 3, 4, 65535])),
    "PlanarConfiguration": (0x00280006, "US", st.sampled_from([0, 1, 2])),
    "PhotometricInterpretation": (0x00280004, "CS", st.sampled_from(
        ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL_422", "",
         "monochrome2", "MONOCHROME3", "MONOCHROME2\\RGB", "MONO\nCHROME2"])),
    "RescaleSlope": (0x00281053, "DS", _NUMBER_TEXT),
    "RescaleIntercept": (0x00281052, "DS", _NUMBER_TEXT),
    "NumberOfFrames": (0x00280008, "IS", _NUMBER_TEXT),
    "WindowCenter": (0x00281050, "DS", _NUMBER_TEXT),
    "WindowWidth": (0x00281051, "DS", _NUMBER_TEXT),
    "PixelSpacing": (0x00280030, "DS", _PAIR_TEXT),
    "ImagerPixelSpacing": (0x00181164, "DS", _PAIR_TEXT),
    "SliceThickness": (0x00180050, "DS", _NUMBER_TEXT),
    "ImagePositionPatient": (0x00200032, "DS", _TRIPLE_TEXT),
    "ImageOrientationPatient": (0x00200037, "DS", _COSINES_TEXT),
    "InstanceNumber": (0x00200013, "IS", _NUMBER_TEXT),
    "Modality": (0x00080060, "CS", st.sampled_from(["CT", "MR", "CR", "DX", "US", "", "XX"])),
    "RescaleType": (0x00281054, "LO", st.sampled_from(["HU", "US", "", "OD", "\\"])),
}
_TRANSFER_SYNTAXES = st.sampled_from([
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.100", "1.2.3.4", "", "1.2.840\n10008"])
_PIXEL_EDITS = st.one_of(
    st.tuples(st.just("keep"), st.just(0.0)),
    st.tuples(st.just("cut"), st.floats(0.0, 0.999)),
    st.tuples(st.just("grow"), st.floats(0.001, 1.0)),
    st.tuples(st.just("odd"), st.just(0.0)),
    st.tuples(st.just("delete"), st.just(0.0)),
)


@st.composite
def dicom_mutations(draw):
    """(base file, tag edits, pixel-data edit, transfer syntax or None)."""
    base = draw(st.sampled_from(DICOM_BASES))
    names = draw(st.lists(st.sampled_from(sorted(_DICOM_FIELDS)), min_size=0, max_size=4,
                          unique=True))
    edits = []
    for name in names:
        _, _, values = _DICOM_FIELDS[name]
        edits.append((name, None if draw(st.integers(0, 4)) == 0 else draw(values)))
    pixels = draw(_PIXEL_EDITS)
    syntax = draw(st.none() | _TRANSFER_SYNTAXES)
    if not edits and pixels[0] == "keep" and syntax is None:
        pixels = ("cut", 0.5)
    return base, tuple(edits), pixels, syntax


def _text(value: str) -> bytes:
    data = value.encode("latin-1")
    return data + b" " if len(data) % 2 else data


def build_dicom(base: str | pydicom.Dataset, edits, pixels, syntax) -> bytes:
    """The base file with ``edits`` written as raw elements, re-encoded in its own syntax."""
    ds = pydicom.dcmread(dicom_file(base)) if isinstance(base, str) else base
    implicit, little = ds.original_encoding
    for name, value in edits:
        tag, vr, _ = _DICOM_FIELDS[name]
        if value is None:
            if tag in ds:
                del ds[tag]
            continue
        payload = (struct.pack("<H" if little else ">H", value) if vr == "US"
                   else _text(value))
        ds[tag] = RawDataElement(Tag(tag), vr, len(payload), payload, 0, implicit, little)
    element = ds.get_item(0x7FE00010)
    if element is not None and pixels[0] != "keep":
        data = ds.PixelData
        undefined = ds["PixelData"].is_undefined_length
        kind, fraction = pixels
        if kind == "delete":
            del ds[0x7FE00010]
        else:
            if kind == "cut":  # encapsulated data keeps its first item's tag and length
                data = data[:max(int(len(data) * fraction), 8 if undefined else 0)]
            elif kind == "grow":
                data = data + bytes(range(256)) * (1 + int(len(data) * fraction) // 256)
            else:
                data = data[:-1]
            length = 0xFFFFFFFF if undefined else len(data)
            ds[0x7FE00010] = RawDataElement(Tag(0x7FE00010), "OB" if undefined else "OW",
                                            length, data, 0, implicit, little)
    meta = ds.file_meta
    if syntax is not None:
        payload = syntax.encode() + (b"\0" if len(syntax) % 2 else b"")
        meta[0x00020010] = RawDataElement(Tag(0x00020010), "UI", len(payload), payload, 0,
                                          False, True)
    del ds.file_meta  # the body is written as it is, whatever the meta header now says
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = implicit, little
    write_dataset(body, ds)
    head = DicomBytesIO()
    head.is_implicit_VR, head.is_little_endian = False, True
    write_file_meta_info(head, meta, enforce_standard=False)
    return b"\0" * 128 + b"DICM" + head.getvalue() + body.getvalue()


# Crashes the search found, kept as fixed examples (each was a traceback or a wrong reading).
_NO_PIXEL_EDIT = ("keep", 0.0)


@FUZZ
@example(mutation=("MR_small_RLE.dcm", (), ("cut", 0.5), None))  # decoders' 3-line message
@example(mutation=("MR_small_RLE.dcm", (("Rows", 1), ("Columns", 1)), _NO_PIXEL_EDIT, None))
@example(mutation=("MR_small.dcm", (), _NO_PIXEL_EDIT, "1.2.3.4"))  # not a transfer syntax
@example(mutation=("MR_small.dcm", (), _NO_PIXEL_EDIT, ""))
@example(mutation=("MR_small_implicit.dcm", (("PixelSpacing", "abc\\1"),), _NO_PIXEL_EDIT,
                   None))
@example(mutation=("CT_small.dcm", (("NumberOfFrames", "-inf"),), _NO_PIXEL_EDIT, None))
@example(mutation=("CT_small.dcm", (("SliceThickness", "1e400"),), _NO_PIXEL_EDIT, None))
@example(mutation=("rtdose.dcm", (("SliceThickness", "1\\2"),), _NO_PIXEL_EDIT, None))
@example(mutation=("CT_small.dcm", (("RescaleSlope", "abc"),), _NO_PIXEL_EDIT, None))
@example(mutation=("CT_small.dcm", (), ("cut", 0.0), None))  # empty pixel data
@example(mutation=("MR_small.dcm", (("PhotometricInterpretation", "MONO\nCHROME2"),),
                   _NO_PIXEL_EDIT, None))  # a newline in a value quoted by the message
@example(mutation=("MR_small.dcm", (("RescaleSlope", "1\r\n2"),), _NO_PIXEL_EDIT, None))
@example(mutation=("MR_small.dcm", (), _NO_PIXEL_EDIT, "1.2.840\n10008"))
@given(mutation=dicom_mutations())
def test_fuzzed_dicom_reads_or_fails_in_one_line(work, mutation):
    path = work / "fuzzed.dcm"
    path.write_bytes(build_dicom(*mutation))
    scan = check_read(path)
    if scan is not None:  # the size pydicom reads is the size medsingan shows
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert scan.image.shape == (int(ds.Rows), int(ds.Columns))


def _series_slice(position: float) -> pydicom.Dataset:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.ImagePositionPatient = [0, 0, position]
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{int(position * 10)}"
    return ds


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 10))
@example(which=0, mutation=("CT_small.dcm", (("NumberOfFrames", "nan"),), _NO_PIXEL_EDIT, None))
@example(which=1, mutation=("CT_small.dcm", (("ImagePositionPatient", None),
                                             ("InstanceNumber", "-inf")), _NO_PIXEL_EDIT, None))
@given(which=st.integers(0, 2), mutation=dicom_mutations())
def test_fuzzed_slice_of_a_dicom_series_folder_reads_or_fails_in_one_line(work, which,
                                                                          mutation):
    folder = work / "series"
    folder.mkdir(exist_ok=True)
    for index, position in enumerate((0.0, 5.0, 10.0)):
        edits = mutation[1:] if index == which else ((), ("keep", 0.0), None)
        (folder / f"slice{index}.dcm").write_bytes(build_dicom(_series_slice(position),
                                                               *edits))
    scan = check_read(folder)
    if scan is not None:
        assert scan.meta.series_slices in (1, 2, 3) and scan.meta.series_index is not None


# ---------------------------------------------------------------------------------------------
# NIfTI-1: nibabel's test volumes with header fields overwritten in place

NIFTI_BASES = ("anatomical.nii", "functional.nii", "reoriented_anat_moved.nii",
               "standard.nii.gz")
# (offset, struct code, values) of NIfTI-1 header fields (the 348-byte header)
_I16 = st.sampled_from([-32768, -1, 0, 1, 2, 3, 4, 5, 7, 8, 64, 32767])
_F32 = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-45, 1e38, float("nan"),
                        float("inf"), float("-inf"), 3.4e38])
_NIFTI_FIELDS = {
    "dim": (40, "8h", st.lists(_I16, min_size=8, max_size=8)),
    "dim0": (40, "h", st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 7, 8, 9])),
    "dim1": (42, "h", _I16),
    "dim2": (44, "h", _I16),
    "dim3": (46, "h", _I16),
    "dim4": (48, "h", _I16),
    "datatype": (70, "h", st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024,
                                           1280, 1536, 1792, 2048, 2304, 9999, -1])),
    "bitpix": (72, "h", st.sampled_from([0, 1, 8, 16, 32, 64, 128, 7, -8])),
    "pixdim": (76, "8f", st.lists(_F32, min_size=8, max_size=8)),
    "pixdim1": (80, "f", _F32),
    "vox_offset": (108, "f", st.sampled_from([0.0, 1.0, 348.0, 352.0, 353.0, 1e9, -352.0,
                                              float("nan")])),
    "scl_slope": (112, "f", _F32),
    "scl_inter": (116, "f", _F32),
    "xyzt_units": (123, "B", st.sampled_from([0, 1, 2, 3, 10, 255])),
    "cal_max": (124, "f", _F32),
    "qform_code": (252, "h", st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 999])),
    "sform_code": (254, "h", st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 999])),
    "quatern": (256, "3f", st.lists(_F32, min_size=3, max_size=3)),
    "qoffset": (268, "3f", st.lists(_F32, min_size=3, max_size=3)),
    "srow_x": (280, "4f", st.lists(_F32, min_size=4, max_size=4)),
    "srow_y": (296, "4f", st.lists(_F32, min_size=4, max_size=4)),
    "srow_z": (312, "4f", st.lists(_F32, min_size=4, max_size=4)),
    "intent_code": (68, "h", st.sampled_from([0, 1001, 1007, 2003, -5])),
    "magic": (344, "4s", st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"xxxx", b"\0\0\0\0"])),
    "sizeof_hdr": (0, "i", st.sampled_from([348, 540, 0, -348, 1 << 24])),
}


@st.composite
def nifti_mutations(draw):
    base = draw(st.sampled_from(NIFTI_BASES))
    names = draw(st.lists(st.sampled_from(sorted(_NIFTI_FIELDS)), min_size=0, max_size=4,
                          unique=True))
    edits = []
    for name in names:
        value = draw(_NIFTI_FIELDS[name][2])
        edits.append((name, tuple(value) if isinstance(value, list) else (value,)))
    cut = draw(st.none() | st.floats(0.0, 0.999))
    gzipped = draw(st.booleans())
    if not edits and cut is None:
        cut = 0.9
    return base, tuple(edits), cut, gzipped


def build_nifti(base: str, edits, cut, gzipped) -> bytes:
    raw = nifti_file(base).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    data = bytearray(raw)
    order = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    for name, values in edits:
        offset, code, _ = _NIFTI_FIELDS[name]
        struct.pack_into(order + code, data, offset, *values)
    if cut is not None:
        data = data[:int(len(data) * cut)]
    return gzip.compress(bytes(data), mtime=0) if gzipped else bytes(data)


@settings(FUZZ, max_examples=EXAMPLES * 4 // 3)
@example(mutation=("standard.nii.gz", (), 0.9, False))  # nibabel's two-line message
@example(mutation=("standard.nii.gz", (("srow_z", (3.4e38, math.inf, math.nan, -math.inf)),),
                   None, True))  # a non-finite affine
@example(mutation=("standard.nii.gz", (("pixdim", (0.5, -math.inf, 3.4e38, 1e-45, -0.0, 0.0,
                                                   math.inf, -1.0)),), None, True))
@example(mutation=("reoriented_anat_moved.nii", (("xyzt_units", (255,)),), None, False))
@example(mutation=("standard.nii.gz", (("dim2", (0,)),), None, False))  # no voxels
@example(mutation=("reoriented_anat_moved.nii", (("dim", (3, 32767, 32767, 3, 1, 1, 1, 1)),),
                   None, False))  # 12 GB of voxels in a 48 kB file: 20 s before failing
@given(mutation=nifti_mutations())
def test_fuzzed_nifti_reads_or_fails_in_one_line(work, mutation):
    path = work / ("fuzzed.nii.gz" if mutation[3] else "fuzzed.nii")
    path.write_bytes(build_nifti(*mutation))
    options = {"volume": 0} if mutation[0] == "functional.nii" else {}
    scan = check_read(path, **options)
    if scan is not None:  # nibabel reads the same voxels (independent of MONAI)
        shape = nib.load(str(path)).shape
        assert scan.image.size in {int(np.prod([s for i, s in enumerate(shape[:3]) if i != a]))
                                   for a in range(3)} | {int(np.prod(shape[:2]))}


# ---------------------------------------------------------------------------------------------
# PNG and TIFF: every Pillow mode a scan export might use, truncated or with a damaged header

def _gradient(mode: str, size: tuple[int, int] = (24, 20)) -> Image.Image:
    ramp = np.add.outer(np.arange(size[1]), np.arange(size[0])) * 5
    if mode == "1":
        return Image.fromarray(ramp % 2 == 0)
    if mode in ("I;16", "I;16B"):
        order = "<u2" if mode == "I;16" else ">u2"
        return Image.frombytes(mode, size, (ramp * 300).astype(order).tobytes())
    if mode == "I":
        return Image.fromarray((ramp * 1000 - 5000).astype(np.int32))
    if mode == "F":
        return Image.fromarray(ramp.astype(np.float32) / 7)
    gray = Image.fromarray((ramp % 256).astype(np.uint8))
    if mode == "P":
        return gray.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return gray.convert(mode)


RASTER_CASES = [("png", m) for m in ("L", "LA", "RGB", "RGBA", "P", "1", "I;16")] + \
    [("tiff", m) for m in ("L", "RGB", "CMYK", "F", "I;16", "I;16B", "I", "1", "LA", "P")]


@pytest.fixture(scope="module")
def raster_bases() -> dict[tuple[str, str], bytes]:
    bases = {}
    for kind, mode in RASTER_CASES:
        buffer = io.BytesIO()
        _gradient(mode).save(buffer, format=kind.upper())
        bases[kind, mode] = buffer.getvalue()
    return bases


_RASTER_EDITS = st.one_of(
    st.tuples(st.just("keep"), st.just(0), st.just(0)),
    st.tuples(st.just("cut"), st.floats(0.0, 0.999), st.just(0)),
    st.tuples(st.just("byte"), st.floats(0.0, 0.999), st.integers(0, 255)),
    st.tuples(st.just("header"), st.integers(8, 40), st.integers(0, 255)),
)


@settings(FUZZ, max_examples=EXAMPLES * 4 // 3)
@given(case=st.sampled_from(RASTER_CASES), edits=st.lists(_RASTER_EDITS, min_size=1,
                                                           max_size=3))
def test_fuzzed_png_and_tiff_read_or_fail_in_one_line(work, raster_bases, case, edits):
    data = bytearray(raster_bases[case])
    for kind, where, value in edits:
        if kind == "cut":
            data = data[:int(len(data) * where)]
        elif kind == "byte" and data:
            data[int(len(data) * where)] = value
        elif kind == "header" and len(data) > where:
            data[where] = value
    path = work / f"fuzzed.{case[0]}"
    path.write_bytes(bytes(data))
    scan = check_read(path)
    if scan is not None:  # Pillow reads the same size
        with Image.open(path) as image:
            assert scan.image.shape in ((image.height, image.width), (image.width, image.height))


# ---------------------------------------------------------------------------------------------
# MHA and NRRD: header lines edited, data truncated

def _sitk_base(suffix: str) -> bytes:
    volume = (np.arange(6 * 7 * 5, dtype=np.int16).reshape(5, 7, 6) * 11) - 100
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.9, 2.5))
    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    path = folder / f"medsingan_fuzz_base_{os.getpid()}{suffix}"
    sitk.WriteImage(image, str(path), False)
    try:
        return path.read_bytes()
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def sitk_bases() -> dict[str, bytes]:
    return {suffix: _sitk_base(suffix) for suffix in (".mha", ".nrrd")}


_HEADER_VALUES = {
    ".mha": {"NDims": ["0", "1", "2", "3", "4", "-1", "x", "3\r3", "\xb2"],
             "DimSize": ["6 7 5", "6 7", "0 7 5", "6 7 5 2", "-6 7 5", "60000 60000 60000", ""],
             "ElementType": ["MET_SHORT", "MET_UCHAR", "MET_FLOAT", "MET_DOUBLE", "MET_LONG",
                             "MET_NONE", "MET_SHORT_ARRAY", "bogus"],
             "ElementSpacing": ["0.8 0.9 2.5", "0 0 0", "-1 1 1", "nan 1 1", "inf 1 1", "1"],
             "ElementNumberOfChannels": ["1", "3", "0"],
             "TransformMatrix": ["1 0 0 0 1 0 0 0 1", "0 0 0 0 0 0 0 0 0", "1 0 0 1 0 0 0 0 1",
                                 "nan 0 0 0 1 0 0 0 1"],
             "Offset": ["0 0 0", "nan 0 0", "1e400 0 0"],
             "BinaryDataByteOrderMSB": ["True", "False"],
             "CompressedData": ["True", "False"]},
    ".nrrd": {"dimension": ["0", "1", "2", "3", "4", "-1", "x"],
              "sizes": ["6 7 5", "6 7", "0 7 5", "6 7 5 2", "60000 60000 60000", ""],
              "type": ["short", "uchar", "float", "double", "int64", "block", "bogus"],
              "space directions": ["(0.8,0,0) (0,0.9,0) (0,0,2.5)", "(0,0,0) (0,0,0) (0,0,0)",
                                   "(nan,0,0) (0,1,0) (0,0,1)", "none (0,1,0) (0,0,1)"],
              "space origin": ["(0,0,0)", "(nan,0,0)"],
              "encoding": ["raw", "gzip", "ascii", "bogus"],
              "endian": ["little", "big"],
              "kinds": ["domain domain domain", "RGB-color domain domain", "x"]},
}


@st.composite
def sitk_mutations(draw):
    suffix = draw(st.sampled_from([".mha", ".nrrd"]))
    fields = _HEADER_VALUES[suffix]
    names = draw(st.lists(st.sampled_from(sorted(fields)), min_size=0, max_size=3, unique=True))
    edits = tuple((name, draw(st.none() | st.sampled_from(fields[name]))) for name in names)
    cut = draw(st.none() | st.floats(0.0, 0.999))
    if not edits and cut is None:
        cut = 0.9
    return suffix, edits, cut


def build_sitk(bases: dict[str, bytes], suffix: str, edits, cut) -> bytes:
    raw = bases[suffix]
    marker = b"ElementDataFile = LOCAL\n" if suffix == ".mha" else b"\n\n"
    split = raw.index(marker) + len(marker)
    header, data = raw[:split].decode("latin-1"), raw[split:]
    separator = " = " if suffix == ".mha" else ": "
    lines = header.splitlines()
    for name, value in edits:
        found = [i for i, line in enumerate(lines) if line.startswith(name + separator.rstrip())]
        new = None if value is None else f"{name}{separator}{value}"
        if found:
            if new is None:
                del lines[found[0]]
            else:
                lines[found[0]] = new
        elif new is not None:
            lines.insert(1, new)
    text = "\n".join(lines) + ("\n" if suffix == ".mha" else "\n\n")
    blob = text.encode("latin-1") + data
    if cut is not None:
        blob = blob[:int(len(blob) * cut)]
    return blob


@settings(FUZZ, max_examples=EXAMPLES * 4 // 3)
@example(mutation=(".mha", (("NDims", "-1"),), None))  # killed the process (MetaIO segfault)
@example(mutation=(".mha", (("NDims", "\xb2"),), None))  # "²".isdigit(), but int("²") fails
@given(mutation=sitk_mutations())
def test_fuzzed_mha_and_nrrd_read_or_fail_in_one_line(work, sitk_bases, mutation):
    path = work / f"fuzzed{mutation[0]}"
    path.write_bytes(build_sitk(sitk_bases, *mutation))
    scan = check_read(path)
    if scan is not None:  # a slice of what SimpleITK itself reads
        size = sitk.ReadImage(str(path)).GetSize()
        assert scan.image.size in {int(np.prod(size)) // s for s in size} | {int(np.prod(size))}


# ---------------------------------------------------------------------------------------------
# The command line on fuzzed files: exit 0 or 2, one line on stderr, never a traceback

def run_medsingan(*args: str | Path, capture=None) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``medsingan ARGS`` through the console entry's own
    runner (``run_app``: one-line errors, exit codes), in this process. ``capture`` is
    pytest's capsys or capfd (what C++ code prints on the process's stderr needs capfd);
    without it, Python's streams are captured."""
    from medsingan.cli import app, run_app

    out, err = io.StringIO(), io.StringIO()
    if capture is not None:
        capture.readouterr()
    argv, sys.argv = sys.argv, ["medsingan", *map(str, args)]
    code: object = None
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as streams:
            if capture is None:
                streams.enter_context(contextlib.redirect_stdout(out))
                streams.enter_context(contextlib.redirect_stderr(err))
            run_app(app)  # installs its own warning display: restored on leaving
    except SystemExit as stopped:
        code = stopped.code
    finally:
        sys.argv = argv
    if capture is not None:
        captured = capture.readouterr()
        return (code if isinstance(code, int) else 0), captured.out, captured.err
    return (code if isinstance(code, int) else 0), out.getvalue(), err.getvalue()


def assert_one_line_error(result: tuple[int, str, str], *fragments: str) -> str:
    """Exit 2 and one ``error:`` line on stderr (besides ``warning:`` lines), no traceback;
    the error line."""
    code, out, err = result
    lines = [line for line in err.splitlines() if line.strip()
             and not line.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@settings(FUZZ, max_examples=max(EXAMPLES // 6, 10))
@given(which=st.sampled_from(["dicom", "nifti", "sitk"]), dicom=dicom_mutations(),
       nifti=nifti_mutations(), sitk_file=sitk_mutations())
def test_inspect_on_fuzzed_files_exits_0_or_2_without_traceback(work, sitk_bases, capfd, which,
                                                                dicom, nifti, sitk_file):
    if which == "dicom":
        path = work / "cli.dcm"
        path.write_bytes(build_dicom(*dicom))
    elif which == "nifti":
        path = work / ("cli.nii.gz" if nifti[3] else "cli.nii")
        path.write_bytes(build_nifti(*nifti))
    else:  # MetaIO and the NRRD reader print on the process's stderr: capfd sees it
        path = work / f"cli{sitk_file[0]}"
        path.write_bytes(build_sitk(sitk_bases, *sitk_file))
    code, out, err = run_medsingan("inspect", path, capture=capfd)
    assert code in (0, 2), (code, err)
    if code == 2:
        assert_one_line_error((code, out, err))
    else:
        assert "Traceback" not in out + err and "error:" not in err and "preset" in out


def test_the_console_command_survives_a_file_that_killed_it(work, sitk_bases):
    """As a process of its own, the way a user runs it: a negative NDims made SimpleITK
    segfault (the command died with no message)."""
    from tests.cli.test_inspect import assert_one_line_error as assert_exit_2_one_line
    from tests.cli.test_inspect import run_console

    path = work / "ndims.mha"
    path.write_bytes(build_sitk(sitk_bases, ".mha", (("NDims", "-1"),), None))
    assert_exit_2_one_line(run_console("inspect", path), "NDims is '-1'")


def test_a_rust_decoder_panic_stays_off_the_console(work):
    """pylibjpeg-rle panics on a 1 x 1 RLE image; pyo3 prints the panic (and, with
    RUST_BACKTRACE, a backtrace) on file descriptor 2 before Python sees the exception."""
    from tests.cli.test_inspect import assert_one_line_error as assert_exit_2_one_line
    from tests.cli.test_inspect import run_console

    path = work / "rle_1x1.dcm"
    path.write_bytes(build_dicom("MR_small_RLE.dcm", (("Rows", 1), ("Columns", 1)),
                                 _NO_PIXEL_EDIT, None))
    assert_exit_2_one_line(run_console("inspect", path, env={"RUST_BACKTRACE": "1"}),
                           "cannot decode pixel data")
