"""Validation under deliberate shifts: does a model lean on geometry instead of the lungs?

The validation split drawn from official train is far easier than the official test split
(validation AUC near 0.998 for every reasonable model), so it cannot tell a robust model from
one that learnt a shortcut. This module perturbs the *validation* images in ways that mimic
the known shortcuts of this data set and measures how much the model's calls move:

- ``narrow`` / ``wide``: the anatomy made 20 % narrower / 25 % wider. The originals were
  squashed to a square and NORMAL originals are wider than PNEUMONIA ones (width / height about
  1.22 against 1.47-1.52), so in a squashed image a pneumonia chest looks narrower. ``narrow``
  gives a normal chest the geometry of a pneumonia one.
- ``swapped``: normals narrowed and pneumonias widened, the class-correlated cue reversed: a
  model that uses the cue loses AUC here; one that reads the lungs does not.
- ``lower_crop``: the lowest 20 % removed (a diaphragm crop, which the app offers).
- ``low_resolution``: downsampled to half the side and back (NORMAL originals are also larger).

The shifts themselves are in ``shifts``. The unperturbed images are scored exactly as the app
scores them (``DecodedImage`` and ``Predictor.calls``, float32 inputs); the perturbed copies of
those same inputs go through ``Predictor.probabilities``.

Only the validation split is used; the test split is never touched. ``stress_report`` compares
candidate models and names the one preferred by a stated rule, and breaks the plain validation
calls down by acquisition group (``acquisition_groups``): file family, subtype and thirds of
patient number, a drift that exists inside official train.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .metrics import binary_metrics
from .shifts import change_aspect, keep_top, lower_resolution

STRESS_NAMES = ("plain", "narrow", "wide", "swapped", "lower_crop", "low_resolution")


@dataclass(frozen=True)
class StressConfig:
    """Strength of each perturbation.

    Attributes:
        narrow: width of the anatomy relative to its height after ``narrow`` (below 1).
        wide: the same for ``wide`` (above 1).
        lower_crop_keep: share of the image height kept by ``lower_crop``.
        low_resolution: intermediate side, as a share of the input side.
    """

    narrow: float = 0.8
    wide: float = 1.25
    lower_crop_keep: float = 0.8
    low_resolution: float = 0.5


def perturb(images: np.ndarray, labels: np.ndarray, name: str, config: StressConfig = StressConfig()) -> np.ndarray:
    """The validation images under one named perturbation.

    Args:
        images: (n, size, size, 1) float32 in [0, 1]; not modified.
        labels: (n,) 0 normal, 1 pneumonia (used by ``swapped`` only).
        name: one of ``STRESS_NAMES``.

    Returns:
        (n, size, size, 1) float32 in [0, 1].
    """
    if name not in STRESS_NAMES:
        raise ValueError(f"unknown perturbation {name!r}; choose from {', '.join(STRESS_NAMES)}")
    if name == "plain":
        return np.array(images, dtype=np.float32)
    if name == "swapped":
        factors = np.where(np.asarray(labels) == 0, config.narrow, config.wide)
        return np.stack([change_aspect(image, f) for image, f in zip(images, factors)])
    transform = {
        "narrow": lambda image: change_aspect(image, config.narrow),
        "wide": lambda image: change_aspect(image, config.wide),
        "lower_crop": lambda image: keep_top(image, config.lower_crop_keep),
        "low_resolution": lambda image: lower_resolution(image, config.low_resolution),
    }[name]
    return np.stack([transform(image) for image in images])


def stress_metrics(
    predictor, images: np.ndarray, labels: np.ndarray, config: StressConfig = StressConfig(), plain: np.ndarray | None = None
) -> dict:
    """AUC, and sensitivity / specificity at the model's own threshold, under every perturbation.

    Args:
        predictor: a ``Predictor`` (its calibrated probabilities and operating threshold are used).
        images: (n, size, size, 1) validation inputs, float32 in [0, 1] or uint8.
        labels: (n,) 0 / 1.
        plain: the predictor's probabilities on the unperturbed images, if already computed.

    Returns:
        {name: {"roc_auc", "sensitivity", "specificity", "mean_shift_normal", "mean_shift_pneumonia"}};
        the shifts are mean changes of probability against ``plain``.
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    labels = np.asarray(labels)
    threshold = predictor.threshold
    plain = predictor.probabilities(images) if plain is None else np.asarray(plain)
    results = {}
    for name in STRESS_NAMES:
        probabilities = plain if name == "plain" else predictor.probabilities(perturb(images, labels, name, config))
        metrics = binary_metrics(labels, probabilities, threshold)
        shift = probabilities - plain
        results[name] = {
            "roc_auc": metrics["roc_auc"],
            "sensitivity": metrics["sensitivity"],
            "specificity": metrics["specificity"],
            "mean_shift_normal": float(shift[labels == 0].mean()),
            "mean_shift_pneumonia": float(shift[labels == 1].mean()),
        }
    return results


