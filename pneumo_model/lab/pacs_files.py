"""DICOM files as a PACS holds them, made from ordinary images: for the PACS tests and the PACS bench.

``chest_dicom`` writes a CR or DX radiograph (MONOCHROME1 or 2, uncompressed 12-bit in 16 or JPEG
baseline 8-bit) in a given study and series, with the patient module a real study carries (the
tests put sentinel values there and check that none of them reaches anything this project writes).
``text_report_dicom`` and ``pdf_dicom`` make the non-image instances a study can also hold.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # for presentation
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
MPEG2_SYNTAX = "1.2.840.10008.1.2.4.100"  # a video syntax: stored by a PACS, not a radiograph we can read


@dataclass(frozen=True)
class StudyFacts:
    """The study and patient a file belongs to."""

    study_uid: str
    accession_number: str = "ACC0001"
    study_date: str = "20261130"
    patient_name: str = "Test^Patient"
    patient_id: str = "PID0001"
    birth_date: str = "20230101"


def _base(sop_class: str, syntax: str, study: StudyFacts, series_uid: str, sop_uid: str | None, modality: str,
          series_number: int, instance_number: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_uid, series_uid
    ds.AccessionNumber, ds.StudyDate, ds.StudyTime = study.accession_number, study.study_date, "101500"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        study.patient_name, study.patient_id, study.birth_date, "O",
    )
    ds.StudyID, ds.ReferringPhysicianName = "1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, instance_number
    ds.Manufacturer = "pneumo_model test files"
    return ds


def chest_dicom(
    pixels: np.ndarray,
    study: StudyFacts,
    series_uid: str,
    *,
    sop_uid: str | None = None,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    jpeg: bool = False,
    view_position: str = "AP",
    series_number: int = 1,
    instance_number: int = 1,
    frames: int = 1,
) -> bytes:
    """A radiograph of ``pixels`` ((h, w) uint8, white = dense) as a DICOM file's bytes.

    Uncompressed: 12 bits stored in 16 (``pixels * 16``). ``jpeg``: 8-bit JPEG baseline (Pillow's
    encoder, quality 95), one frame. ``MONOCHROME1`` stores the inverted values, as such
    detectors do. ``frames`` > 1 repeats the picture (uncompressed only).
    """
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError("pixels must be a (h, w) uint8 array")
    if jpeg and frames != 1:
        raise ValueError("JPEG files are made with one frame")
    sop_class = CR_STORAGE if modality == "CR" else DX_STORAGE
    ds = _base(sop_class, JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian, study, series_uid, sop_uid, modality,
               series_number, instance_number)
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", view_position
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, photometric, 0
    inverted = photometric == "MONOCHROME1"
    if jpeg:
        stored = (255 - pixels) if inverted else pixels
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, format="JPEG", quality=95)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        stored = pixels.astype(np.uint16) * 16
        if inverted:
            stored = 4095 - stored
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        if frames > 1:
            ds.NumberOfFrames = frames
            stored = np.repeat(stored[None], frames, axis=0)
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def unsupported_syntax_dicom(study: StudyFacts, series_uid: str, *, sop_uid: str | None = None,
                             instance_number: int = 1) -> bytes:
    """A DX image whose pixels are in a video transfer syntax (MPEG-2): a PACS stores it, the
    pipeline cannot read it as a radiograph."""
    from pydicom.encaps import encapsulate

    ds = _base(DX_STORAGE, MPEG2_SYNTAX, study, series_uid, sop_uid, "DX", 90, instance_number)
    ds.Rows, ds.Columns = 256, 256
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(2000)])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def text_report_dicom(study: StudyFacts, series_uid: str, *, sop_uid: str | None = None) -> bytes:
    """A Basic Text SR (a radiologist's report) in the study: an instance with no pixels."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = _base(BASIC_TEXT_SR, ExplicitVRLittleEndian, study, series_uid, sop_uid, "SR", 80, 1)
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "18748-4", "LN", "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = [concept]
    ds.ContinuityOfContent = "SEPARATE"
    text = Dataset()
    text.RelationshipType, text.ValueType, text.TextValue = "CONTAINS", "TEXT", "No focal consolidation."
    text.ConceptNameCodeSequence = [concept]
    ds.ContentSequence = [text]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def pdf_dicom(study: StudyFacts, series_uid: str, *, sop_uid: str | None = None) -> bytes:
    """An encapsulated PDF (a scanned request form) in the study: an instance with no pixels."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = _base(ENCAPSULATED_PDF, ExplicitVRLittleEndian, study, series_uid, sop_uid, "DOC", 81, 1)
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    ds.EncapsulatedDocument = pdf if len(pdf) % 2 == 0 else pdf + b"\n"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.BurnedInAnnotation, ds.DocumentTitle = "NO", "Request form"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "11502-2", "LN", "Request form"
    ds.ConceptNameCodeSequence = [code]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
