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
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..artifacts import REPO_ROOT
from ..data import model_split
from .metrics import binary_metrics, bootstrap_intervals, calibration_bins, expected_calibration_error
from ..pipeline import DecodedImage
from .plots import confusion_figure, gallery_figure, reliability_figure, roc_figure
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
    predictor = Predictor.from_file(model_path)
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
    """The headline table of a report, as Markdown (copied into the README between markers)."""
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
    called as the crop page does (``Predictor.call_on_crop``); images with no suggestion are
    scored uncropped in both columns. Same threshold and calibration, the gate on both.

    Writes ``crop_evaluation[_validation].{json,md}`` and returns the report.

    Raises:
        DataError: the data folder differs from the data the model was trained on (``model_split``).
    """
    from ..crop import DiaphragmSettings, find_diaphragm

    settings = settings or DiaphragmSettings()
    predictor = Predictor.from_file(model_path)
    metadata = predictor.metadata
    data_split = model_split(metadata, Path(data_dir))
    samples = data_split.test if split == "test" else data_split.validation
    whole_calls, crop_calls, kept = [], [], []
    for batch in decoded_batches([s.path for s in samples], predictor.batch_size):
        for image, call in zip(batch, predictor.calls(batch)):
            whole_calls.append(call)
            result = find_diaphragm(image.pixels, settings)
            if result.found and result.box is not None:
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
        "crop_found_fraction": float(found.mean()),
        "mean_height_kept": float(np.mean([k for k in kept if k is not None])) if found.any() else None,
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
    suffix = "" if split == "test" else f"_{split}"
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / f"crop_evaluation{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (reports_dir / f"crop_evaluation{suffix}.md").write_text(crop_markdown(report))
    return report


def crop_markdown(report: dict) -> str:
    """The with / without crop table and a one-line answer."""
    rows = [("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ROC AUC", "roc_auc"), ("ECE", "ece")]
    without, with_crop = report["metrics"]["without_crop"], report["metrics"]["with_auto_crop"]
    lines = [
        f"Model `{report['model_sha256'][:12]}`, {report['split']} split ({report['images']} images), threshold "
        f"{report['threshold']:.3f}. The automatic diaphragm crop was suggested on "
        f"{report['crop_found_fraction']:.1%} of images (keeping {report['mean_height_kept']:.1%} of the height on "
        "average); the others are scored uncropped in both columns.",
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

    predictor = Predictor.from_file(Path(model_path))
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
                failed.append({"file": test[len(whole) - 1].path.name, "ood_score": call.ood_score})
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
    """The report's headline table (pasted in the README between the ``ood`` markers)."""
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
    verdict = "All targets met." if report["targets_met"] else "Not every target is met."
    lines += ["", f"{verdict} Generated by `{report['command']}`.", ""]
    return "\n".join(lines)
