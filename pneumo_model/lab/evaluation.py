"""Evaluation report of a trained model: metrics with confidence intervals, figures, and a test-use log.

The official test split is only ever scored here, to report; every evaluation of it is
appended to ``test_evaluations.jsonl`` so the report can say how often the test split was looked at.
Images are scored exactly as the app scores them: each file is decoded once
(``DecodedImage.decode``) and called with the out-of-distribution gate (``Predictor.calls``,
``Predictor.call_on_crop``) on float32 model inputs, so a file gets the same probability here as
in the app and the CLI (``call_files``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..artifacts import REPO_ROOT
from ..data import model_split
from .metrics import binary_metrics, bootstrap_intervals, calibration_bins, expected_calibration_error
from ..pipeline import DecodedImage
from .plots import confusion_figure, gallery_figure, reliability_figure, roc_figure
from ..ood import OUTSIDE, grade_shares
from ..prediction import Prediction, Predictor, forward_throughput

DEFAULT_REPORTS_DIR = REPO_ROOT / "reports"
TEST_LOG_NAME = "test_evaluations.jsonl"
REPORT_SCHEMA_VERSION = 1


def json_safe(value):
    """Replaces NaN and infinities (not valid JSON) with None, recursively."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def report_name(split: str) -> str:
    return "evaluation.json" if split == "test" else f"evaluation_{split}.json"


def _patient_level(labels: np.ndarray, probabilities: np.ndarray, groups: np.ndarray, threshold: float) -> dict:
    """Metrics with one case per patient group: its mean probability, its majority label."""
    unique, index = np.unique(groups, return_inverse=True)
    counts = np.bincount(index)
    mean_probability = np.bincount(index, weights=probabilities) / counts
    label = (np.bincount(index, weights=labels) / counts >= 0.5).astype(int)
    return binary_metrics(label, mean_probability, threshold)


def decoded_batches(paths: Sequence[Path], batch_size: int) -> Iterator[list[DecodedImage]]:
    """The files decoded (``DecodedImage.decode``), ``batch_size`` at a time, so that only one
    batch's pixels are held at once.

    Raises:
        InvalidImageError: a file cannot be used.
    """
    for start in range(0, len(paths), batch_size):
        yield [DecodedImage.decode(path) for path in paths[start : start + batch_size]]


def call_files(predictor: Predictor, paths: Sequence[Path]) -> tuple[list[Prediction], np.ndarray]:
    """The app's call on every file (decoded once, ``Predictor.calls`` in batches, with the gate).

    Returns:
        The predictions in file order, and the model inputs they were made from:
        (n, size, size, 1) float32 in [0, 1] (the pixels themselves are not kept).

    Raises:
        InvalidImageError: a file cannot be used.
    """
    size = predictor.input_size
    inputs = np.empty((len(paths), size, size, 1), np.float32)
    predictions: list[Prediction] = []
    for batch in decoded_batches(paths, predictor.batch_size):
        start = len(predictions)
        for offset, image in enumerate(batch):
            inputs[start + offset] = image.model_input(size)
        predictions += predictor.calls(batch)
    return predictions, inputs


def _ood_flags(predictions: Sequence[Prediction]) -> np.ndarray | None:
    """(n,) bool: which calls the gate flagged; None when the predictor has no gate."""
    if any(prediction.ood is None for prediction in predictions):
        return None
    return np.array([bool(prediction.ood) for prediction in predictions], dtype=bool)


