"""Model card facts, kept as data in ``reports/model_card.json`` for the README and the app.

The text facts (population, caveats) are statements about the data set; the only figures here
(the shortcut geometry) are measured by ``measure_original_geometry`` from original files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..artifacts import ModelMetadata, read_metadata
from ..bundle import subtype_model_path
from ..data import CLASSES
from ..paths import DEFAULT_MODEL_PATH
from ..subtype import ENABLED_BY_DEFAULT, SETTING
from .evaluation import KERMANY_2018

CITATION = (
    "Kermany D, Zhang K, Goldbaum M (2018). Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
    "Images for Classification. Mendeley Data, v2, doi:10.17632/rscbjbr9sj.2. Kermany DS et al. (2018). "
    "Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning. Cell 172(5):1122-1131."
)


def measure_original_geometry(folder: Path) -> dict:
    """Width, height and width/height of original files per class, read from the file headers.

    Args:
        folder: a folder with NORMAL/ and PNEUMONIA/ inside (searched recursively).

    Returns:
        ``{class: {"n", "mean_width", "mean_height", "mean_aspect", "median_aspect"}}``.
    """
    result = {}
    for class_name in CLASSES:
        sizes = []
        for path in sorted(Path(folder).rglob(f"{class_name}/*")):
            if path.suffix.lower() in (".jpeg", ".jpg", ".png"):
                with Image.open(path) as image:
                    sizes.append(image.size)
        if not sizes:
            continue
        widths, heights = np.array(sizes, dtype=float).T
        aspects = widths / heights
        result[class_name] = {
            "n": len(sizes),
            "mean_width": round(float(widths.mean()), 1),
            "mean_height": round(float(heights.mean()), 1),
            "mean_aspect": round(float(aspects.mean()), 3),
            "median_aspect": round(float(np.median(aspects)), 3),
        }
    return result


def model_card_facts(fullres_dir: Path | None) -> dict:
    """The model card's facts; geometry is measured when ``fullres_dir`` exists."""
    geometry = measure_original_geometry(fullres_dir) if fullres_dir and Path(fullres_dir).is_dir() else {}
    return {
        "intended_use": (
            "Decision support for trained readers reviewing paediatric frontal chest X-rays for pneumonia. "
            "Not a medical device and not for diagnosis: every output is to be checked by a qualified reader."
        ),
        "population": (
            "Children aged 1 to 5, frontal (anterior-posterior) chest films from one hospital in China (Guangzhou "
            "Women and Children's Medical Center), routine care. Performance on adults, other hospitals or devices, "
            "lateral views and other diseases is unknown."
        ),
        "data": "Kermany 2018 chest X-ray set (5,216 train / 624 test images), CC BY 4.0.",
        # What a reader must know before trusting a call, one short sentence each, beside the population (which
        # says where the figures do not reach) on the model card's first screen; the page adds the measured errors.
        "limitations_plain": [
            "**Shortcuts.** It may read the film's shape, markers or the diaphragm instead of the lungs: "
            "check where it looked (Explain).",
            "**Labels.** The graders' reading, no microbiological confirmation; some are wrong.",
        ],
        "published_reference": {
            "name": "Kermany 2018",
            "source": "Kermany DS et al., Cell 2018 (InceptionV3 with ImageNet weights), on the same official test split",
            "figures": dict(KERMANY_2018),
        },
        "citation": CITATION,
        "caveats": [
            "The official test split is its own patient namespace: its patient ids may reuse numbers seen in "
            "train, and nothing says whether they are the same children, so train/test patient overlap cannot "
            "be excluded.",
            "Labels carry known noise: they come from the original graders' reading of the images, without "
            "microbiological confirmation, and later reviews of this data set found mislabelled and ambiguous "
            "images. Bacterial versus viral subtype labels are noisier still.",
            "The validation split (made from official train) is much easier than the official test split; "
            "the test figures are the honest ones.",
        ],
        "shortcut_warning": (
            "In the original files NORMAL and PNEUMONIA images differ in shape and size. Every image is squashed "
            "to a square for the model, so the squashing distortion itself correlates with the class: a model can "
            "partly tell the class from geometry rather than from the lungs. Expect the model to be less reliable "
            "on images whose shape differs from this data set's, and read heat maps with that in mind. "
            "Bright burned-in markers and the diaphragm region are other known shortcuts. What we do about it: "
            "training draws random changes of aspect ratio and resolution so that the cue carries no label, and "
            "models are compared on validation images with the cue deliberately reversed (\"Validation under shift\")."
        ),
        "shortcut_geometry": {
            "source": "the data set's original full-size training files (its full-resolution sample), read from their headers",
            "per_class": geometry,
        },
    }


