"""De-identification of derived DICOM headers, guided by the DICOM PS3.15 Basic Application
Level Confidentiality Profile (Table E.1-1).

The rules: every person name (VR PN) anywhere in the dataset is emptied; private tags, curves
and overlays are removed; the attributes below are emptied (type 2, must stay present) or
removed (type 3); all instance UIDs are replaced (consistently within the dataset); and the
header records that identity was removed and how.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

# Type 2 in their modules: keep the attribute, empty its value.
_EMPTY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ContentDate", "ContentTime",
)

# Type 3 (or conditional) identifying attributes: remove.
_REMOVE = (
    "PatientBirthTime", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
    "PatientAge", "PatientSize", "PatientWeight", "MilitaryRank", "BranchOfService",
    "EthnicGroup", "Occupation", "PatientReligiousPreference", "PatientComments",
    "AdditionalPatientHistory", "MedicalRecordLocator", "PregnancyStatus", "SmokingStatus",
    "LastMenstrualDate", "PatientInsurancePlanCodeSequence", "IssuerOfPatientID",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "InstitutionCodeSequence", "StationName", "DeviceSerialNumber", "DeviceUID",
    "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "RequestingPhysician", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "AdmittingDiagnosesDescription", "AdmissionID",
    "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "SeriesDate", "SeriesTime",
    "OverlayDate", "OverlayTime", "CurveDate", "CurveTime", "StudyDescription",
    "RequestAttributesSequence", "ReferencedStudySequence", "ReferencedPatientSequence",
    "ReferencedImageSequence", "SourceImageSequence", "ReferencedPerformedProcedureStepSequence",
    "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepDescription",
    "ScheduledProcedureStepID", "RequestedProcedureID", "ImageComments", "ProtocolName",
    "TextValue", "ContentSequence", "PersonName", "VerifyingObserverName",
    "InstanceCreatorUID", "CreatorVersionUID", "IrradiationEventUID", "StorageMediaFileSetUID",
    "DigitalSignaturesSequence", "OriginalAttributesSequence", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)

# UIDs identifying a class or a coding scheme, not an instance: never replaced.
_CLASS_UIDS = {"SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID",
               "TransferSyntaxUID", "CodingSchemeUID", "ContextUID", "MappingResourceUID"}


def _empty_names_and_replace_uids(ds: Dataset, uid_map: dict[str, str]) -> None:
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value:
                _empty_names_and_replace_uids(item, uid_map)
        elif element.VR == "PN":
            element.value = ""
        elif element.VR == "UI" and element.keyword not in _CLASS_UIDS and element.value:
            old = str(element.value)
            element.value = uid_map.setdefault(old, generate_uid())


def _remove_overlays_and_curves(ds: Dataset) -> None:
    for element in list(ds):
        group = element.tag.group
        if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            del ds[element.tag]


def deidentify(ds: Dataset, *, patient_id: str | None = None) -> Dataset:
    """Remove or empty identifying attributes of ``ds`` in place and return it."""
    ds.remove_private_tags()
    _remove_overlays_and_curves(ds)
    for keyword in _REMOVE:
        if keyword in ds:
            del ds[keyword]
    for keyword in _EMPTY:
        setattr(ds, keyword, "")
    _empty_names_and_replace_uids(ds, {})
    if patient_id:
        ds.PatientID = patient_id
        ds.PatientName = patient_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "medsingan: PS3.15 Basic Profile (subset)"
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