def record_test_use(reports_dir: Path, model_sha: str, split: str) -> int:
    """Appends this evaluation to the log; returns how many official-test evaluations it holds."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    log = reports_dir / TEST_LOG_NAME
    entry = {"utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model_sha": model_sha, "split": split}
    with open(log, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return sum(1 for line in log.read_text().splitlines() if json.loads(line)["split"] == "test")


def evaluate(
    model_path: Path,
    data_dir: Path,
    reports_dir: Path = DEFAULT_REPORTS_DIR,
    split: str = "test",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Scores one split with the model at its fixed operating point and writes the report.

    Each image is scored as the app scores it (``call_files``). The figures cover every image,
    those the out-of-distribution gate flags included (the app hides their calls); how many it
    flags is reported beside them.

    Args:
        model_path: the ``.keras`` file.
        data_dir: the chest_xray_224 folder.
        reports_dir: where the JSON, CSV and figures go.
        split: "test" (the protocol's test part: the official test split for "official" models)
            or "validation".
        n_resamples: bootstrap resamples of patient groups.
        seed: bootstrap seed.

    Returns:
        The report as written to ``reports_dir / report_name(split)``.

    Raises:
        DataError: the data folder differs from the data the model was trained on (``model_split``).
    """
    predictor = Predictor.from_file(model_path, runtime="keras")
    metadata = predictor.metadata
    data_split = model_split(metadata, Path(data_dir))
    samples = data_split.test if split == "test" else data_split.validation
    calls, images = call_files(predictor, [s.path for s in samples])  # images: (n, size, size, 1) float32
    probabilities = np.array([call.probability for call in calls])  # (n,)
    labels = np.array([s.label for s in samples])
    groups = np.array([data_split.groups[s.path] for s in samples])
    threshold = predictor.threshold
    flagged = _ood_flags(calls)

    image_metrics = binary_metrics(labels, probabilities, threshold)
    image_metrics["ece"] = expected_calibration_error(labels, probabilities)
    bins = calibration_bins(labels, probabilities)
    in_zone = np.array([call.grey_zone for call in calls], dtype=bool)
    outside = ~in_zone
    subtypes = {}
    for subtype in ("bacteria", "virus"):
        rows = np.array([s.subtype == subtype for s in samples])
        if rows.any():
            subtypes[subtype] = {
                "n": int(rows.sum()),
                "sensitivity": float((probabilities[rows] >= threshold).mean()),
            }

    reports_dir = Path(reports_dir)
    figures = reports_dir / "figures"
    suffix = "" if split == "test" else f"_{split}"
    roc_figure(labels, probabilities, threshold, figures / f"roc{suffix}.png")
    reliability_figure(bins, image_metrics["ece"], figures / f"reliability{suffix}.png")
    confusion_figure(image_metrics["confusion"], figures / f"confusion{suffix}.png")
    errors = np.flatnonzero((probabilities >= threshold) != labels.astype(bool))
    worst = errors[np.argsort(-np.abs(probabilities[errors] - threshold))][:12]
    gallery_figure(
        [images[i] for i in worst],
        [f"{samples[i].path.name}\nlabel {'P' if labels[i] else 'N'}, p={probabilities[i]:.3f}" for i in worst],
        f"Worst errors ({split}, {len(errors)} errors in all)",
        figures / f"worst_errors{suffix}.png",
    )
    with open(reports_dir / f"predictions_{split}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "subtype", "group", "probability", "call", "grey_zone", "ood"])
        for sample, group, call in zip(samples, groups, calls):
            ood = "" if call.ood is None else int(call.ood)
            # 9 decimals, not 6: rounding stays well below the float32 differences between a batch and a
            # single call (up to about 5e-7), so each row can be checked against the app's probability.
            row = [sample.path.name, sample.label, sample.subtype or "", group, f"{call.probability:.9f}"]
            writer.writerow(row + [int(call.label == "pneumonia"), int(call.grey_zone), ood])

    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_sha256": metadata.model_sha256,
        "architecture": metadata.description,
        "protocol": metadata.protocol,
        "split": split,
        "split_description": (
            "official Kermany 2018 test split (624 images)"
            if split == "test" and metadata.protocol == "official"
            else f"{split} part of the '{metadata.protocol}' protocol"
        ),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "threshold": threshold,
        "temperature": metadata.temperature,
        "grey_zone": [predictor.grey_zone.low, predictor.grey_zone.high],
        "image": image_metrics,
        "image_ci95": bootstrap_intervals(labels, probabilities, groups, threshold, n_resamples, seed),
        "bootstrap": {"resamples": n_resamples, "seed": seed, "unit": "patient group"},
        "patient": _patient_level(labels, probabilities, groups, threshold),
        "subtype_sensitivity": subtypes,
        "grey_zone_fraction": float(in_zone.mean()),
        "ood_flagged": None if flagged is None else int(flagged.sum()),
        "forward_images_per_s": round(forward_throughput(predictor), 1),
        "outside_grey_zone": binary_metrics(labels[outside], probabilities[outside], threshold) if outside.any() else None,
        "calibration_bins": bins,
        "figures": {
            name: str((figures / f"{name}{suffix}.png").relative_to(reports_dir))
            for name in ("roc", "reliability", "confusion", "worst_errors")
        },
    }
    if split == "test":
        report["test_evaluations_so_far"] = record_test_use(reports_dir, metadata.model_sha256, split)
    report = json_safe(report)
    (reports_dir / report_name(split)).write_text(json.dumps(report, indent=2) + "\n")
    (reports_dir / report_name(split).replace(".json", ".md")).write_text(report_markdown(report))
    return report


