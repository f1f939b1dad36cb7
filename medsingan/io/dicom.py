"""DICOM reading (pixels through MONAI's PydicomReader, tags through pydicom) and writing of
derived, de-identified DICOM objects."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

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
from medsingan.io.scan import Scan, ScanMetadata

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")

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


def _first(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


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


def _rescale(item: Dataset) -> tuple[float, float]:
    return (float(item.get("RescaleSlope", 1.0) or 1.0),
            float(item.get("RescaleIntercept", 0.0) or 0.0))


def _nifti_affine(ds: Dataset, spacing: tuple[float, float] | None) -> list[list[float]] | None:
    """The NIfTI (RAS+) affine of the slice, voxel axes (row, column, normal), from the image
    plane's position and orientation; ``None`` when the file does not give them."""
    try:
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=float)
        cosines = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    except (AttributeError, TypeError, ValueError):
        return None
    if position.shape != (3,) or cosines.shape != (6,) or spacing is None:
        return None
    along_row, along_column = cosines[:3], cosines[3:]  # directions of columns, rows growing
    thickness = float(ds.get("SliceThickness") or 1.0) or 1.0
    affine = np.eye(4)
    affine[:3, 0] = along_column * spacing[0]
    affine[:3, 1] = along_row * spacing[1]
    affine[:3, 2] = np.cross(along_row, along_column) * thickness
    affine[:3, 3] = position
    affine[:2] *= -1.0  # DICOM's LPS+ to NIfTI's RAS+
    return affine.tolist()


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds and ds[keyword].value:
            row, col = (float(v) for v in ds[keyword].value[:2])
            if row > 0 and col > 0:
                return row, col
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        measures = shared[0].get("PixelMeasuresSequence")
        if measures and "PixelSpacing" in measures[0]:
            row, col = measures[0].PixelSpacing[:2]
            return float(row), float(col)
    return None


def _check_decodable(ds: Dataset, path: Path) -> None:
    syntax = getattr(ds, "file_meta", FileMetaDataset()).get("TransferSyntaxUID")
    if syntax is None or not syntax.is_compressed:
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
        raise ScanReadError(f"{path.name}: cannot parse DICOM ({exc}); the file may be "
                            "truncated or corrupt") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise UnsupportedScanError(
            f"{path.name} has no pixel data (SOP class "
            f"{getattr(ds.get('SOPClassUID'), 'name', 'unknown')}); give an image object "
            "(a truncated file reads like this too)"
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in GRAYSCALE or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedScanError(
            f"{path.name} is a colour DICOM ({photometric}); medsingan trains on grayscale "
            "scans: convert it to MONOCHROME2 first"
        )
    _check_decodable(ds, path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame is not None and not 0 <= frame < frames:
        raise ScanReadError(f"{path.name} has {frames} frame(s): --frame must be 0..{frames - 1}")
    try:
        pixels = _load_pixels(path)
    except Exception as exc:
        raise ScanReadError(f"{path.name}: cannot decode pixel data ({exc}); the file may be "
                            "truncated or corrupt") from exc
    rows, cols = int(ds.Rows), int(ds.Columns)
    notes: list[str] = []
    if frames > 1:
        if frame is None:
            frame = frames // 2
            notes.append(f"multi-frame DICOM with {frames} frames: using frame {frame} "
                         "(choose with --frame)")
        pixels = pixels[frame]
    if pixels.shape != (rows, cols):
        raise ScanReadError(f"{path.name}: decoded pixels have shape {pixels.shape}, expected "
                            f"(Rows, Columns) = ({rows}, {cols})")
    bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    bits_allocated = int(ds.get("BitsAllocated", 16))
    # an enhanced object's rescale is per frame or shared; the top level is what MONAI applied
    applied = _rescale(ds)
    transform = _frame_item(ds, frame or 0, "PixelValueTransformationSequence") or ds
    slope, intercept = _rescale(transform)
    if (slope, intercept) != applied:
        stored = (pixels.astype(np.float64) - applied[1]) / applied[0]
        pixels = (stored * slope + intercept).astype(np.float32)
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    voi = ds if has_window else _frame_item(ds, frame or 0, "FrameVOILUTSequence") or ds
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
        window_center=_first(voi.get("WindowCenter")),
        window_width=_first(voi.get("WindowWidth")),
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
