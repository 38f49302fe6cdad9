"""Training the subtype pattern's network: bacterial-like or viral-like, for pneumonia films only.

The rules (data, candidates, calibration, threshold, undetermined band) were written down in
docs/subtype_rule.md before any candidate was trained. This module applies them: it trains on the
pneumonia films of the shipped model's own train part (``data.make_split``, same seed), fixes the
temperature, the threshold (Youden's J) and the undetermined band on that split's validation
pneumonia films, and writes a second model with its own metadata beside the shipped one
(``bundle.subtype_model_path``), so the shipped model, its SHA and its side files stay as they are.

The written metadata is a ``ModelMetadata`` whose ``threshold`` is the calibrated probability of
the viral pattern at or above which a film leans viral, and whose ``grey_zone`` is the
undetermined band (``subtype.SubtypeModel`` reads them so).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from ..artifacts import ModelMetadata, load_model, save_model
from ..calibration import fit_temperature, sigmoid
from ..data import Sample, load_model_inputs, make_split
from ..errors import ConfigError
from ..prediction import Predictor
from ..subtype import SUBTYPE_TASK, VIRAL
from .metrics import binary_metrics, expected_calibration_error
from .models import get_architecture
from .training import TrainConfig, _config_dict, _fit_one, _print_progress, provisional_metadata

# docs/subtype_rule.md, rule 3: at most this share of validation pneumonia films is undetermined.
MAX_UNDETERMINED_SHARE = 0.25


def subtype_samples(samples: list[Sample]) -> tuple[list[Sample], np.ndarray]:
    """The pneumonia films among ``samples`` and their labels (1: viral, 0: bacterial)."""
    kept = [sample for sample in samples if sample.label == 1]
    return kept, np.array([int(sample.subtype == VIRAL) for sample in kept], dtype=np.int64)


def youden_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Rule 2: the threshold on P(viral) maximising viral recall + bacterial recall − 1.

    Candidates are the midpoints between neighbouring distinct probabilities (and one beyond each
    end); ties go to the candidate nearest 0.5.

    Raises:
        ConfigError: labels of only one class.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        raise ConfigError("The threshold needs both viral and bacterial films.")
    values = np.unique(probabilities)
    candidates = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1) / 2]])
    viral = probabilities[labels == 1]
    bacterial = probabilities[labels == 0]
    # (k,) recalls at each candidate: viral at or above, bacterial below.
    viral_recall = (viral[None, :] >= candidates[:, None]).mean(axis=1)
    bacterial_recall = (bacterial[None, :] < candidates[:, None]).mean(axis=1)
    j = viral_recall + bacterial_recall - 1.0
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def undetermined_band(
    logits: np.ndarray, temperature: float, threshold: float, max_share: float = MAX_UNDETERMINED_SHARE
) -> tuple[float, float]:
    """Rule 3: the symmetric band in calibrated logit units holding at most ``max_share`` of the films.

    Returns:
        ``(low, high)`` in calibrated probability: a film with ``low <= p < high`` is undetermined.
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    z_t = float(np.log(threshold / (1.0 - threshold)))
    distances = np.sort(np.abs(z - z_t))
    # Films strictly inside: at most k - 1; with the film at the lower edge, which ``[low, high)``
    # counts inside too, at most k = floor(max_share * n).
    k = int(np.floor(max_share * len(distances)))
    d = float(distances[k - 1]) if k >= 1 else 0.0
    return float(sigmoid(np.array([z_t - d]), 1.0)[0]), float(sigmoid(np.array([z_t + d]), 1.0)[0])


def pattern_figures(labels: np.ndarray, probabilities: np.ndarray, threshold: float, band: tuple[float, float]) -> dict:
    """The figures of the three-way pattern (viral = 1): the share undetermined, the figures
    outside the band, and the recalls with undetermined films counted as misses."""
    low, high = band
    inside = (probabilities >= low) & (probabilities < high)
    outside = ~inside
    viral_call = probabilities >= threshold
    viral, bacterial = labels == 1, labels == 0

    def share(mask: np.ndarray, of: np.ndarray) -> float:
        return float(mask[of].mean()) if of.any() else float("nan")

    return {
        "undetermined_fraction": float(inside.mean()),
        "undetermined_fraction_viral": share(inside, viral),
        "undetermined_fraction_bacterial": share(inside, bacterial),
        "accuracy_outside_band": share(viral_call == viral, outside),
        "viral_recall_outside_band": share(viral_call, outside & viral),
        "bacterial_recall_outside_band": share(~viral_call, outside & bacterial),
        "viral_recall_undetermined_as_miss": share(viral_call & outside, viral),
        "bacterial_recall_undetermined_as_miss": share(~viral_call & outside, bacterial),
    }


@dataclass(frozen=True)
class SubtypeFit:
    """The validation figures of a trained subtype network, under rules 2 and 3."""

    temperature: float
    threshold: float
    band: tuple[float, float]
    metrics: dict


