"""DICOM reading (pixels through MONAI's PydicomReader, tags through pydicom) and writing of
derived, de-identified DICOM objects."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from medsingan import __version__
from medsingan.errors import (
    MissingDecoderError,
    ScanReadError,
    ScanWriteError,
    UnsupportedScanError,
)
from medsingan.io.atomic import atomic_path, sha256_of
from medsingan.io.deid import deidentify
from medsingan.io.monai_loader import load_pixels
from medsingan.io.reasons import one_line, process_stderr, single_line
from medsingan.io.scan import Scan, ScanMetadata

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Body parts that are not paired structures: Laterality must then be absent (General Series).
_UNPAIRED_BODY_PARTS = {"CHEST", "HEAD", "BRAIN", "SKULL", "NECK", "ABDOMEN", "PELVIS",
                        "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "COCCYX", "HEART",
                        "CHESTABDOMEN", "ABDOMENPELVIS", "CHESTABDPELVIS", "WHOLEBODY",
                        "HEADNECK", "NECKCHEST", "JAW", "TMJ", "MOUTH", "THORAX"}

# Decoders named by the ``decoders`` extra, and the GPL/other ones we do not install by default.
_EXTRA_HINT = "pip install 'medsingan[decoders]'"
_OTHER_HINT = "install pylibjpeg-libjpeg (GPL-3.0) or python-gdcm yourself"

# Single-frame SOP classes whose IOD a derived slice can keep; anything else (enhanced
# multi-frame objects) is written as a Secondary Capture image.
_SINGLE_FRAME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG for presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # MG for processing
    "1.2.840.10008.5.1.4.1.1.1.3",  # IO for presentation
    "1.2.840.10008.5.1.4.1.1.1.3.1",  # IO for processing
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.7",  # SC
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _values(item: Dataset, keyword: str) -> list[Any] | None:
    """The values of an element as a list; ``None`` when absent or empty. Raises ValueError
    when pydicom cannot convert the stored text (it converts on access)."""
    try:
        value = item.get(keyword)
    except Exception as exc:  # e.g. OverflowError for an IS of "-inf"
        raise ValueError(one_line(exc)) from None
    if value is None or value == "":
        return None
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return list(value) or None
    return [value]


def _finite_numbers(item: Dataset, keyword: str) -> list[float] | None:
    """The values of a numeric element as finite floats; ``None`` when absent, empty or not
    all finite numbers (an optional attribute a file got wrong is treated as absent)."""
    try:
        values = _values(item, keyword)
        numbers = [float(v) for v in values] if values else None
    except (TypeError, ValueError):
        return None
    return numbers if numbers and all(math.isfinite(n) for n in numbers) else None


def _first(item: Dataset, keyword: str) -> float | None:
    numbers = _finite_numbers(item, keyword)
    return None if numbers is None else numbers[0]


def _header_number(item: Dataset, keyword: str, path: Path, default: float, *,
                   integer: bool = False, allowed: str = "",
                   check: Callable[[float], bool] | None = None) -> Any:
    """An attribute the pixels depend on: ``default`` when absent or empty, else its single
    finite value (an int when ``integer``) passing ``check``; ScanReadError otherwise, naming
    the attribute, its value and ``allowed`` (what it may be)."""
    try:
        values = _values(item, keyword)
    except ValueError:  # the stored text, as pydicom could not convert it
        raw = item.get_item(keyword).value
        values = [raw.decode("latin-1", "replace") if isinstance(raw, bytes) else raw]
    if values is None:
        return default
    try:
        number = float(values[0]) if len(values) == 1 else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and (not integer or number.is_integer())
            and (check is None or check(number))):
        shown = single_line("\\".join(str(v) for v in values))
        raise ScanReadError(f"{path.name}: {keyword} is '{shown[:40]}', not "
                            f"{allowed or 'a number'}; the header is corrupt")
    return int(number) if integer else number


def _frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of functional group ``sequence`` that applies to frame ``frame`` (0-based):
    the frame's own, else the shared one (PS3.3 C.7.6.16); ``None`` when neither has it."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame) and per_frame[frame].get(sequence):
        return per_frame[frame][sequence][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(sequence):
        return shared[0][sequence][0]
    return None


def _rescale(item: Dataset, path: Path) -> tuple[float, float]:
    return (_header_number(item, "RescaleSlope", path, 1.0, allowed="a non-zero number",
                           check=lambda v: v != 0),
            _header_number(item, "RescaleIntercept", path, 0.0))


def _nifti_affine(ds: Dataset, spacing: tuple[float, float] | None) -> list[list[float]] | None:
    """The NIfTI (RAS+) affine of the slice, voxel axes (row, column, normal), from the image
    plane's position and orientation; ``None`` when the file does not give them."""
    position = np.array(_finite_numbers(ds, "ImagePositionPatient") or [], dtype=float)
    cosines = np.array(_finite_numbers(ds, "ImageOrientationPatient") or [], dtype=float)
    if position.shape != (3,) or cosines.shape != (6,) or spacing is None:
        return None
    along_row, along_column = cosines[:3], cosines[3:]  # directions of columns, rows growing
    thickness = (_finite_numbers(ds, "SliceThickness") or [1.0])[0]
    thickness = thickness if thickness > 0 else 1.0
    affine = np.eye(4)
    affine[:3, 0] = along_column * spacing[0]
    affine[:3, 1] = along_row * spacing[1]
    affine[:3, 2] = np.cross(along_row, along_column) * thickness
    affine[:3, 3] = position
    affine[:2] *= -1.0  # DICOM's LPS+ to NIfTI's RAS+
    return affine.tolist() if np.isfinite(affine).all() else None


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """Row and column spacing (mm) when the file gives two positive numbers, else ``None``."""
    items = [(ds, "PixelSpacing"), (ds, "ImagerPixelSpacing")]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get("PixelMeasuresSequence"):
        items.append((shared[0].PixelMeasuresSequence[0], "PixelSpacing"))
    for item, keyword in items:
        numbers = _finite_numbers(item, keyword)
        if numbers is not None and len(numbers) == 2 and min(numbers) > 0:
            return numbers[0], numbers[1]
    return None


