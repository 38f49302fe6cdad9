"""The model's result as a DICOM Comprehensive SR, to send back to the PACS beside the image it is about.

One report per image and operating point, in the image's study, in a series of its own. Its
UIDs are derived from the image's SOP Instance UID, the operating point's id and the model's
SHA-256 (``report_uids``), so the same result always has the same report UID: before sending,
the PACS is asked whether it already holds that UID, and a result is never sent twice (even if
the first send was cut off before its answer came back).

The content tree (built with ``highdicom``): a "Diagnostic imaging report" container holding
the words "decision support, not a diagnosis", the model's call (coded), the calibrated
probability and the threshold, the operating point (shipped or site profile, with its id), the
grey-zone and out-of-distribution flags (SNOMED CT yes/no), for a film called pneumonia that the
gate passed the subtype pattern (its own private concept, "Radiographic pattern", with the value
bacterial-like / viral-like / undetermined, its calibrated probability of the viral pattern and the
caveat that it is a pattern, never a cause nor a diagnosis; no item at all where the pattern does
not apply or is off), the algorithm's name and version,
the model's SHA-256, and an IMAGE item referencing the source image by SOP Class and SOP
Instance UID. The patient and study modules are copied from the source image's header, as DICOM
requires: that is the PACS's record of its own patient; nothing of it is kept or logged here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from .operating_point import OperatingPoint
    from .prediction import Prediction

SCHEME = "99PNEUMO"  # the private coding scheme of the concepts DICOM has no code for
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "Pneumonia decision support (not a diagnosis)"
DECISION_SUPPORT = "Decision support, not a diagnosis."
ALGORITHM_NAME = "pneumo_model PneumoNet (paediatric chest X-ray pneumonia)"
# The subtype pattern's values (``subtype.PATTERNS``): code value and meaning in ``SCHEME``.
PATTERN_CODES = {
    "bacterial-like": ("BACTERIAL-LIKE", "Bacterial-like radiographic pattern"),
    "viral-like": ("VIRAL-LIKE", "Viral-like radiographic pattern"),
    "undetermined": ("UNDETERMINED", "Undetermined radiographic pattern"),
}
_NAMESPACE = uuid.UUID("5f0c8a4e-2b8d-5a43-9f6e-7d1c3b0a9e21")  # this software's reports; never change it


@dataclass(frozen=True)
class ReportUids:
    """The UIDs of the report of one image's result at one operating point, by one model."""

    series_uid: str
    sop_uid: str


def report_uids(source_sop_uid: str, operating_point: str, model_sha: str) -> ReportUids:
    """Deterministic UIDs for the report (see the module's docstring)."""
    return _derived_uids("", source_sop_uid, operating_point, model_sha)


def _derived_uids(kind: str, source_sop_uid: str, operating_point: str, model_sha: str) -> ReportUids:
    """``2.25.`` and the integer of a name-based (version 5) UUID of the three and ``kind``, as
    DICOM PS3.5 B.2 allows: the same inputs always give the same UIDs."""
    name = "\n".join([source_sop_uid, operating_point, model_sha])
    series, instance = (f"{kind}-series:", f"{kind}:") if kind else ("series:", "report:")
    return ReportUids(
        series_uid=f"2.25.{uuid.uuid5(_NAMESPACE, series + name).int}",
        sop_uid=f"2.25.{uuid.uuid5(_NAMESPACE, instance + name).int}",
    )