def measured_shortcut(stress_report: dict) -> dict:
    """Per model in a ``validation_stress.json`` report: how far the geometry cue moves its calls."""
    measured = {}
    for name, results in stress_report["results"].items():
        plain, narrow, swapped = results["plain"], results["narrow"], results["swapped"]
        measured[name] = {
            "validation_specificity": plain["specificity"],
            "specificity_with_anatomy_narrowed": narrow["specificity"],
            "auc_with_cue_reversed": swapped["roc_auc"],
            "summary": (
                f"On validation, narrowing the anatomy by {1 - stress_report['config']['narrow']:.0%} (the geometry "
                f"of a pneumonia file) moves specificity from {plain['specificity']:.2f} to {narrow['specificity']:.2f}; "
                f"with the cue reversed for both classes, AUC is {swapped['roc_auc']:.3f} (plain {plain['roc_auc']:.3f})."
            ),
        }
    return measured


SUBTYPE_REPORT = "subtype_evaluation.json"
# The test report's figures the card shows (``evaluate --subtype``), in its own key names.
SUBTYPE_TEST_FIGURES = (
    "roc_auc", "accuracy", "viral_recall", "bacterial_recall", "undetermined_fraction", "accuracy_outside_band",
    "viral_recall_outside_band", "viral_recall_undetermined_as_miss",
)
SUBTYPE_CAVEAT = (
    "The radiograph alone cannot reliably tell bacterial from viral infection: bacterial infection is found in about "
    "half of children with only interstitial infiltrates and in most with alveolar ones (Virkki et al., Thorax 2002). "
    "The labels it learned from are the hospital's diagnoses (the data set's file names), not microbiology. So the "
    "output is a radiographic pattern, a second look for the reader: never a cause, never a treatment decision."
)
KERMANY_SUBTYPE_NOTE = (
    "Kermany et al. (Cell 2018) report bacterial against viral on the same official test split (242 bacterial, 148 "
    "viral films), with bacterial as the positive class. As their methods describe, the test partition was evaluated "
    "during training and the best-performing model kept: their figures were selected on the test split, so they are "
    "optimistic."
)
OURS_NOTE = "Ours were fixed on validation before the test split was scored once."


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def subtype_card_facts(metadata: ModelMetadata | None, report: dict | None) -> dict:
    """The card's section on the radiographic pattern: what it is and is not, how its network was
    trained (from its own metadata), its test figures (from ``subtype_evaluation.json``, read key by
    key: a figure the report lacks is None, never guessed) and Kermany 2018's beside them, and
    whether the pattern is on by default.

    Args:
        metadata: the subtype network's metadata; None when the model has none.
        report: ``evaluate --subtype``'s report; None when it has not been written yet.
    """
    facts = {
        "what_it_is": (
            "For a film the model calls pneumonia (and the out-of-distribution gate does not flag), a second small "
            "network says whether it looks more like the bacterial or the viral pneumonia films it learned from: "
            "\"bacterial-like\", \"viral-like\", or \"undetermined\" inside a band around its threshold. Never "
            "for a film called normal or flagged by the gate."
        ),
        "what_it_is_not": SUBTYPE_CAVEAT,
        "enabled_by_default": ENABLED_BY_DEFAULT,
        "setting": SETTING,
        "rule": "docs/subtype_rule.md",
        "model": None,
        "test": None,
        "kermany_2018": None,
        "kermany_note": f"{KERMANY_SUBTYPE_NOTE} {OURS_NOTE}",
    }
    if metadata is not None:
        validation = metadata.validation
        low, high = metadata.grey_zone
        facts["model"] = {
            "sha256": metadata.model_sha256,
            "architecture": metadata.description,
            "input_size": metadata.input_size,
            "init_from": metadata.train_config.get("init_from"),
            "imbalance": metadata.train_config.get("imbalance"),
            "command": metadata.command,
            "training_seconds": metadata.training_seconds,
            "created_utc": metadata.created_utc,
            "temperature": metadata.temperature,
            "threshold": metadata.threshold,
            "band": [low, high],
            "validation": {
                "films": validation.get("films"),
                "viral_films": validation.get("viral_films"),
                "roc_auc": _number(validation.get("roc_auc")),
                "accuracy": _number(validation.get("accuracy")),
                # Viral is the positive class of the subtype network: sensitivity is viral recall.
                "viral_recall": _number(validation.get("sensitivity")),
                "bacterial_recall": _number(validation.get("specificity")),
                "undetermined_fraction": _number(validation.get("undetermined_fraction")),
                "accuracy_outside_band": _number(validation.get("accuracy_outside_band")),
                "viral_recall_outside_band": _number(validation.get("viral_recall_outside_band")),
            },
        }
    if report is not None:
        metrics = report.get("metrics") if isinstance(report.get("metrics"), dict) else {}
        intervals = report.get("intervals") if isinstance(report.get("intervals"), dict) else {}
        met = report.get("must_reach_met")
        facts["test"] = {
            "model_sha256": report.get("model_sha256"),
            "metrics": {key: _number(metrics.get(key)) for key in SUBTYPE_TEST_FIGURES},
            "intervals": {
                key: [float(v) for v in intervals[key]]
                for key in SUBTYPE_TEST_FIGURES
                if isinstance(intervals.get(key), (list, tuple)) and len(intervals[key]) == 2
                and all(_number(v) is not None for v in intervals[key])
            },
            "must_reach_met": met if isinstance(met, bool) else None,
        }
        kermany = report.get("kermany_2018")
        facts["kermany_2018"] = dict(kermany) if isinstance(kermany, dict) else None
        if isinstance(report.get("kermany_note"), str):  # the report's own words on how they were chosen
            facts["kermany_note"] = f"{report['kermany_note']} {OURS_NOTE}"
    return facts