def _check_decodable(ds: Dataset, path: Path) -> None:
    syntax = getattr(ds, "file_meta", FileMetaDataset()).get("TransferSyntaxUID")
    if syntax is None:
        return
    syntax = UID(str(syntax).strip("\0 "))
    if not syntax.is_transfer_syntax:
        raise ScanReadError(f"{path.name}: Transfer Syntax UID '{single_line(syntax)[:64]}' is "
                            "not one pydicom knows (a private syntax, or a corrupt file meta "
                            "header)")
    if not syntax.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise MissingDecoderError(
            f"{path.name}: transfer syntax '{syntax.name}' is not supported by pydicom"
        ) from exc
    if decoder.is_available:
        return
    missing = "; ".join(decoder.missing_dependencies)
    extra_covers = any("openjpeg" in m or "rle" in m for m in decoder.missing_dependencies)
    hint = _EXTRA_HINT if extra_covers else _OTHER_HINT
    raise MissingDecoderError(
        f"{path.name} is compressed as '{syntax.name}' and no decoder is installed "
        f"(needs one of: {missing}); {hint}"
    )


def _header_json(ds: Dataset) -> dict[str, Any]:
    header = Dataset(ds)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            del header[keyword]
    data = header.to_json_dict(suppress_invalid_tags=True)
    meta = getattr(ds, "file_meta", None)
    return {"dataset": data, "file_meta": meta.to_json_dict() if meta is not None else {}}


_POSITIVE = "a whole number of at least 1"


def image_size(ds: Dataset, path: Path) -> tuple[int, int]:
    """(Rows, Columns), checked: ScanReadError when absent, empty or not positive."""
    if "Rows" not in ds or "Columns" not in ds:
        raise ScanReadError(f"{path.name} has no Rows/Columns: the image header is incomplete")
    return tuple(_header_number(ds, keyword, path, 0, integer=True, allowed=_POSITIVE,
                                check=lambda v: v >= 1) for keyword in ("Rows", "Columns"))