def _codes():
    from highdicom.sr import CodedConcept

    def private(value: str, meaning: str) -> CodedConcept:
        return CodedConcept(value, SCHEME, meaning)

    return {
        "report": CodedConcept("18748-4", "LN", "Diagnostic imaging report"),
        "comment": CodedConcept("121106", "DCM", "Comment"),
        "algorithm_name": CodedConcept("111001", "DCM", "Algorithm Name"),
        "algorithm_version": CodedConcept("111003", "DCM", "Algorithm Version"),
        "finding": CodedConcept("121071", "DCM", "Finding"),
        "source": CodedConcept("260753009", "SCT", "Source"),
        "yes": CodedConcept("373066001", "SCT", "Yes"),
        "no": CodedConcept("373067005", "SCT", "No"),
        "unit": CodedConcept("1", "UCUM", "no units"),
        "pneumonia": private("PNEUMONIA", "Pneumonia (model call)"),
        "normal": private("NORMAL", "Normal (model call)"),
        "probability": private("PROBABILITY", "Calibrated probability of pneumonia"),
        "threshold": private("THRESHOLD", "Operating threshold"),
        "operating_point": private("OPERATING-POINT", "Operating point"),
        "grey_zone": private("GREY-ZONE", "In the grey zone (needs a careful read)"),
        "ood": private("OOD", "Unlike the training images (out-of-distribution gate)"),
        "model_sha": private("MODEL-SHA256", "Model SHA-256"),
        # The subtype pattern: a radiographic pattern the model reads, never a cause or a diagnosis,
        # so private concepts only (no SNOMED CT bacterial or viral pneumonia code).
        "pattern": private("PATTERN", "Radiographic pattern (not a cause, not a diagnosis)"),
        "pattern_probability": private("PATTERN-PROB", "Calibrated probability of the viral-like pattern"),
        "pattern_note": private("PATTERN-CAVEAT", "What the radiographic pattern is not"),
        **{pattern: private(code, meaning) for pattern, (code, meaning) in PATTERN_CODES.items()},
    }


def build_report(source: "Dataset", prediction: "Prediction", point: "OperatingPoint", version: str) -> "Dataset":
    """The Comprehensive SR of ``prediction`` for the image whose header is ``source``.

    Args:
        source: the source image's data set (its header is enough: UIDs, patient and study).
        prediction: the result, made at ``point`` (its id must match).
        point: the operating point that made the call (says whether shipped or a site profile).
        version: the software's version (``pneumo_model.__version__``).

    Raises:
        ValueError: the prediction was not made at ``point``.
    """
    from highdicom.sr import (
        CodeContentItem,
        ComprehensiveSR,
        ContainerContentItem,
        ImageContentItem,
        NumContentItem,
        TextContentItem,
    )

    if prediction.operating_point != point.id:
        raise ValueError("The prediction was made at another operating point than the one given.")
    codes = _codes()
    uids = report_uids(str(source.SOPInstanceUID), point.id, prediction.model_sha)
    kind = "shipped" if point.kind == "shipped" else "site profile"

    def flag(name: str, value: bool) -> CodeContentItem:
        return CodeContentItem(codes[name], codes["yes" if value else "no"], relationship_type="CONTAINS")

    items = [
        TextContentItem(codes["comment"], f"{DECISION_SUPPORT} {_disclaimer()}", relationship_type="CONTAINS"),
        CodeContentItem(codes["finding"], codes[prediction.label], relationship_type="CONTAINS"),
        NumContentItem(codes["probability"], round(float(prediction.probability), 6), codes["unit"],
                       relationship_type="CONTAINS"),
        NumContentItem(codes["threshold"], round(float(prediction.threshold), 6), codes["unit"],
                       relationship_type="CONTAINS"),
        TextContentItem(codes["operating_point"], f"{kind} {point.id}", relationship_type="CONTAINS"),
        flag("grey_zone", prediction.grey_zone),
    ]
    if prediction.ood is not None:
        items.append(flag("ood", bool(prediction.ood)))
    if prediction.subtype is not None:
        items += _pattern_items(prediction, codes)
    items += [
        TextContentItem(codes["algorithm_name"], ALGORITHM_NAME, relationship_type="CONTAINS"),
        TextContentItem(codes["algorithm_version"], version, relationship_type="CONTAINS"),
        TextContentItem(codes["model_sha"], prediction.model_sha, relationship_type="CONTAINS"),
        ImageContentItem(codes["source"], str(source.SOPClassUID), str(source.SOPInstanceUID),
                         relationship_type="CONTAINS"),
    ]
    root = ContainerContentItem(codes["report"], is_content_continuous=False)
    root.ContentSequence = items
    report = ComprehensiveSR(
        evidence=[source],
        content=root,
        series_instance_uid=uids.series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sop_uid,
        instance_number=1,
        manufacturer="pneumo_model",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
    )
    report.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the disclaimer has a dash Latin-1 lacks
    return report