def acquisition_groups(names: Sequence[str], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the images by acquisition group, from the official file names.

    Normals by file family (``IM-`` and ``NORMAL2-IM-``), pneumonias by subtype, and each class
    by thirds of its patient numbers (lowest third first). Patient numbers were presumably given
    in order of arrival, so a trend across the thirds is drift over time inside train.

    Args:
        names: file names, e.g. ``NORMAL2-IM-1427-0001.jpeg`` or ``person10_virus_35.jpeg``.
        labels: (n,) 0 normal, 1 pneumonia.

    Returns:
        {group name: (n,) bool mask}, groups in a fixed order; empty groups are left out.
    """
    labels = np.asarray(labels)
    names = list(names)
    numbers = np.array([int(re.search(r"\d+", name.removeprefix("NORMAL2-")).group()) for name in names])
    groups = {
        "normal, IM- files": (labels == 0) & np.array([name.startswith("IM-") for name in names], dtype=bool),
        "normal, NORMAL2- files": (labels == 0) & np.array([name.startswith("NORMAL2-") for name in names], dtype=bool),
        "pneumonia, bacterial": (labels == 1) & np.array(["_bacteria_" in name for name in names], dtype=bool),
        "pneumonia, viral": (labels == 1) & np.array(["_virus_" in name for name in names], dtype=bool),
    }
    for label, class_name in ((0, "normal"), (1, "pneumonia")):
        members = np.flatnonzero(labels == label)
        ordered = members[np.argsort(numbers[members], kind="stable")]
        for third, part in enumerate(np.array_split(ordered, 3), start=1):
            if part.size:
                mask = np.zeros(labels.shape, dtype=bool)
                mask[part] = True
                groups[f"{class_name}, patient numbers {numbers[part].min()}-{numbers[part].max()} (third {third})"] = mask
    return {name: mask for name, mask in groups.items() if mask.any()}


def drift_metrics(probabilities: np.ndarray, labels: np.ndarray, names: Sequence[str], threshold: float) -> dict:
    """Share of correct calls at ``threshold`` in each acquisition group.

    Returns:
        {group: {"n", "correct", "rate"}}: the rate is the specificity of a normal group and the
        sensitivity of a pneumonia group.
    """
    called = np.asarray(probabilities) >= threshold
    labels = np.asarray(labels)
    rows = {}
    for group, mask in acquisition_groups(names, labels).items():
        correct = int((called[mask] == (labels[mask] == 1)).sum())
        rows[group] = {"n": int(mask.sum()), "correct": correct, "rate": correct / int(mask.sum())}
    return rows


def preferred(results: dict[str, dict]) -> str:
    """The rule for choosing between candidates on validation alone.

    The candidate with the highest worst-case AUC over the perturbations wins; plain validation
    AUC (which saturates) breaks ties within 0.002.
    """

    def worst(name: str) -> float:
        return min(metrics["roc_auc"] for metrics in results[name].values())

    best = max(worst(name) for name in results)
    tied = [name for name in results if worst(name) >= best - 0.002]
    return max(tied, key=lambda name: results[name]["plain"]["roc_auc"])


def stress_report(model_paths: list[Path], data_dir: Path, reports_dir: Path, config: StressConfig = StressConfig()) -> dict:
    """Scores each model's own validation split (``data.model_split``: the data must be the data
    it was trained on) under every perturbation; writes ``validation_stress.{json,md}`` to
    ``reports_dir`` and returns the report.

    Raises:
        DataError: the data folder differs from the data a model was trained on.
    """
    from ..data import model_split
    from .evaluation import call_files
    from ..prediction import Predictor

    results, details, drift = {}, {}, {}
    for path in model_paths:
        predictor = Predictor.from_file(Path(path), runtime="keras")
        validation = model_split(predictor.metadata, Path(data_dir)).validation
        labels = np.array([s.label for s in validation])
        names = [s.path.name for s in validation]
        calls, images = call_files(predictor, [s.path for s in validation])  # images: (n, size, size, 1) float32
        plain = np.array([call.probability for call in calls])
        name = f"{Path(path).stem}@{predictor.metadata.model_sha256[:12]}"
        results[name] = stress_metrics(predictor, images, labels, config, plain)
        drift[name] = drift_metrics(plain, labels, names, predictor.threshold)
        details[name] = {
            "path": str(path),
            "validation_images": int(len(labels)),
            "threshold": predictor.threshold,
            "ood_flagged": None if predictor.gate is None else sum(bool(call.ood) for call in calls),
        }
    report = {
        "config": asdict(config),
        "models": details,
        "results": results,
        "preferred": preferred(results),
        "acquisition_drift": drift,
    }
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "validation_stress.json").write_text(json.dumps(report, indent=2) + "\n")
    (reports_dir / "validation_stress.md").write_text(stress_markdown(report))
    return report


def stress_markdown(report: dict) -> str:
    """A table per model: AUC, sensitivity and specificity at the model's threshold."""
    lines = [
        "Validation split only, under deliberate perturbations (`pneumo_model.lab.stress`). Sensitivity and",
        "specificity at each model's own validation threshold.",
        "",
        "| model | perturbation | AUC | sensitivity | specificity | mean Δp normal | mean Δp pneumonia |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, per_stress in report["results"].items():
        for stress, m in per_stress.items():
            lines.append(
                f"| {name} | {stress} | {m['roc_auc']:.4f} | {m['sensitivity']:.3f} | {m['specificity']:.3f} "
                f"| {m['mean_shift_normal']:+.3f} | {m['mean_shift_pneumonia']:+.3f} |"
            )
    lines += ["", f"Preferred by the rule (highest worst-case AUC): `{report['preferred']}`.", ""]
    drift = report.get("acquisition_drift")
    if drift:
        lines += [
            "## Drift inside official train",
            "",
            "Plain validation images by acquisition group, at each model's threshold: specificity for the",
            "normal groups, sensitivity for the pneumonia groups (correct / images). Patient numbers were",
            "presumably given in order of arrival; a trend across the thirds is drift over time.",
            "",
            "| model | group | correct | rate |",
            "|---|---|---|---|",
        ]
        for name, groups in drift.items():
            for group, row in groups.items():
                lines.append(f"| {name} | {group} | {row['correct']}/{row['n']} | {row['rate']:.3f} |")
        lines.append("")
    return "\n".join(lines)