def frame_count(ds: Dataset, path: Path) -> int:
    """Number of Frames (1 when absent), checked: ScanReadError when not a positive integer."""
    return _header_number(ds, "NumberOfFrames", path, 1, integer=True, allowed=_POSITIVE,
                          check=lambda v: v >= 1)


def _pixel_format(ds: Dataset, path: Path) -> tuple[int, int, int, int, bool, int]:
    """Rows, columns, bits allocated and stored, signedness and number of frames, checked
    before decoding (so that a corrupt header is named, not a decoder's failure)."""
    rows, cols = image_size(ds, path)
    allocated = _header_number(ds, "BitsAllocated", path, 16, integer=True,
                               allowed="8, 16 or 32", check=lambda v: v in (8, 16, 32))
    stored = _header_number(ds, "BitsStored", path, allocated, integer=True,
                            allowed=f"1..{allocated} (Bits Allocated)",
                            check=lambda v: 1 <= v <= allocated)
    signed = _header_number(ds, "PixelRepresentation", path, 0, integer=True,
                            allowed="0 (unsigned) or 1 (signed)", check=lambda v: v in (0, 1))
    return rows, cols, allocated, stored, signed == 1, frame_count(ds, path)


def _load_pixels(path: Path) -> np.ndarray:
    """Decode pixel data through MONAI, rows x columns (frames first). MONAI's PydicomReader
    applies the top-level Rescale Slope/Intercept, when present, to every frame and reads no
    functional groups: an enhanced object's Pixel Value Transformation is not applied."""
    from monai.data import PydicomReader

    return load_pixels(path, PydicomReader(swap_ij=False)).astype(np.float32)