def calibrate(logits: np.ndarray, labels: np.ndarray) -> SubtypeFit:
    """Rules 2 and 3 applied to validation logits (viral = 1)."""
    temperature = fit_temperature(logits, labels)
    probabilities = sigmoid(logits, temperature)
    threshold = youden_threshold(probabilities, labels)
    low, high = undetermined_band(logits, temperature, threshold)
    metrics = binary_metrics(labels, probabilities, threshold)
    metrics["ece"] = expected_calibration_error(labels, probabilities)
    metrics.update(pattern_figures(labels, probabilities, threshold, (low, high)))
    return SubtypeFit(temperature, threshold, (low, high), metrics)


def train_subtype(
    config: TrainConfig,
    data_dir: Path,
    model_path: Path,
    init_from: Path | None = None,
    command: str = "",
    verbose: int = 2,
) -> ModelMetadata:
    """Trains one candidate, applies rules 2 and 3 on validation, writes the model, metadata and ONNX graph.

    Args:
        config: the run's settings (``imbalance``, ``seed``, ``val_fraction`` as the shipped model's
            so the split is the same; the class-conditional aspect must be off).
        data_dir: the chest_xray_224 folder.
        model_path: where to write the ``.keras`` file.
        init_from: a ``.keras`` model of the same architecture and input size whose weights (all
            but the last dense unit) start the network (candidate B); None starts from random weights.
        command: the command line, stored in the metadata.

    Returns:
        The written metadata (``train_config["task"] == "subtype"``).

    Raises:
        ConfigError: the class-conditional aspect is on, or ``init_from`` has another layout.
    """
    if config.augmentation.class_aspect != 1.0:
        raise ConfigError("The subtype network trains without the class-conditional aspect change (--class-aspect 1).")
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    split = make_split(Path(data_dir), config.protocol, config.val_fraction, config.seed)
    train_samples, y_train = subtype_samples(split.train)
    val_samples, y_val = subtype_samples(split.validation)
    x_train = load_model_inputs(train_samples, config.input_size, _print_progress)
    x_val = load_model_inputs(val_samples, config.input_size, _print_progress)
    print(
        f"subtype: train {len(y_train)} pneumonia films ({y_train.sum()} viral), "
        f"validation {len(y_val)} ({y_val.sum()} viral)",
        file=sys.stderr,
        flush=True,
    )
    architecture = get_architecture(config.architecture)
    network = architecture.build(config.input_size)
    if init_from is not None:
        source, source_metadata = load_model(Path(init_from))
        if source_metadata.architecture != config.architecture or source_metadata.input_size != config.input_size:
            raise ConfigError(
                f"--init-from {init_from} is a {source_metadata.architecture} at {source_metadata.input_size} px; "
                f"this run trains a {config.architecture} at {config.input_size} px."
            )
        for layer in network.layers:
            if layer.name != "logit" and layer.weights:
                layer.set_weights(source.get_layer(layer.name).get_weights())
    val_data = (x_val.astype(np.float32) / 255.0, y_val.reshape(-1, 1).astype(np.float32))
    network, history = _fit_one(network, x_train, y_train, val_data, config, verbose)
    val_auc = history["val_auc"]

    provisional = provisional_metadata(config, split.fingerprint, architecture.gradcam_layer)
    # Rules 2 and 3 on float32 inputs through the pipeline, as everything that reports scores.
    from .evaluation import call_files

    predictions, _ = call_files(Predictor(network, provisional), [sample.path for sample in val_samples])
    logits = np.array([prediction.logit for prediction in predictions])
    fit = calibrate(logits, y_val)
    validation = dict(fit.metrics)
    validation["films"] = len(y_val)
    validation["viral_films"] = int(y_val.sum())
    validation["epochs_trained"] = len(val_auc)
    validation["best_epoch"] = int(np.argmax(val_auc)) + 1
    validation["val_auc_history"] = [round(float(v), 5) for v in val_auc]
    train_config = _config_dict(config)
    train_config["task"] = SUBTYPE_TASK
    train_config["init_from"] = None if init_from is None else Path(init_from).name
    train_config["init_from_sha256"] = None if init_from is None else source_metadata.model_sha256
    metadata = dataclasses.replace(
        provisional,
        temperature=fit.temperature,
        threshold=fit.threshold,
        grey_zone=fit.band,
        grey_zone_rule={"rule": "docs/subtype_rule.md rule 3", "max_share": MAX_UNDETERMINED_SHARE},
        training_seconds=round(time.monotonic() - started, 1),
        train_config=train_config,
        validation=validation,
        created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        command=command,
    )
    saved = save_model(network, metadata, Path(model_path))
    from .onnx_export import export_onnx

    export_onnx(Path(model_path), x_val[:16].astype(np.float32) / 255.0)
    return saved