def write_model_card(reports_dir: Path, fullres_dir: Path | None, model_path: Path = DEFAULT_MODEL_PATH) -> dict:
    """Writes ``model_card.json``; adds the measured shortcut when ``validation_stress.json`` is there,
    the radiographic pattern's section (``subtype_card_facts``: from the subtype network beside
    ``model_path`` and ``subtype_evaluation.json`` when they are there), and redraws the reliability
    diagrams the card shows from the committed predictions (``redraw_reliability``)."""
    facts = model_card_facts(fullres_dir)
    stress_path = Path(reports_dir) / "validation_stress.json"
    if stress_path.is_file():
        facts["shortcut_measured"] = measured_shortcut(json.loads(stress_path.read_text()))
    subtype_path, report_path = subtype_model_path(model_path), Path(reports_dir) / SUBTYPE_REPORT
    facts["subtype"] = subtype_card_facts(
        read_metadata(subtype_path) if subtype_path.is_file() else None,
        json.loads(report_path.read_text()) if report_path.is_file() else None,
    )
    Path(reports_dir).mkdir(parents=True, exist_ok=True)
    reliability = {split: redraw_reliability(reports_dir, split) for split in ("test", "validation")}
    facts["reliability"] = {split: drawn for split, drawn in reliability.items() if drawn is not None}
    (Path(reports_dir) / "model_card.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def redraw_reliability(reports_dir: Path, split: str = "test") -> dict | None:
    """Redraws a split's reliability diagram from its committed predictions, without scoring anything.

    The figure's bins are recomputed from ``predictions_<split>.csv`` (labels and probabilities as
    ``evaluate`` wrote them) and must hold the same films as the report's ``calibration_bins``; the
    test split is not scored again, so this is no new test-split evaluation.

    Returns:
        What the card says under the figure: ``{"split", "figure", "films", "bins": [{"low", "high",
        "films"}], "sparse_bin_films"}``, or None when the split's report or predictions are not there.

    Raises:
        ValueError: the predictions and the report disagree (regenerate both with ``evaluate``).
    """
    from .evaluation import report_name
    from .metrics import calibration_bins, expected_calibration_error
    from .plots import SPARSE_BIN_FILMS, reliability_figure

    reports_dir = Path(reports_dir)
    report_path, predictions = reports_dir / report_name(split), reports_dir / f"predictions_{split}.csv"
    if not report_path.is_file() or not predictions.is_file():
        return None
    report = json.loads(report_path.read_text())
    with open(predictions, newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([int(row["label"]) for row in rows])
    probabilities = np.array([float(row["probability"]) for row in rows])
    bins = calibration_bins(labels, probabilities)
    if [b["count"] for b in bins] != [b["count"] for b in report["calibration_bins"]]:
        raise ValueError(
            f"{predictions.name} and {report_path.name} disagree on the films per reliability bin; "
            f"regenerate both with `python -m pneumo_model evaluate --split {split}`."
        )
    reliability_figure(bins, expected_calibration_error(labels, probabilities), reports_dir / report["figures"]["reliability"])
    return {
        "split": split,
        "figure": report["figures"]["reliability"],
        "films": int(labels.size),
        "bins": [{"low": b["low"], "high": b["high"], "films": b["count"]} for b in bins],
        "sparse_bin_films": SPARSE_BIN_FILMS,
    }
