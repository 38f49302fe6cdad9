"""The studies the PACS tests load into Orthanc: made from the sample films, with sentinel patient
identifiers that must never reach anything this project writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from pneumo_model.artifacts import REPO_ROOT
from pneumo_model.lab.pacs_files import StudyFacts, chest_dicom, pdf_dicom, text_report_dicom, unsupported_syntax_dicom

SAMPLES = sorted((REPO_ROOT / "assets" / "samples").glob("*.jpeg"))
SENTINELS = {
    "patient_name": "ZZSENTINEL^NAMEQX",
    "patient_id": "PIDSENTINEL771",
    "accession_number": "ACCSENT9931",
    "birth_date": "20211231",
}



def grey(path: Path, side: int | None = None) -> np.ndarray:
    picture = Image.open(path).convert("L")
    if side:
        picture = picture.resize((side, side), Image.BILINEAR)
    return np.asarray(picture)


def sentinel_study(**changes) -> StudyFacts:
    values = dict(
        study_uid=generate_uid(), accession_number=SENTINELS["accession_number"], study_date="20261130",
        patient_name=SENTINELS["patient_name"], patient_id=SENTINELS["patient_id"], birth_date=SENTINELS["birth_date"],
    )
    return StudyFacts(**{**values, **changes})


def main_study_files(study: StudyFacts) -> dict[str, bytes]:
    """The study every read-only test uses: four frontal films in four encodings, and the rest."""
    dx, cr, other = generate_uid(), generate_uid(), generate_uid()  # a series has one modality
    a, b, c = (grey(path) for path in SAMPLES[:3])
    return {
        "dx_mono2": chest_dicom(a, study, dx, modality="DX", instance_number=1),
        "cr_mono1_jpeg": chest_dicom(b, study, cr, modality="CR", photometric="MONOCHROME1", jpeg=True, series_number=2,
                                     instance_number=2),
        "dx_mono1": chest_dicom(c, study, dx, modality="DX", photometric="MONOCHROME1", instance_number=3),
        "cr_mono2_jpeg": chest_dicom(a, study, cr, modality="CR", jpeg=True, series_number=2, instance_number=4),
        "lateral": chest_dicom(b, study, dx, view_position="LL", instance_number=5),
        "multi_frame": chest_dicom(c, study, dx, frames=2, instance_number=6),
        "text_report": text_report_dicom(study, other),
        "pdf": pdf_dicom(study, generate_uid()),
        "video_syntax": unsupported_syntax_dicom(study, generate_uid()),
    }
