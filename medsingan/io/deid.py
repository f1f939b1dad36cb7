"""De-identification of derived DICOM headers by an allow-list.

A synthetic image needs the source's *technical* description (pixel format, geometry, the
acquisition parameters a classifier may condition on) and nothing about the person, the place
or the time. So rather than removing the identifying attributes we know of (DICOM PS3.15
Table E.1-1 lists hundreds, and vendors add more in sequences and private tags), everything is
dropped except:

- the technical attributes of ``_KEEP`` (image pixel and plane, modality LUT/VOI, the CT, MR,
  CR, DX, MG and intra-oral acquisition parameters);
- the type-2 patient/study attributes of ``_EMPTY``, kept present but emptied;
- the code sequences of ``_CODE_SEQUENCES`` (anatomy, view), reduced to their code triplets;
- instance UIDs, replaced by new ones.

Private tags, overlays, icons, dates, free text, person names, institution and device
identifiers are therefore gone wherever they were. The header then records that identity was
removed and how (Patient Identity Removed, De-identification Method (Code Sequence)).

Only the header is cleaned, never the pixels (PS3.15 E.3.1's Clean Pixel Data Option is not
applied): when the source says Burned In Annotation YES, that value is kept, Patient Identity
Removed is NO and the method says that burned-in annotation was not removed.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

# Type 2 patient and study attributes: must stay present, emptied.
_EMPTY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
)

# Non-identifying technical attributes kept as they are (top level only).
_KEEP = frozenset((
    # SOP common, general series and image, equipment (make and model, no serial or station)
    "SpecificCharacterSet", "SOPClassUID", "Modality", "Laterality", "ImageLaterality",
    "BodyPartExamined", "PatientPosition", "ViewPosition", "AnatomicalOrientationType",
    "PatientOrientation", "ImageType", "AcquisitionNumber", "ImagesInAcquisition",
    "PresentationIntentType", "Manufacturer", "ManufacturerModelName", "ConversionType",
    "PositionReferenceIndicator", "PresentationLUTShape", "QualityControlImage",
    "RecognizableVisualFeatures", "BurnedInAnnotation",
    # image pixel, image plane, modality LUT, VOI LUT
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration", "PixelAspectRatio",
    "PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing",
    "PixelSpacingCalibrationType", "ImageOrientationPatient", "ImagePositionPatient",
    "SliceThickness", "SpacingBetweenSlices", "SliceLocation", "RescaleIntercept",
    "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth",
    "WindowCenterWidthExplanation", "VOILUTFunction", "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign", "LossyImageCompression",
    "LossyImageCompressionRatio", "LossyImageCompressionMethod",
    # X-ray acquisition (CT, CR, DX, MG, IO)
    "KVP", "ExposureTime", "XRayTubeCurrent", "Exposure", "ExposureInuAs",
    "ExposureTimeInuS", "XRayTubeCurrentInuA", "FilterType", "FilterMaterial",
    "GeneratorPower", "FocalSpots", "AnodeTargetMaterial", "Grid", "DistanceSourceToDetector",
    "DistanceSourceToPatient", "EstimatedRadiographicMagnificationFactor", "Sensitivity",
    "PhosphorType", "PlateType", "RelativeXRayExposure", "ExposureIndex",
    "TargetExposureIndex", "DeviationIndex", "DetectorType", "DetectorConfiguration",
    "PositionerType", "PositionerPrimaryAngle", "PositionerSecondaryAngle",
    "BodyPartThickness", "CompressionForce", "OrganDose", "EntranceDoseInmGy",
    "DataCollectionDiameter", "ReconstructionDiameter", "GantryDetectorTilt", "TableHeight",
    "RotationDirection", "ConvolutionKernel", "ScanOptions", "RevolutionTime",
    "SingleCollimationWidth", "TotalCollimationWidth", "TableSpeed", "TableFeedPerRotation",
    "SpiralPitchFactor", "CTDIvol", "ReconstructionAlgorithm",
    # MR acquisition
    "ScanningSequence", "SequenceVariant", "MRAcquisitionType", "SequenceName", "AngioFlag",
    "RepetitionTime", "EchoTime", "InversionTime", "NumberOfAverages", "ImagingFrequency",
    "ImagedNucleus", "EchoNumbers", "MagneticFieldStrength", "NumberOfPhaseEncodingSteps",
    "EchoTrainLength", "PercentSampling", "PercentPhaseFieldOfView", "PixelBandwidth",
    "AcquisitionMatrix", "InPlanePhaseEncodingDirection", "FlipAngle",
    "VariableFlipAngleFlag", "SAR", "dBdt", "TriggerTime", "NominalInterval",
    "CardiacNumberOfImages", "ReceiveCoilName", "TransmitCoilName",
))

# Code sequences kept with only their codes (no free text beyond the code's meaning).
_CODE_SEQUENCES = ("AnatomicRegionSequence", "PrimaryAnatomicStructureSequence",
                   "ViewCodeSequence", "ViewModifierCodeSequence",
                   "AnatomicRegionModifierSequence")
_CODE_KEYWORDS = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning",
                  "LongCodeValue", "URNCodeValue")

_METHOD = "medsingan: allow-list of technical attributes"
_PIXELS_NOT_CLEANED = "header only: burned-in annotation not removed"

# Instance UIDs kept (as new values): the writer sets them for the derived object.
_NEW_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _codes_only(sequence: Sequence) -> Sequence:
    items = []
    for item in sequence:
        code = Dataset()
        for keyword in _CODE_KEYWORDS:
            if keyword in item:
                code[keyword] = item[keyword]
        items.append(code)
    return Sequence(items)


def deidentify(ds: Dataset, *, patient_id: str | None = None) -> Dataset:
    """Reduce ``ds`` in place to the allow-list of this module and return it.

    ``patient_id`` (e.g. a study pseudonym) becomes the Patient ID and Patient's Name.
    Patient Identity Removed is YES, or NO when Burned In Annotation is YES (the pixels,
    which this does not touch, may show who the patient is).
    """
    kept = {keyword: ds[keyword] for keyword in _KEEP if keyword in ds}
    codes = {keyword: _codes_only(ds[keyword].value) for keyword in _CODE_SEQUENCES
             if keyword in ds and ds[keyword].VR == "SQ"}
    uids = [keyword for keyword in _NEW_UIDS if keyword in ds]
    pixel_data = ds.get("PixelData")
    ds.clear()
    for keyword, element in kept.items():
        ds[keyword] = element
    for keyword, sequence in codes.items():
        setattr(ds, keyword, sequence)
    for keyword in uids:
        setattr(ds, keyword, generate_uid())
    if pixel_data is not None:
        ds["PixelData"] = pixel_data
    for keyword in _EMPTY:
        setattr(ds, keyword, "")
    if patient_id:
        ds.PatientID = patient_id
        ds.PatientName = patient_id
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        ds.PatientIdentityRemoved = "NO"
        ds.DeidentificationMethod = [_METHOD, _PIXELS_NOT_CLEANED]
    else:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = _METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    return ds


def deidentified_header(header: dict[str, Any] | None) -> dict[str, Any] | None:
    """A de-identified copy of a header stored as ``ScanMetadata.dicom_header`` (JSON form),
    safe to keep in a run directory that may be shared."""
    if header is None:
        return None
    dataset = deidentify(Dataset.from_json(header["dataset"]))
    return {"dataset": dataset.to_json_dict(suppress_invalid_tags=True),
            "file_meta": {}}
