"""Comparisons of training variants, each trained and scored the same way.

Two studies: the architecture families (``compare``), ranked by validation AUC with test
figures reported next to them, never used to choose; and the class-imbalance method
(``imbalance_study``), which touches validation only because its result is a choice.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import model_split
from .evaluation import call_files, json_safe, record_test_use
from .metrics import binary_metrics
from .models import ARCHITECTURES
from ..prediction import Predictor, forward_throughput
from .training import IMBALANCE_METHODS, TrainConfig, train

SUMMARY_KEYS = ("accuracy", "sensitivity", "specificity", "roc_auc")


def _run_variants(
    variants: dict[str, TrainConfig],
    data_dir: Path,
    reports_dir: Path,
    work_dir: Path,
    score_test: bool,
    command: str,
) -> list[dict]:
    """Trains every variant; returns rows ranked by validation AUC (best first). With
    ``score_test``, each model's test part (``model_split``) is scored as the app scores it."""
    rows = []
    for name, config in variants.items():
        model_path = Path(work_dir) / f"{name}.keras"
        metadata = train(config, Path(data_dir), model_path, command=command, progress=None, verbose=0)
        predictor = Predictor.from_file(model_path, runtime="keras")
        row = {
            "variant": name,
            "architecture": config.architecture,
            "imbalance": config.imbalance,
            "description": ARCHITECTURES[config.architecture].description,
            "parameters": int(predictor.model.count_params()),
            "training_seconds": metadata.training_seconds,
            "epochs_trained": metadata.validation["epochs_trained"],
            "forward_images_per_s": round(forward_throughput(predictor), 1),
            "threshold": metadata.threshold,
            "validation": {k: metadata.validation[k] for k in SUMMARY_KEYS + ("ece",)},
        }
        if score_test:
            test_samples = model_split(metadata, Path(data_dir)).test
            calls, _ = call_files(predictor, [s.path for s in test_samples])
            labels = np.array([s.label for s in test_samples])
            test = binary_metrics(labels, np.array([call.probability for call in calls]), predictor.threshold)
            record_test_use(Path(reports_dir), metadata.model_sha256, "test")
            row["test"] = {k: test[k] for k in SUMMARY_KEYS}
        rows.append(row)
        print(json.dumps(json_safe(row)), flush=True)
    rows.sort(key=lambda row: -np.nan_to_num(row["validation"]["roc_auc"], nan=-1.0))
    return rows


def _write(report: dict, reports_dir: Path, stem: str, markdown: str) -> None:
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / f"{stem}.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    (reports_dir / f"{stem}.md").write_text(markdown)


def compare(
    data_dir: Path,
    reports_dir: Path,
    work_dir: Path,
    input_size: int = 96,
    time_budget_s: float = 600.0,
    epochs: int = 30,
    architectures: Sequence[str] | None = None,
    base_config: TrainConfig | None = None,
    command: str = "",
) -> list[dict]:
    """Trains each architecture on the official protocol, scores validation and test, writes the tables.

    Args:
        data_dir: the chest_xray_224 folder.
        reports_dir: where ``model_comparison.{md,json}`` go.
        work_dir: where the compared models are written (not shipped).
        input_size: input side for every model (smaller than production to fit the budget).
        time_budget_s: training time limit per architecture.
        epochs: most epochs per architecture.
        architectures: names to compare (default: all registered).
        base_config: other training settings shared by all (default: ``TrainConfig()``).
        command: the command line, stored in the report.

    Returns:
        One row per architecture, ranked by validation AUC.
    """
    base = base_config or TrainConfig()
    variants = {
        name: dataclasses.replace(
            base, architecture=name, input_size=input_size, epochs=epochs, time_budget_s=time_budget_s,
            patience=min(base.patience, 8),
        )
        for name in (architectures or ARCHITECTURES)
    }
    rows = _run_variants(variants, data_dir, reports_dir, work_dir, score_test=True, command=command)
    report = {
        "input_size": input_size,
        "time_budget_s_per_model": time_budget_s,
        "max_epochs": epochs,
        "ranked_by": "validation ROC AUC (test figures are reported, not used to choose)",
        "command": command,
        "rows": rows,
    }
    lines = [
        "# Model comparison",
        "",
        f"Input {input_size} px, at most {epochs} epochs and {time_budget_s:.0f} s of training per model, official "
        "protocol, threshold set on validation for the same target sensitivity. Ranked by validation AUC; "
        "test figures (official test split) are reported only.",
        "",
        "| rank | architecture | params | train s | fwd img/s | val AUC | test acc | test sens | test spec | test AUC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, row in enumerate(rows, start=1):
        v, t = row["validation"], row["test"]
        lines.append(
            f"| {rank} | {row['architecture']} | {row['parameters']:,} | {row['training_seconds']:.0f} | "
            f"{row['forward_images_per_s']:.0f} | {v['roc_auc']:.3f} | {t['accuracy']:.3f} | {t['sensitivity']:.3f} | "
            f"{t['specificity']:.3f} | {t['roc_auc']:.3f} |"
        )
    lines += ["", f"Command: `{command}`", ""]
    _write(report, reports_dir, "model_comparison", "\n".join(lines))
    return rows


def imbalance_study(
    data_dir: Path,
    reports_dir: Path,
    work_dir: Path,
    base_config: TrainConfig,
    methods: Sequence[str] = IMBALANCE_METHODS,
    command: str = "",
) -> list[dict]:
    """Trains ``base_config`` once per class-imbalance method and ranks them on validation only.

    Writes ``imbalance_study.{md,json}``; the first row is the choice.
    """
    variants = {method: dataclasses.replace(base_config, imbalance=method) for method in methods}
    rows = _run_variants(variants, data_dir, reports_dir, work_dir, score_test=False, command=command)
    report = {"base_config": dataclasses.asdict(base_config), "ranked_by": "validation ROC AUC", "command": command, "rows": rows}
    lines = [
        "# Class-imbalance method, chosen on validation",
        "",
        f"{base_config.architecture} at {base_config.input_size} px, at most {base_config.epochs} epochs, official "
        "protocol; only the validation split is scored. Sensitivity and specificity at the threshold set for "
        f"validation sensitivity {base_config.operating.target_sensitivity}.",
        "",
        "| rank | method | val AUC | val sens | val spec | val ECE | epochs | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank, row in enumerate(rows, start=1):
        v = row["validation"]
        lines.append(
            f"| {rank} | {row['imbalance']} | {v['roc_auc']:.4f} | {v['sensitivity']:.3f} | {v['specificity']:.3f} | "
            f"{v['ece']:.3f} | {row['epochs_trained']} | {row['training_seconds']:.0f} |"
        )
    lines += ["", f"Choice: **{rows[0]['imbalance']}**. Command: `{command}`", ""]
    _write(report, reports_dir, "imbalance_study", "\n".join(lines))
    return rows