def _pattern_items(prediction: "Prediction", codes: dict) -> list:
    """The subtype pattern's three items: the pattern (coded), its probability, the caveat.

    Raises:
        ValueError: a pattern the report has no code for, or one without its probability.
    """
    from highdicom.sr import CodeContentItem, NumContentItem, TextContentItem

    from .presentation import PATTERN_CAVEAT

    if prediction.subtype not in PATTERN_CODES or prediction.subtype_probability is None:
        raise ValueError(f"Unknown subtype pattern {prediction.subtype!r}, or one without its probability.")
    return [
        CodeContentItem(codes["pattern"], codes[prediction.subtype], relationship_type="CONTAINS"),
        NumContentItem(codes["pattern_probability"], round(float(prediction.subtype_probability), 6), codes["unit"],
                       relationship_type="CONTAINS"),
        TextContentItem(codes["pattern_note"], PATTERN_CAVEAT, relationship_type="CONTAINS"),
    ]


def _disclaimer() -> str:
    from .presentation import DISCLAIMER

    return DISCLAIMER


def read_report(dataset: "Dataset") -> dict:
    """The values of a report this module wrote, read back from its content tree (for checks
    and for showing a report found on the PACS): call, probability, threshold, operating point,
    flags, the subtype pattern (None where the report has none), model SHA-256, the referenced
    image and the disclaimer text.

    Raises:
        ValueError: it is not such a report.
    """
    def meaning(item) -> tuple[str, str]:
        (code,) = item.ConceptNameCodeSequence
        return str(code.CodingSchemeDesignator), str(code.CodeValue)

    if getattr(dataset, "SeriesDescription", None) != SERIES_DESCRIPTION or "ContentSequence" not in dataset:
        raise ValueError("This is not a decision-support report written by this software.")
    values: dict = {}
    for item in dataset.ContentSequence:
        scheme, code = meaning(item)
        kind = item.ValueType
        if kind == "TEXT":
            values[f"{scheme}:{code}"] = str(item.TextValue)
        elif kind == "CODE":
            (value,) = item.ConceptCodeSequence
            values[f"{scheme}:{code}"] = str(value.CodeValue)
        elif kind == "NUM":
            (measured,) = item.MeasuredValueSequence
            values[f"{scheme}:{code}"] = float(measured.NumericValue)
        elif kind == "IMAGE":
            (reference,) = item.ReferencedSOPSequence
            values["image"] = (str(reference.ReferencedSOPClassUID), str(reference.ReferencedSOPInstanceUID))
    yes = "373066001"
    return {
        "label": {"PNEUMONIA": "pneumonia", "NORMAL": "normal"}.get(values.get("DCM:121071")),
        "probability": values.get(f"{SCHEME}:PROBABILITY"),
        "threshold": values.get(f"{SCHEME}:THRESHOLD"),
        "operating_point": values.get(f"{SCHEME}:OPERATING-POINT"),
        "grey_zone": values.get(f"{SCHEME}:GREY-ZONE") == yes,
        "ood": None if f"{SCHEME}:OOD" not in values else values[f"{SCHEME}:OOD"] == yes,
        "subtype": {code: pattern for pattern, (code, _) in PATTERN_CODES.items()}.get(
            values.get(f"{SCHEME}:PATTERN")
        ),
        "subtype_probability": values.get(f"{SCHEME}:PATTERN-PROB"),
        "subtype_note": values.get(f"{SCHEME}:PATTERN-CAVEAT"),
        "model_sha": values.get(f"{SCHEME}:MODEL-SHA256"),
        "comment": values.get("DCM:121106"),
        "image": values.get("image"),
    }


