"""Model comparison: every registered architecture trained and scored the same way.

Models are ranked by validation AUC; test figures are reported next to them, never used to choose.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import load_model_inputs
from .evaluation import record_test_use, json_safe
from .metrics import binary_metrics
from .models import ARCHITECTURES
from .prediction import Predictor
from .training import TrainConfig, make_split, train


def forward_throughput(predictor: Predictor, n_images: int = 512, repeats: int = 3) -> float:
    """Batched forward passes per second on random inputs, warm-up excluded (best of ``repeats``)."""
    size = predictor.input_size
    images = np.random.default_rng(0).random((n_images, size, size, 1), dtype=np.float32)
    predictor.logits(images[: predictor.batch_size])  # warm-up: trace and allocate
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.logits(images)
        best = min(best, time.perf_counter() - start)
    return float(n_images / best)


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
    names = list(architectures or ARCHITECTURES)
    base = base_config or TrainConfig()
    split = make_split(Path(data_dir), "official", base.val_fraction, base.seed)
    test_images = load_model_inputs(split.test, input_size)
    test_labels = np.array([s.label for s in split.test])
    rows = []
    for name in names:
        config = dataclasses.replace(
            base, architecture=name, input_size=input_size, epochs=epochs, time_budget_s=time_budget_s,
            patience=min(base.patience, 8),
        )
        model_path = Path(work_dir) / f"{name}.keras"
        metadata = train(config, Path(data_dir), model_path, command=command, verbose=0)
        predictor = Predictor.from_file(model_path)
        test = binary_metrics(test_labels, predictor.probabilities(test_images), metadata.threshold)
        record_test_use(Path(reports_dir), metadata.model_sha256, "test")
        rows.append(
            {
                "architecture": name,
                "description": ARCHITECTURES[name].description,
                "parameters": int(predictor.model.count_params()),
                "training_seconds": metadata.training_seconds,
                "epochs_trained": metadata.validation["epochs_trained"],
                "forward_images_per_s": round(forward_throughput(predictor), 1),
                "threshold": metadata.threshold,
                "validation": {k: metadata.validation[k] for k in ("accuracy", "sensitivity", "specificity", "roc_auc")},
                "test": {k: test[k] for k in ("accuracy", "sensitivity", "specificity", "roc_auc")},
            }
        )
        print(json.dumps(json_safe(rows[-1])), flush=True)
    rows.sort(key=lambda row: -row["validation"]["roc_auc"] if np.isfinite(row["validation"]["roc_auc"]) else np.inf)
    report = {
        "input_size": input_size,
        "time_budget_s_per_model": time_budget_s,
        "max_epochs": epochs,
        "ranked_by": "validation ROC AUC (test figures are reported, not used to choose)",
        "command": command,
        "rows": rows,
    }
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "model_comparison.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    (reports_dir / "model_comparison.md").write_text(comparison_markdown(report))
    return rows


def comparison_markdown(report: dict) -> str:
    lines = [
        "# Model comparison",
        "",
        f"Input {report['input_size']} px, at most {report['max_epochs']} epochs and "
        f"{report['time_budget_s_per_model']:.0f} s of training per model, official protocol, threshold set on "
        "validation for the same target sensitivity. Ranked by validation AUC; test figures are reported only.",
        "",
        "| rank | architecture | params | train s | fwd img/s | val AUC | test acc | test sens | test spec | test AUC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, row in enumerate(report["rows"], start=1):
        v, t = row["validation"], row["test"]
        lines.append(
            f"| {rank} | {row['architecture']} | {row['parameters']:,} | {row['training_seconds']:.0f} | "
            f"{row['forward_images_per_s']:.0f} | {v['roc_auc']:.3f} | {t['accuracy']:.3f} | {t['sensitivity']:.3f} | "
            f"{t['specificity']:.3f} | {t['roc_auc']:.3f} |"
        )
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)
