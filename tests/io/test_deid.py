"""De-identification keeps the technical description of a scan and nothing about the person."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medsingan.io import DerivedSeries, read_scan, write_scan
from medsingan.io.deid import deidentified_header
from medsingan.io.dicom import _header_json
from tests.conftest import dicom_file

SECRET = "LEAKME"


def _item(**values: str) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


@pytest.fixture
def planted(tmp_path):
    """CT_small with identifiers planted where attribute lists usually miss them."""
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.ContributingEquipmentSequence = Sequence([_item(
        InstitutionName=f"{SECRET} hospital", StationName=f"{SECRET}-ST1",
        DeviceSerialNumber=f"{SECRET}-SN", ContributionDateTime="20240102030405")])
    ds.ProcedureCodeSequence = Sequence([_item(CodeValue="X1", CodingSchemeDesignator="99L",
                                               CodeMeaning=f"{SECRET} procedure")])
    ds.AnatomicRegionSequence = Sequence([_item(
        CodeValue="T-D3000", CodingSchemeDesignator="SRT", CodeMeaning="Chest",
        CodingSchemeName=f"{SECRET} note")])
    ds.RequestedProcedureDescription = f"{SECRET} request"
    ds.StudyComments = f"{SECRET} comment"
    ds.PerformedLocation = f"{SECRET} room"
    ds.ClinicalTrialSubjectID = f"{SECRET}-subject"
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.DateOfLastCalibration = "20240101"
    icon = _item(Rows=1, Columns=8)
    icon.BitsAllocated = 8
    icon.add_new(0x7FE00010, "OB", SECRET.encode() + b"AB")
    ds.IconImageSequence = Sequence([icon])
    ds.add_new(0x00091010, "LO", f"{SECRET} private")
    path = tmp_path / "planted.dcm"
    ds.save_as(path)
    return path


def test_written_dicom_keeps_nothing_identifying_anywhere(planted, tmp_path):
    source = read_scan(planted)
    out = write_scan(source.image, source.meta, tmp_path / "derived.dcm", patient_id="SUBJ-1")
    raw = out.read_bytes()
    assert SECRET.encode() not in raw
    original = pydicom.dcmread(planted)
    for identifier in (str(original.PatientName), original.PatientID,
                       original.StudyInstanceUID, original.SeriesInstanceUID,
                       original.SOPInstanceUID, original.FrameOfReferenceUID):
        assert identifier.encode() not in raw, identifier
    written = pydicom.dcmread(out)
    assert "TimezoneOffsetFromUTC" not in written and "DateOfLastCalibration" not in written
    assert "ContributingEquipmentSequence" not in written and written.get(0x00091010) is None
    # what the image needs is kept: geometry, acquisition parameters, anatomy codes
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "KVP",
                    "SliceThickness", "RescaleSlope"):
        assert written[keyword].value == original[keyword].value, keyword
    (region,) = written.AnatomicRegionSequence
    assert (region.CodeValue, region.CodeMeaning) == ("T-D3000", "Chest")
    assert "CodingSchemeName" not in region
    assert written.PatientID == "SUBJ-1" and written.PatientIdentityRemoved == "YES"
    np.testing.assert_allclose(read_scan(out).image, source.image, atol=0.5)


def test_header_kept_in_a_run_directory_is_de_identified(planted):
    header = deidentified_header(_header_json(pydicom.dcmread(planted)))
    text = str(header)
    assert SECRET not in text and "CompressedSamples^CT1" not in text
    assert header["file_meta"] == {}


def test_a_cohort_is_one_series_and_lossy_sources_stay_flagged(tmp_path):
    source = read_scan(dicom_file("MR_small.dcm"))
    source.meta.dicom_header["dataset"]["00282110"] = {"vr": "CS", "Value": ["01"]}
    cohort = DerivedSeries.for_key("run abc, seed 0")
    written = [pydicom.dcmread(write_scan(source.image, source.meta, tmp_path / f"{i}.dcm",
                                          series=cohort.instance(i + 1)))
               for i in range(3)]
    assert len({w.StudyInstanceUID for w in written}) == 1
    assert len({w.SeriesInstanceUID for w in written}) == 1
    assert len({w.SOPInstanceUID for w in written}) == 3
    assert [w.InstanceNumber for w in written] == [1, 2, 3]
    assert all(w.LossyImageCompression == "01" for w in written)
    alone = pydicom.dcmread(write_scan(source.image, source.meta, tmp_path / "alone.dcm"))
    assert alone.SeriesInstanceUID != written[0].SeriesInstanceUID


def test_burned_in_text_means_identity_not_claimed_removed(tmp_path):
    """Only the header is de-identified: a film with burned-in text may still name the patient
    in its pixels, so the derived header must not say that identity was removed."""
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "annotated.dcm")
    source = read_scan(tmp_path / "annotated.dcm")
    written = pydicom.dcmread(write_scan(source.image, source.meta, tmp_path / "derived.dcm"))
    assert written.BurnedInAnnotation == "YES"
    assert written.PatientIdentityRemoved == "NO"
    assert any("burned-in annotation not removed" in method
               for method in written.DeidentificationMethod)
    assert written.PatientID != ds.PatientID and written.PatientName != ds.PatientName
    header = Dataset.from_json(deidentified_header(source.meta.dicom_header)["dataset"])
    assert (header.BurnedInAnnotation, header.PatientIdentityRemoved) == ("YES", "NO")


def test_clean_pixels_mean_identity_removed(tmp_path):
    source = read_scan(dicom_file("eCT_Supplemental.dcm"))  # Burned In Annotation NO
    written = pydicom.dcmread(write_scan(source.image, source.meta, tmp_path / "derived.dcm"))
    assert (written.BurnedInAnnotation, written.PatientIdentityRemoved) == ("NO", "YES")
    assert "burned-in" not in str(written.DeidentificationMethod)