# Published references on the official test split, quoted for comparison: Kermany et al., Cell 2018
# (InceptionV3, ImageNet weights), and the best published notebook CNN of the same families.
KERMANY_2018 = {"accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901, "roc_auc": 0.968}
NOTEBOOK_CNN = {"accuracy": 0.934, "sensitivity": 0.985, "specificity": 0.850}

# What the shipped model must reach on the official test split, and what we aim for beyond it:
# (metric, at least or at most, target).
MUST_BAR = (("roc_auc", ">=", 0.96), ("sensitivity", ">=", 0.95), ("specificity", ">=", 0.85))
GOAL = (("sensitivity", ">=", 0.97), ("specificity", ">=", 0.90), ("ece", "<=", 0.05))
_METRIC_NAMES = {"roc_auc": "AUC", "sensitivity": "sensitivity", "specificity": "specificity", "ece": "ECE"}


def targets_met(image_metrics: dict, targets=MUST_BAR) -> list[dict]:
    """Each target against the measured figure: ``{"metric", "op", "target", "value", "met", "gap"}``.

    ``gap`` is how far the figure is from the target in the direction that matters (0 when met).
    """
    rows = []
    for key, op, target in targets:
        value = image_metrics.get(key)
        met = value is not None and (value >= target if op == ">=" else value <= target)
        gap = 0.0 if met or value is None else abs(target - value)
        rows.append({"metric": key, "op": op, "target": target, "value": value, "met": bool(met), "gap": gap})
    return rows


def _targets_line(title: str, rows: list[dict]) -> str:
    parts = []
    for row in rows:
        name, shown = _METRIC_NAMES[row["metric"]], "n/a" if row["value"] is None else f"{row['value']:.3f}"
        verdict = "met" if row["met"] else f"missed by {row['gap']:.3f}"
        parts.append(f"{name} {shown} (target {'≥' if row['op'] == '>=' else '≤'} {row['target']:.2f}: {verdict})")
    status = "met" if all(row["met"] for row in rows) else "**not met**"
    return f"{title} {status}: " + "; ".join(parts) + "."


def _cell(report: dict, key: str) -> str:
    value = report["image"][key]
    low, high = report["image_ci95"].get(key, (None, None))
    if value is None:
        return "n/a"
    return f"{value:.3f} ({low:.3f}-{high:.3f})" if low is not None else f"{value:.3f}"


def report_markdown(report: dict) -> str:
    """The headline table of a report, as Markdown (copied into docs/results.md between markers)."""
    official = report["split"] == "test" and report["protocol"] == "official"
    lines = [
        f"Model `{report['model_sha256'][:12]}` ({report['architecture']}), {report['split_description']}, "
        f"{report['image']['n']} images; operating threshold {report['threshold']:.3f} fixed on validation. "
        "95 % confidence intervals from a patient-grouped bootstrap.",
        "",
        "| metric | this model | Kermany 2018 | best notebook CNN |" if official else "| metric | this model |",
        "|---|---|---|---|" if official else "|---|---|",
    ]
    for key, name in (("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("roc_auc", "ROC AUC")):
        row = f"| {name} | {_cell(report, key)} |"
        if official:
            notebook = f" {NOTEBOOK_CNN[key]:.3f} |" if key in NOTEBOOK_CNN else " |"
            row += f" {KERMANY_2018[key]:.3f} |" + notebook
        lines.append(row)
    extra = (("f1", "F1"), ("precision", "precision"), ("pr_auc", "PR AUC"), ("ece", "ECE (15 bins)"))
    for key, name in extra:
        lines.append(f"| {name} | {_cell(report, key)} |" + (" | |" if official else ""))
    zone = report["grey_zone"]
    outside = report["outside_grey_zone"]
    # Calls in the zone, by side of the threshold: all calls less those outside it.
    every, kept = report["image"]["confusion"], (outside or {}).get("confusion", dict.fromkeys(("tn", "fp", "fn", "tp"), 0))
    above = (every["tp"] + every["fp"] - kept["tp"] - kept["fp"]) / report["image"]["n"]
    below = (every["tn"] + every["fn"] - kept["tn"] - kept["fn"]) / report["image"]["n"]
    with np.errstate(divide="ignore"):
        centre, low, high = (float(np.log(p) - np.log1p(-p)) for p in (report["threshold"], zone[0], min(zone[1], 1.0)))
    lines += [
        "",
        f"Grey zone [{zone[0]:.3f}, {zone[1]:.3f}): {report['grey_zone_fraction']:.1%} of images fall in it; "
        + (f"accuracy outside it {outside['accuracy']:.3f}." if outside else "no image falls outside it."),
        f"In it, {above:.1%} of images at or above the threshold (called pneumonia) and {below:.1%} below (called normal); "
        f"its edges lie {centre - low:.2f} below and {high - centre:.2f} above the threshold on the logit scale.",
        "Sensitivity by subtype: "
        + ", ".join(f"{k} {v['sensitivity']:.3f} (n={v['n']})" for k, v in report["subtype_sensitivity"].items())
        + ".",
        f"Per patient ({report['patient']['n']} patients): accuracy {report['patient']['accuracy']:.3f}, "
        f"sensitivity {report['patient']['sensitivity']:.3f}, specificity {report['patient']['specificity']:.3f}.",
    ]
    if report.get("ood_flagged") is not None:
        lines.append(
            f"Out-of-distribution gate: {report['ood_flagged']} of {report['image']['n']} images flagged (the app hides "
            "their calls unless asked); the figures above include them."
        )
    if official:
        lines += [
            _targets_line("Must-reach bar", targets_met(report["image"], MUST_BAR)),
            _targets_line("Goal", targets_met(report["image"], GOAL)),
        ]
    if "test_evaluations_so_far" in report:
        lines.append(f"The test split has been evaluated {report['test_evaluations_so_far']} time(s) in this repository's log.")
    return "\n".join(lines) + "\n"


def evaluate_crop(
    model_path: Path,
    data_dir: Path,
    reports_dir: Path = DEFAULT_REPORTS_DIR,
    split: str = "test",
    settings=None,
) -> dict:
    """Does the automatic diaphragm crop help? Scores the split with and without it.

    Every image is decoded once (``DecodedImage``) and called whole (``Predictor.calls``); the
    diaphragm is looked for (``crop.find_diaphragm``) and where a crop is suggested the crop is
    called as the crop page does (``Predictor.call_on_crop``); images with no suggestion, and
    those whose suggestion the rescore rule refuses (``crop.check_rescore``, docs/crop_rule.md,
    as the page and ``crop`` refuse it), are scored uncropped in both columns. Same threshold
    and calibration, the gate on both.

    Writes ``crop_evaluation[_validation].{json,md}`` and returns the report.

    Raises:
        DataError: the data folder differs from the data the model was trained on (``model_split``).
    """
    from ..crop import DiaphragmSettings, RescoreRule, check_rescore, find_diaphragm

    settings = settings or DiaphragmSettings()
    predictor = Predictor.from_file(model_path, runtime="keras")
    metadata = predictor.metadata
    data_split = model_split(metadata, Path(data_dir))
    samples = data_split.test if split == "test" else data_split.validation
    whole_calls, crop_calls, kept, refused = [], [], [], 0
    for batch in decoded_batches([s.path for s in samples], predictor.batch_size):
        for image, call in zip(batch, predictor.calls(batch)):
            whole_calls.append(call)
            result = find_diaphragm(image.pixels, settings)
            height, width = image.pixels.shape[:2]
            allowed = result.found and result.box is not None
            if allowed and check_rescore(result.box, width, height, result, RescoreRule()) is not None:
                allowed, refused = False, refused + 1
            if allowed:
                kept.append((result.box[3] - result.box[1]) / image.pixels.shape[0])
                crop_calls.append(predictor.call_on_crop(image, result.box))
            else:
                kept.append(None)
                crop_calls.append(call)
    found = np.array([k is not None for k in kept], dtype=bool)
    labels = np.array([s.label for s in samples])
    before = np.array([call.probability for call in whole_calls])
    after = np.array([call.probability for call in crop_calls])
    threshold = predictor.threshold
    columns = {"without_crop": binary_metrics(labels, before, threshold), "with_auto_crop": binary_metrics(labels, after, threshold)}
    for column, probabilities in (("without_crop", before), ("with_auto_crop", after)):
        columns[column]["ece"] = expected_calibration_error(labels, probabilities)
    delta = after - before
    flagged = {column: _ood_flags(calls) for column, calls in (("without_crop", whole_calls), ("with_auto_crop", crop_calls))}
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_sha256": metadata.model_sha256,
        "split": split,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "threshold": threshold,
        "crop_settings": dataclasses.asdict(settings),
        "images": int(len(samples)),
        "crop_found_fraction": float((found.sum() + refused) / len(found)),
        "mean_height_kept": float(np.mean([k for k in kept if k is not None])) if found.any() else None,
        "rescore_rule": dataclasses.asdict(RescoreRule()),
        "crop_refused": int(refused),
        "crop_used_fraction": float(found.mean()),
        "metrics": columns,
        "mean_delta": {
            "normal": float(delta[labels == 0].mean()),
            "pneumonia": float(delta[labels == 1].mean()),
        },
        "calls_changed": int(((before >= threshold) != (after >= threshold)).sum()),
        "ood_flagged": {column: None if flags is None else int(flags.sum()) for column, flags in flagged.items()},
    }
    if split == "test":
        report["test_evaluations_so_far"] = record_test_use(Path(reports_dir), metadata.model_sha256, "test")
    report = json_safe(report)
    write_split_report(reports_dir, "crop_evaluation", split, report, crop_markdown(report))
    return report


def write_split_report(reports_dir: str | Path, name: str, split: str, report: dict, markdown: str) -> None:
    """Writes ``<name>.json`` and ``<name>.md`` (``<name>_<split>.*`` for a split other than test)."""
    suffix = "" if split == "test" else f"_{split}"
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / f"{name}{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (reports_dir / f"{name}{suffix}.md").write_text(markdown)


def crop_markdown(report: dict) -> str:
    """The with / without crop table and a one-line answer."""
    rows = [("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ROC AUC", "roc_auc"), ("ECE", "ece")]
    without, with_crop = report["metrics"]["without_crop"], report["metrics"]["with_auto_crop"]
    lines = [
        f"Model `{report['model_sha256'][:12]}`, {report['split']} split ({report['images']} images), threshold "
        f"{report['threshold']:.3f}. The automatic diaphragm crop was suggested on "
        f"{report['crop_found_fraction']:.1%} of images; {report.get('crop_refused', 0)} of these crops were refused "
        "by the rescore rule (docs/crop_rule.md), as the Crop page and `crop` refuse them; the crops used keep "
        f"{report['mean_height_kept']:.1%} of the height on average; the other images are scored uncropped in both "
        "columns.",
        "",
        "| metric | without crop | with automatic crop |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {without[key]:.3f} | {with_crop[key]:.3f} |" for name, key in rows]
    auc_change = with_crop["roc_auc"] - without["roc_auc"]
    verdict = "helps" if auc_change > 0.005 else "hurts" if auc_change < -0.005 else "makes no material difference to"
    lines += [
        "",
        f"Mean change of probability: normal {report['mean_delta']['normal']:+.3f}, pneumonia "
        f"{report['mean_delta']['pneumonia']:+.3f}; {report['calls_changed']} calls changed.",
    ]
    flagged = report.get("ood_flagged") or {}
    if flagged.get("without_crop") is not None:
        lines.append(
            f"Out-of-distribution gate: {flagged['without_crop']} images flagged whole, {flagged['with_auto_crop']} with "
            "the automatic crop; the figures include them."
        )
    lines += [
        f"Answer: the automatic crop {verdict} the ranking (AUC change {auc_change:+.4f}; ±0.005 counts as no difference).",
        "",
    ]
    return "\n".join(lines)


MARKER_COLUMNS = ("whole", "markers_masked", "auto_crop", "auto_crop_markers_masked")
_MARKER_COLUMN_NAMES = ("whole image", "markers masked", "automatic crop", "crop + markers masked")
# (name, column after, column before): what masking changes, alone and on top of the crop.
MARKER_COMPARISONS = (
    ("masking", "markers_masked", "whole"),
    ("masking_after_crop", "auto_crop_markers_masked", "auto_crop"),
    ("crop_and_masking", "auto_crop_markers_masked", "whole"),
)


def _changes(after: Sequence[Prediction], before: Sequence[Prediction], labels: np.ndarray, found: np.ndarray) -> dict:
    """How the calls moved from ``before`` to ``after``, read as the crop page reads one
    (``RescoreResult``): the threshold crossed, and the call changed (confident on both sides)."""
    from ..crop import RescoreResult

    results = [RescoreResult.from_calls(b, a) for a, b in zip(after, before)]
    delta = np.array([result.delta for result in results])

    def mean(rows: np.ndarray) -> float | None:
        return float(delta[rows].mean()) if rows.any() else None

    return {
        "mean_delta": {"normal": mean(labels == 0), "pneumonia": mean(labels == 1)},
        "mean_delta_with_markers": {"normal": mean(found & (labels == 0)), "pneumonia": mean(found & (labels == 1))},
        "max_abs_delta": float(np.abs(delta).max()) if len(delta) else None,
        "threshold_crossed": int(sum(result.label_changed for result in results)),
        "call_changed": int(sum(result.call_changed for result in results)),
        "readings": {
            f"{before_reading}->{after_reading}": count
            for (before_reading, after_reading), count in sorted(
                Counter((result.reading_before, result.reading_after) for result in results).items()
            )
            if before_reading != after_reading
        },
    }


def evaluate_markers(
    model_path: Path,
    data_dir: Path,
    reports_dir: Path = DEFAULT_REPORTS_DIR,
    split: str = "test",
    fullres_dir: Path | None = None,
    marker_settings=None,
    crop_settings=None,
) -> dict:
    """What painting out burned-in markers does to the figures, alone and with the automatic crop.

    Every image is decoded once and called whole (``Predictor.calls``); its markers are looked
    for once (``crop.find_markers``) and its diaphragm once (``crop.find_diaphragm``); then it
    is called as the crop page calls it with the markers masked (``Predictor.call_masked``),
    cropped (``call_on_crop``) and both. An image with no marker keeps its call in the masked
    columns, and one with no suggested crop in the crop columns. Same threshold, grey zone and
    gate throughout. A change of call is ``RescoreResult.call_changed``: confident on one side
    of the threshold before, confident on the other after (crossing it inside the grey zone is
    counted apart, as ``threshold_crossed``). With ``fullres_dir`` (the full-size training
    originals) the detector's find rate there is reported too: detection only, no figures.

    Writes ``marker_evaluation[_validation].{json,md}`` and returns the report.

    Raises:
        DataError: the data folder differs from the data the model was trained on (``model_split``).
    """
    from ..crop import DiaphragmSettings, MarkerSettings, find_diaphragm, find_markers

    marker_settings = marker_settings or MarkerSettings()
    crop_settings = crop_settings or DiaphragmSettings()
    predictor = Predictor.from_file(model_path, runtime="keras")
    metadata = predictor.metadata
    data_split = model_split(metadata, Path(data_dir))
    samples = data_split.test if split == "test" else data_split.validation
    calls = {column: [] for column in MARKER_COLUMNS}
    counts, areas, cropped = [], [], []
    for batch in decoded_batches([s.path for s in samples], predictor.batch_size):
        for image, whole in zip(batch, predictor.calls(batch)):
            markers = find_markers(image.pixels, marker_settings)
            diaphragm = find_diaphragm(image.pixels, crop_settings)
            box = diaphragm.box if diaphragm.found else None
            masked = predictor.call_masked(image, markers) if markers.count else whole
            crop = predictor.call_on_crop(image, box) if box is not None else whole
            if markers.count:
                both = predictor.call_masked(image, markers, box)
            else:
                both = crop
            for column, call in zip(MARKER_COLUMNS, (whole, masked, crop, both)):
                calls[column].append(call)
            counts.append(markers.count)
            areas.append(markers.area_fraction)
            cropped.append(box is not None)
    labels = np.array([s.label for s in samples])
    counts, areas = np.array(counts), np.array(areas)
    found = counts > 0
    threshold = predictor.threshold
    metrics = {}
    for column, column_calls in calls.items():
        probabilities = np.array([call.probability for call in column_calls])
        metrics[column] = binary_metrics(labels, probabilities, threshold)
        metrics[column]["ece"] = expected_calibration_error(labels, probabilities)
        metrics[column]["grey_zone_fraction"] = float(np.mean([call.grey_zone for call in column_calls]))
    fullres = None
    if fullres_dir is not None and Path(fullres_dir).is_dir():
        originals = sorted(Path(fullres_dir).rglob("*.jpeg"))
        found_there = [find_markers(DecodedImage.decode(path).pixels, marker_settings).count > 0 for path in originals]
        # The same films as the data set holds them (train/<class>/<name>, 224 px): what the squash does to markers.
        copies = [Path(data_dir) / "train" / path.parent.name / path.name for path in originals]
        found_on_copies = [
            find_markers(DecodedImage.decode(copy).pixels, marker_settings).count > 0
            for copy, found in zip(copies, found_there)
            if found and copy.is_file()
        ]
        fullres = {
            "folder": Path(fullres_dir).name,
            "images": len(originals),
            "found": int(sum(found_there)),
            "found_fraction": float(np.mean(found_there)) if originals else None,
            "copies_checked": len(found_on_copies),
            "found_on_their_224px_copies": int(sum(found_on_copies)),
        }
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_sha256": metadata.model_sha256,
        "split": split,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "threshold": threshold,
        "grey_zone": [predictor.grey_zone.low, predictor.grey_zone.high],
        "marker_settings": dataclasses.asdict(marker_settings),
        "crop_settings": dataclasses.asdict(crop_settings),
        "images": int(len(samples)),
        "markers": {
            "found_images": int(found.sum()),
            "found_fraction": float(found.mean()),
            "found_normal": int((found & (labels == 0)).sum()),
            "found_pneumonia": int((found & (labels == 1)).sum()),
            "normal": int((labels == 0).sum()),
            "pneumonia": int((labels == 1).sum()),
            "mean_count_where_found": float(counts[found].mean()) if found.any() else None,
            "mean_area_fraction_where_found": float(areas[found].mean()) if found.any() else None,
            "max_area_fraction": float(areas.max()) if len(areas) else None,
        },
        "crop_found_fraction": float(np.mean(cropped)),
        "metrics": metrics,
        "changes": {
            name: _changes(calls[after], calls[before], labels, found) for name, after, before in MARKER_COMPARISONS
        },
        "ood_flagged": {column: None if flags is None else int(flags.sum()) for column, flags in
                        ((column, _ood_flags(column_calls)) for column, column_calls in calls.items())},
        "fullres_detection": fullres,
        "command": f"python -m pneumo_model evaluate --crop markers{'' if split == 'test' else ' --split ' + split}",
    }
    if split == "test":
        report["test_evaluations_so_far"] = record_test_use(Path(reports_dir), metadata.model_sha256, "test")
    report = json_safe(report)
    suffix = "" if split == "test" else f"_{split}"
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / f"marker_evaluation{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (reports_dir / f"marker_evaluation{suffix}.md").write_text(marker_markdown(report))
    return report


def _auc_verdict(change: float) -> str:
    # The crop evaluation's rule (``crop_markdown``), kept for masking: ±0.005 of AUC is no difference.
    return "helps" if change > 0.005 else "hurts" if change < -0.005 else "makes no material difference to"


def marker_markdown(report: dict) -> str:
    """The four-column table and a one-line answer (its headline is copied into docs/results.md)."""
    markers, metrics, changes = report["markers"], report["metrics"], report["changes"]
    zone = report["grey_zone"]
    lines = [
        f"Model `{report['model_sha256'][:12]}`, {report['split']} split ({report['images']} images), threshold "
        f"{report['threshold']:.3f}, grey zone [{zone[0]:.3f}, {zone[1]:.3f}). Burned-in markers (`find_markers`) "
        f"were found on {markers['found_fraction']:.1%} of images ({markers['found_normal']} of {markers['normal']} "
        f"normal, {markers['found_pneumonia']} of {markers['pneumonia']} pneumonia)"
        + (
            f", {markers['mean_count_where_found']:.1f} per image and {markers['mean_area_fraction_where_found']:.2%} of "
            "its pixels painted out on average where found"
            if markers["found_images"]
            else ""
        )
        + f"; the automatic diaphragm crop was suggested on {report['crop_found_fraction']:.1%}. An image without a "
        "marker (or a crop) keeps its call in the masked (or cropped) columns.",
    ]
    fullres = report.get("fullres_detection")
    if fullres and fullres["images"]:
        lines.append(
            f"On the {fullres['images']} full-size originals of `{fullres['folder']}` (training images: detection only, no "
            f"figures) markers were found on {fullres['found']} ({fullres['found_fraction']:.0%})"
            + (
                f"; on the data set's 224 px copies of those {fullres['copies_checked']} films, on "
                f"{fullres['found_on_their_224px_copies']}: the squash to 224 px shrinks and blurs most markers out "
                "of the detector's reach, so in the figures below masking acts on few of them."
                if fullres.get("copies_checked")
                else "."
            )
        )
    lines += [
        "",
        "| metric | " + " | ".join(_MARKER_COLUMN_NAMES) + " |",
        "|---|" + "---|" * len(MARKER_COLUMNS),
    ]
    rows = (("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ROC AUC", "roc_auc"),
            ("ECE", "ece"), ("share in the grey zone", "grey_zone_fraction"))
    for name, key in rows:
        cells = ["n/a" if metrics[column][key] is None else f"{metrics[column][key]:.3f}" for column in MARKER_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    def moved(name: str, what: str) -> str:
        change = changes[name]
        with_markers = change["mean_delta_with_markers"]
        means = (
            f"mean change of probability on the images with markers: normal {_signed(with_markers['normal'])}, "
            f"pneumonia {_signed(with_markers['pneumonia'])}"
            if name != "crop_and_masking"
            else f"mean change of probability: normal {_signed(change['mean_delta']['normal'])}, pneumonia "
            f"{_signed(change['mean_delta']['pneumonia'])}"
        )
        return (
            f"{what}: {means}; the threshold crossed on {change['threshold_crossed']} images, the call changed "
            f"(confident on one side before, confident on the other after) on {change['call_changed']}."
        )

    lines += [
        "",
        moved("masking", "Masking alone"),
        moved("masking_after_crop", "Masking on top of the automatic crop"),
        moved("crop_and_masking", "Crop and masking against the whole image"),
    ]
    flagged = report.get("ood_flagged") or {}
    if flagged.get("whole") is not None:
        lines.append(
            "Out-of-distribution gate: "
            + ", ".join(f"{flagged[column]} flagged ({name})" for column, name in zip(MARKER_COLUMNS, _MARKER_COLUMN_NAMES))
            + "; the figures include them."
        )
    aucs = {column: metrics[column]["roc_auc"] for column in MARKER_COLUMNS}
    if None in aucs.values():
        answer = "Answer: no AUC (one class only), so nothing to say about the ranking."
    else:
        alone, after_crop = aucs["markers_masked"] - aucs["whole"], aucs["auto_crop_markers_masked"] - aucs["auto_crop"]
        answer = (
            f"Answer: masking the markers {_auc_verdict(alone)} the ranking (AUC change {alone:+.4f}), and on top of the "
            f"automatic crop it {_auc_verdict(after_crop)} it ({after_crop:+.4f}); ±0.005 counts as no difference."
        )
    lines += [f"{answer} Generated by `{report['command']}`.", ""]
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


# --- The out-of-distribution gate ------------------------------------------------------------


def _validation_xrays(validation: Sequence, count: int, seed: int) -> list[np.ndarray]:
    """``count`` of the validation samples (half of each class), grey uint8, for the corpus."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in (0, 1):
        paths = sorted(s.path for s in validation if s.label == label)
        chosen += [paths[i] for i in rng.choice(len(paths), count // 2, replace=False)]
    xrays = []
    for path in chosen:
        pixels = DecodedImage.decode(path).pixels
        xrays.append(pixels if pixels.dtype == np.uint8 else (pixels // 257).astype(np.uint8))
    return xrays


def _shown_path(path: Path) -> str:
    """The path relative to the repository when it lies inside it (reports should not name a home folder)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def evaluate_ood(model_path: Path, data_dir: Path, reports_dir: Path, corpus_xrays: int = 20, seed: int = 20261123) -> dict:
    """Measures the gate: pass rate of the test part's X-rays (for an "official" model the
    official test split; whole and with the automatic diaphragm crop) and detection rate per
    category of ``ood_corpus``, made from the model's validation X-rays. Every image goes
    through ``DecodedImage`` and ``Predictor.calls`` / ``call_on_crop`` / ``predict_source``, as in
    the app. Writes ``reports_dir/ood.json`` and returns the report. The test split is only
    scored, never used to fit.

    Raises:
        ModelFileError: no gate beside the model.
        DataError: the data folder differs from the data the model was trained on (``model_split``).
    """
    from ..crop import find_diaphragm
    from ..errors import InvalidImageError, ModelFileError
    from .ood_corpus import build_corpus

    predictor = Predictor.from_file(Path(model_path), runtime="keras")
    if predictor.gate is None:
        raise ModelFileError(f"No out-of-distribution gate beside {model_path}; run `python -m pneumo_model ood fit` first.")
    split = model_split(predictor.metadata, Path(data_dir))
    test = split.test
    whole, cropped, failed = [], [], []
    for batch in decoded_batches([s.path for s in test], predictor.batch_size):
        for image, call in zip(batch, predictor.calls(batch)):
            whole.append(call.ood_score)
            found = find_diaphragm(image.pixels)
            if found.found:
                cropped.append(predictor.call_on_crop(image, found.box).ood_score)
            if call.ood:
                failed.append({"file": test[len(whole) - 1].path.name, "ood_score": call.ood_score, "ood_grade": call.ood_grade})
    whole, cropped = np.array(whole), np.array(cropped)
    labels = np.array([s.label for s in test])

    corpus = build_corpus(_validation_xrays(split.validation, corpus_xrays, seed), seed)
    categories = {}
    for category, files in corpus.items():
        results = []
        for name, data in files:
            try:
                prediction = predictor.predict_source(data)
                results.append({"file": name, "outcome": "flagged" if prediction.ood else "passed", "ood_score": prediction.ood_score})
            except InvalidImageError as error:
                results.append({"file": name, "outcome": "rejected", "reason": str(error)})
        outcomes = [r["outcome"] for r in results]
        categories[category] = {
            "images": len(results),
            "flagged": outcomes.count("flagged"),
            "rejected_by_decoder": outcomes.count("rejected"),
            "passed": outcomes.count("passed"),
            "detection_rate": 1.0 - outcomes.count("passed") / len(results),
            "hidden_rate": 1.0 - sum(r["outcome"] != "rejected" and predictor.gate.grade(r["ood_score"]) != OUTSIDE
                                     for r in results) / len(results),
            "files": results,
        }
    report = {
        "model_sha256": predictor.metadata.model_sha256,
        "gate": predictor.gate.facts | {"threshold": predictor.gate.threshold, "detectors": list(predictor.gate.detectors)},
        "test_split": {
            "part": "official test split" if predictor.metadata.protocol == "official" else f"test part of the '{predictor.metadata.protocol}' protocol",
            "images": int(len(whole)),
            "pass_rate": float(np.mean(whole <= 1.0)),
            "pass_rate_normal": float(np.mean(whole[labels == 0] <= 1.0)),
            "pass_rate_pneumonia": float(np.mean(whole[labels == 1] <= 1.0)),
            "diaphragm_cropped_images": int(len(cropped)),
            "diaphragm_cropped_pass_rate": float(np.mean(cropped <= 1.0)) if len(cropped) else None,
            "ood_score_quantiles": {q: float(np.quantile(whole, float(q))) for q in ("0.5", "0.9", "0.99")},
            "flagged_files": failed,
            # The share per grade (docs/ood_grades.md): cut-offs fixed on validation and the corpus.
            "grades": grade_shares(predictor.gate, whole),
            "diaphragm_cropped_grades": grade_shares(predictor.gate, cropped) if len(cropped) else None,
        },
        "grades": None if predictor.gate.grades is None else {
            "unusual_from": predictor.gate.grades.unusual_from,
            "outside_from": predictor.gate.grades.outside_from,
            "rule": "docs/ood_grades.md",
        },
        "categories": categories,
        "targets": {"test_pass_rate": 0.98, "category_detection_rate": 0.95},
        "corpus": f"pneumo_model/lab/ood_corpus.py; X-ray based categories made from {corpus_xrays} validation X-rays, seed {seed}",
        "command": f"python -m pneumo_model ood evaluate --model {_shown_path(model_path)}",
    }
    report["targets_met"] = bool(
        report["test_split"]["pass_rate"] >= 0.98 and all(c["detection_rate"] >= 0.95 for c in categories.values())
    )
    record_test_use(Path(reports_dir), predictor.metadata.model_sha256, "test-ood")
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "ood.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    (reports_dir / "ood.md").write_text(ood_markdown(report))
    return report


def ood_markdown(report: dict) -> str:
    """The report's headline table (pasted in docs/results.md between the ``ood`` markers)."""
    test = report["test_split"]
    gate = report["gate"]
    lines = [
        f"Gate of model `{report['model_sha256'][:12]}`: validation X-rays passing "
        f"{gate['validation_pass_rate']:.1%} whole, {gate['validation_cropped_pass_rate']:.1%} with the lower part cropped.",
        "",
        "| images | n | passed | flagged | rejected by the decoder | target |",
        "|---|---|---|---|---|---|",
        f"| {test.get('part', 'official test split')} X-rays | {test['images']} | {test['pass_rate']:.1%} | "
        f"{1 - test['pass_rate']:.1%} | 0 | ≥ 98 % pass |",
    ]
    if test["diaphragm_cropped_pass_rate"] is not None:
        lines.append(
            f"| the same, diaphragm crop suggested by `find_diaphragm` | {test['diaphragm_cropped_images']} | "
            f"{test['diaphragm_cropped_pass_rate']:.1%} | {1 - test['diaphragm_cropped_pass_rate']:.1%} | 0 | pass |"
        )
    for name, category in report["categories"].items():
        n = category["images"]
        lines.append(
            f"| {name.replace('_', ' ')} | {n} | {category['passed'] / n:.1%} | {category['flagged'] / n:.1%} | "
            f"{category['rejected_by_decoder']} | ≥ 95 % flagged or rejected |"
        )
    rejected = sum(category["rejected_by_decoder"] for category in report["categories"].values())
    if rejected:
        lines += ["", f"{rejected} file(s) were refused by the decoder (with a reason) and so never scored; they count as detected."]
    if test.get("grades") is not None and report.get("grades") is not None:
        cuts = report["grades"]
        lines += [
            "",
            f"Graded (docs/ood_grades.md; cut-offs fixed on validation and the corpus: unusual above "
            f"{cuts['unusual_from']:.3f}, outside from {cuts['outside_from']:.2f}):",
            "",
            "| images | n | in distribution | unusual: read with care (call shown) | outside (call hidden) |",
            "|---|---|---|---|---|",
        ]
        rows = [(f"{test.get('part', 'official test split')} X-rays", test["grades"])]
        if test.get("diaphragm_cropped_grades") is not None:
            rows.append(("the same, diaphragm crop", test["diaphragm_cropped_grades"]))
        for name, shares in rows:
            lines.append(
                f"| {name} | {shares['images']} | {shares['in_distribution']:.1%} | {shares['unusual']:.1%} | {shares['outside']:.1%} |"
            )
        hidden = ", ".join(
            f"{name.replace('_', ' ')} {category['hidden_rate']:.0%}"
            for name, category in report["categories"].items() if "hidden_rate" in category
        )
        lines += ["", f"Corpus images hidden (outside, or refused by the decoder): {hidden}."]
    verdict = "All targets met." if report["targets_met"] else "Not every target is met."
    lines += ["", f"{verdict} Generated by `{report['command']}`.", ""]
    return "\n".join(lines)