# --- the heat map as a picture beside the report ---------------------------------------------

CAPTURE_SERIES_NUMBER = 9902
CAPTURE_SERIES_DESCRIPTION = "Grad-CAM heat map (not for diagnosis)"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS"
CAPTURE_NOTE = "Decision support: where the model looked, not where the lesion is."
# The usual display of a frontal chest film: columns run to the patient's left, rows to the feet.
FRONTAL_ORIENTATION = ("L", "F")


def capture_uids(source_sop_uid: str, operating_point: str, model_sha: str) -> ReportUids:
    """Deterministic UIDs of the heat-map picture sent beside the report (as ``report_uids``)."""
    return _derived_uids("capture", source_sop_uid, operating_point, model_sha)


def burned_in(picture, lines: tuple[str, ...] = (NOT_FOR_DIAGNOSIS, CAPTURE_NOTE)):
    """``picture`` ((h, w, 3) uint8 RGB, not modified) with a black band on top holding ``lines``
    in white: the words travel with the pixels, whatever viewer shows them."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    height, width = picture.shape[:2]
    size = max(14, width // 40)
    font = ImageFont.load_default(size=size)
    band = int(size * 1.5 * len(lines) + size)
    canvas = Image.new("RGB", (width, height + band), "black")
    canvas.paste(Image.fromarray(picture), (0, band))
    draw = ImageDraw.Draw(canvas)
    for row, line in enumerate(lines):
        draw.text((size // 2, size // 2 + row * int(size * 1.5)), line, fill="white", font=font)
    return np.asarray(canvas)  # (h + band, w, 3) uint8


def build_heatmap_capture(
    source: "Dataset", picture, prediction: "Prediction", point: "OperatingPoint", version: str
) -> "Dataset":
    """A Secondary Capture of the Grad-CAM overlay ``picture`` ((h, w, 3) uint8 RGB at the
    source image's geometry) with "NOT FOR DIAGNOSIS" burned in, in the source's study, in a
    series of its own, referencing the source image.

    Raises:
        ValueError: the prediction was not made at ``point``, or ``picture`` is not RGB uint8.
    """
    import numpy as np
    from highdicom.sc import SCImage
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    if prediction.operating_point != point.id:
        raise ValueError("The prediction was made at another operating point than the one given.")
    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError("The heat-map picture must be (h, w, 3) uint8 RGB.")
    uids = capture_uids(str(source.SOPInstanceUID), point.id, prediction.model_sha)
    orientation = tuple(source.get("PatientOrientation") or ())
    if len(orientation) != 2 or not all(orientation):
        orientation = FRONTAL_ORIENTATION
    capture = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(burned_in(picture)),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.series_uid,
        series_number=CAPTURE_SERIES_NUMBER,
        sop_instance_uid=uids.sop_uid,
        instance_number=1,
        manufacturer="pneumo_model",
        patient_orientation=orientation,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    capture.SeriesDescription = CAPTURE_SERIES_DESCRIPTION
    capture.BurnedInAnnotation = "YES"
    capture.SpecificCharacterSet = "ISO_IR 192"
    capture.ImageComments = (
        f"{NOT_FOR_DIAGNOSIS}. {CAPTURE_NOTE} {DECISION_SUPPORT} Model {prediction.model_sha[:12]}, "
        f"operating point {point.id}, {ALGORITHM_NAME} {version}."
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = "121324", "DCM", "Source image"
    reference.PurposeOfReferenceCodeSequence = [purpose]
    capture.SourceImageSequence = [reference]
    return capture