def read_dicom(path: Path, frame: int | None = None) -> Scan:
    """Read one frame of a grayscale DICOM image in physical units, display polarity."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise ScanReadError(f"{path.name} is not a DICOM file (no DICOM preamble and "
                            "header)") from exc
    except Exception as exc:  # pydicom raises many types on truncated or corrupt files
        raise ScanReadError(f"{path.name}: cannot parse DICOM ({one_line(exc)}); the file may "
                            "be truncated or corrupt") from exc
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise UnsupportedScanError(
            f"{path.name} has no pixel data (SOP class "
            f"{getattr(ds.get('SOPClassUID'), 'name', 'unknown')}); give an image object "
            "(a truncated file reads like this too)"
        )
    if not any(ds.get_item(k).value for k in _PIXEL_KEYWORDS if k in ds):
        raise UnsupportedScanError(f"{path.name}: its pixel data element is empty; the file may "
                                   "be truncated or corrupt")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.strip():
        raise ScanReadError(f"{path.name}: Photometric Interpretation is empty; the image "
                            "header is incomplete")
    samples = _header_number(ds, "SamplesPerPixel", path, 1, integer=True)
    if photometric not in GRAYSCALE or samples != 1:
        what = (single_line(photometric)[:40] if photometric not in GRAYSCALE
                else f"{samples} samples per pixel")
        raise UnsupportedScanError(
            f"{path.name} is a colour DICOM ({what}); medsingan trains on grayscale "
            "scans: convert it to MONOCHROME2 first"
        )
    _check_decodable(ds, path)
    rows, cols, bits_allocated, bits_stored, signed, frames = _pixel_format(ds, path)
    if frame is not None and not 0 <= frame < frames:
        raise ScanReadError(f"{path.name} has {frames} frame(s): --frame must be 0..{frames - 1}")
    # an enhanced object's rescale is per frame or shared; the top level is what MONAI applies
    applied = _rescale(ds, path)
    chosen = frames // 2 if frame is None else frame
    transform = _frame_item(ds, chosen, "PixelValueTransformationSequence") or ds
    slope, intercept = _rescale(transform, path)
    printed: list[str] = []  # a Rust decoder's panic message goes to fd 2: keep it off
    try:
        with process_stderr(printed):
            pixels = _load_pixels(path)
    except BaseException as exc:
        # a Rust decoder's panic (pyo3's PanicException, e.g. pylibjpeg-rle on a cut
        # segment) derives from BaseException only
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        raise ScanReadError(f"{path.name}: cannot decode pixel data ({one_line(exc)}); the file "
                            "may be truncated or corrupt") from exc
    notes: list[str] = []
    if frames > 1:
        if frame is None:
            frame = frames // 2
            notes.append(f"multi-frame DICOM with {frames} frames: using frame {frame} "
                         "(choose with --frame)")
        if pixels.ndim != 3 or pixels.shape[0] != frames:
            raise ScanReadError(f"{path.name}: decoded pixels have shape {pixels.shape}, "
                                f"expected {frames} frames (Number of Frames)")
        pixels = pixels[frame]
    if pixels.shape != (rows, cols):
        raise ScanReadError(f"{path.name}: decoded pixels have shape {pixels.shape}, expected "
                            f"(Rows, Columns) = ({rows}, {cols})")
    if (slope, intercept) != applied:
        stored = (pixels.astype(np.float64) - applied[1]) / applied[0]
        pixels = (stored * slope + intercept).astype(np.float32)
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    voi = ds if has_window else _frame_item(ds, frame or 0, "FrameVOILUTSequence") or ds
    width = _first(voi, "WindowWidth")
    modality = str(ds.get("Modality", "")) or None
    rescale_type = str(transform.get("RescaleType", ""))
    units = ("HU" if modality == "CT" else "stored value") if rescale_type in ("", "US") \
        else rescale_type
    spacing = _pixel_spacing(ds)
    meta = ScanMetadata(
        format="dicom",
        source_path=str(path.resolve()),
        sha256=sha256_of(path),
        rows=rows,
        columns=cols,
        modality=modality,
        body_part=str(ds.get("BodyPartExamined", "")) or None,
        pixel_spacing=spacing,
        affine=_nifti_affine(ds, spacing),
        bits_stored=bits_stored,
        signed=signed,
        storage_dtype=f"{'int' if signed else 'uint'}{min(max(bits_allocated, 8), 32)}",
        photometric=photometric,
        inverted=photometric == "MONOCHROME1",
        rescale_slope=slope,
        rescale_intercept=intercept,
        window_center=_first(voi, "WindowCenter"),
        window_width=width if width is not None and width > 0 else None,
        units=units,
        frame=frame if frames > 1 else None,
        dicom_header=_header_json(ds),
        notes=notes,
    )
    image = pixels.astype(np.float32)
    if meta.inverted:
        low, high = meta.physical_range
        image = (low + high) - image
        notes.append("MONOCHROME1: intensities inverted so that dense tissue is bright")
    return Scan(image=np.ascontiguousarray(image, dtype=np.float32), meta=meta)


def burned_in_annotation(meta: ScanMetadata) -> str | None:
    """The source's Burned In Annotation (0028,0301), upper-case; ``None`` when the source
    does not say or is not a DICOM file.

    ``"YES"`` means the pixels hold text (a name, a date, a side marker): SinGAN copies
    patches, so samples may carry it, and a derived file's header-only de-identification
    does not remove it (its Patient Identity Removed is then NO).

    >>> from pydicom.data import get_testdata_file
    >>> burned_in_annotation(read_dicom(Path(get_testdata_file("eCT_Supplemental.dcm"))).meta)
    'NO'
    """
    element = (meta.dicom_header or {}).get("dataset", {}).get("00280301", {})
    values = element.get("Value") or [""]
    return str(values[0]).strip().upper() or None


def source_warnings(meta: ScanMetadata) -> list[str]:
    """What a user must know before sharing the outputs of this source (one sentence each).

    A run, a cohort and an edit report them, and record them where they write.
    """
    if burned_in_annotation(meta) == "YES":
        return ["the source says Burned In Annotation YES: text in its pixels (names, dates) "
                "can survive into the outputs, which keep YES and do not claim that identity "
                "was removed; check them before sharing"]
    return []


@dataclass(frozen=True)
class DerivedSeries:
    """The study and series a derived DICOM joins, and its number in the series.

    All samples of one cohort share a study, a series and a frame of reference: viewers and
    PACS show them as one series instead of N single-image studies.

    >>> cohort = DerivedSeries.for_key("run sha, seed 0, start scale 7")
    >>> cohort == DerivedSeries.for_key("run sha, seed 0, start scale 7")  # a resumed cohort
    True
    >>> cohort.instance(3).instance_number
    3
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    instance_number: int = 1

    @classmethod
    def for_key(cls, key: str | None = None) -> DerivedSeries:
        """UIDs derived from ``key`` (the same key gives the same series), or new ones."""
        return cls(*(generate_uid(entropy_srcs=None if key is None else [key, part])
                     for part in ("study", "series", "frame of reference")))

    def instance(self, number: int) -> DerivedSeries:
        return replace(self, instance_number=number)


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def write_dicom(
    image: np.ndarray,
    like: ScanMetadata,
    path: Path,
    *,
    keep_identifiers: bool = False,
    patient_id: str | None = None,
    series: DerivedSeries | None = None,
    description: str = "synthetic image generated by medsingan (SinGAN)",
    clip_window: tuple[float, float] | None = None,
) -> Path:
    """Write ``image`` (rows x columns, physical units, display polarity) as a derived DICOM.

    The object gets a new SOP Instance UID, the study and series of ``series`` (default: new
    ones), ImageType DERIVED\\SECONDARY, a derivation description saying it is synthetic, the
    source's bit depth, signedness, rescale and Burned In Annotation, and is de-identified
    (:mod:`medsingan.io.deid`) unless ``keep_identifiers``. ``patient_id`` replaces the
    Patient ID (e.g. a study pseudonym).

    ``clip_window = (low, high)`` says the image's values were clipped to [low, high] (in
    ``like.units``, e.g. a CT preset's -160..240 HU): it becomes the display window
    (center (low + high) / 2, width high - low, explained as "MEDSINGAN CLIP") and is stated
    in the derivation description.
    """
    if like.dicom_header is None:
        raise ScanWriteError("cannot write DICOM: the source is not a DICOM file; "
                             "choose --format png or nii")
    if clip_window is not None and not (np.all(np.isfinite(clip_window))
                                        and clip_window[0] < clip_window[1]):
        raise ScanWriteError(f"clip window {tuple(clip_window)} is not an interval low < high")
    ds = Dataset.from_json(like.dicom_header["dataset"])
    single_frame = str(ds.get("SOPClassUID", "")) in _SINGLE_FRAME_CLASSES
    if not single_frame:
        ds = _secondary_capture_from(ds)
    for keyword in ("NumberOfFrames", "FrameIncrementPointer", "PerFrameFunctionalGroupsSequence",
                    "SharedFunctionalGroupsSequence", "PixelPaddingValue", "PixelPaddingRangeLimit",
                    "SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    # a lossy-compressed source stays flagged (PS3.3 C.7.6.1.1.5: never reset once set)
    if str(ds.get("LossyImageCompression", "")) != "01":
        for keyword in ("LossyImageCompression", "LossyImageCompressionRatio",
                        "LossyImageCompressionMethod"):
            if keyword in ds:
                del ds[keyword]
    date, time = _now()
    if not keep_identifiers:
        deidentify(ds, patient_id=patient_id)
        # the derived study is made now; its date and a study ID help PACS and DICOMDIRs
        ds.StudyDate, ds.StudyTime, ds.StudyID = date, time, "MEDSINGAN"
    elif patient_id is not None:
        ds.PatientID = patient_id
    series = series or DerivedSeries.for_key()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = series.study_uid, series.series_uid
    ds.SOPInstanceUID = generate_uid()
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = series.frame_of_reference_uid
    # values 3+ (e.g. AXIAL for CT) are required by some IODs: keep the source's
    ds.ImageType = ["DERIVED", "SECONDARY", *list(ds.get("ImageType", []))[2:]]
    facts = f"; medsingan {__version__}; not an acquired image"
    if clip_window is not None:
        low, high = _file_values(clip_window, like)
        _set_window(ds, (low + high) / 2, high - low, "MEDSINGAN CLIP")
        facts += f"; intensities clipped to [{low:g}, {high:g}] {like.units}"
    elif ("WindowCenter" not in ds and like.window_center is not None
          and like.window_width is not None):  # an enhanced source's frame window
        _set_window(ds, like.window_center, like.window_width, None)
    # ST holds 1024 characters: shorten the caller's text, never the facts
    ds.DerivationDescription = description[:1024 - len(facts)] + facts
    ds.SeriesDescription = "medsingan synthetic"
    if ("Laterality" not in ds and "ImageLaterality" not in ds
            and str(ds.get("BodyPartExamined", "")).upper() not in _UNPAIRED_BODY_PARTS):
        ds.Laterality = ""  # type 2C for a paired (or unknown) body part: present, not known
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.SeriesNumber = 9901
    ds.InstanceNumber = series.instance_number

    rows, cols = int(image.shape[0]), int(image.shape[1])
    spacing = like.pixel_spacing
    if spacing is not None and (rows, cols) != (like.rows, like.columns):
        _move_first_pixel(ds, spacing, (like.rows / rows, like.columns / cols))
        spacing = (spacing[0] * like.rows / rows, spacing[1] * like.columns / cols)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds and spacing is not None:
            ds[keyword].value = [f"{spacing[0]:.6g}", f"{spacing[1]:.6g}"]
    stored = like.to_stored(image)
    bits_allocated = stored.dtype.itemsize * 8
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = like.photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = like.bits_stored
    ds.HighBit = like.bits_stored - 1
    ds.PixelRepresentation = 1 if like.signed else 0
    if "RescaleSlope" in ds or like.rescale_slope != 1.0 or like.rescale_intercept != 0.0:
        ds.RescaleSlope = f"{like.rescale_slope:.10g}"
        ds.RescaleIntercept = f"{like.rescale_intercept:.10g}"
        if not single_frame and "RescaleType" not in ds:  # type 1C in the Modality LUT module
            ds.RescaleType = "US" if like.units == "stored value" else like.units
    ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    try:
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    except OSError as exc:
        raise ScanWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # pydicom refuses a value (struct/ValueError): one line
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ScanWriteError(f"cannot write {path}: {reason[:200]}") from exc
    return path


def _file_values(interval: tuple[float, float], like: ScanMetadata) -> tuple[float, float]:
    """A display-polarity interval as the file's modality values (MONOCHROME1 inverted back)."""
    low, high = float(interval[0]), float(interval[1])
    if like.inverted:
        bottom, top = like.physical_range
        low, high = bottom + top - high, bottom + top - low
    return low, high


def _set_window(ds: Dataset, center: float, width: float, explanation: str | None) -> None:
    """One VOI window (any of the source's, and their explanations and LUTs, replaced)."""
    for keyword in ("WindowCenterWidthExplanation", "VOILUTFunction", "VOILUTSequence"):
        if keyword in ds:
            del ds[keyword]
    ds.WindowCenter, ds.WindowWidth = f"{center:.10g}", f"{width:.10g}"
    if explanation is not None:
        ds.WindowCenterWidthExplanation = explanation


def _move_first_pixel(ds: Dataset, spacing: tuple[float, float],
                      factors: tuple[float, float]) -> None:
    """Image Position of a resized slice: the centre of its first pixel, which lies
    ``(factor - 1) / 2`` source pixels in from the source's first centre, so that the new grid
    covers the source slice exactly (as NIfTI's affine does)."""
    try:
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=float)
        cosines = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    except (AttributeError, TypeError, ValueError):
        return
    if position.shape != (3,) or cosines.shape != (6,):
        return
    along_row, along_column = cosines[:3], cosines[3:]
    position = (position + along_column * spacing[0] * (factors[0] - 1) / 2
                + along_row * spacing[1] * (factors[1] - 1) / 2)
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position]


def _secondary_capture_from(source: Dataset) -> Dataset:
    """Keep the patient/study/series context of an enhanced object, as a Secondary Capture."""
    keep = ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
            "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
            "StudyDescription", "Modality", "BodyPartExamined", "PatientOrientation",
            "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth",
            "WindowCenterWidthExplanation", "BurnedInAnnotation")
    ds = Dataset()
    for keyword in keep:
        if keyword in source:
            ds[keyword] = source[keyword]
    ds.SOPClassUID = _SECONDARY_CAPTURE
    ds.ConversionType = "WSD"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                    "PatientOrientation"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds
