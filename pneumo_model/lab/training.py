"""Training: patient-grouped split (``data.make_split``), in-memory data, augmentation, early stopping,
calibration on validation, and the grey zone by its rule (``grey_zone``, docs/grey_zone_rule.md).

Training holds its images as 8-bit model inputs (``data.load_model_inputs``), for memory; that
storage is for training only. Everything that reports or shows a probability scores float32
inputs through ``DecodedImage`` and ``Predictor``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from ..artifacts import ModelMetadata, save_model
from .augmentation import AugmentConfig, augment_batch
from ..calibration import OperatingPointConfig, fit_temperature, sigmoid, threshold_for_sensitivity
from ..data import DEFAULT_VAL_FRACTION, load_model_inputs, make_split
from ..errors import ConfigError
from .grey_zone import GreyZoneRule, measure, metadata_with_band
from .metrics import binary_metrics, expected_calibration_error
from .models import average_logits, get_architecture, member_layer_name
from ..prediction import Predictor

PROTOCOLS = ("official", "pooled")
IMBALANCE_METHODS = ("class_weight", "oversample", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run.

    Attributes:
        architecture: registry name of the network.
        input_size: side of the square input.
        epochs: most epochs to train.
        batch_size: images per step.
        learning_rate: peak learning rate (cosine decay after one warm-up epoch).
        weight_decay: AdamW weight decay.
        label_smoothing: binary label smoothing.
        imbalance: "class_weight", "oversample" or "none". The default is the choice of the
            validation study in ``reports/imbalance_study.md``: with the threshold set for a
            validation sensitivity anyway, plain training ranked first and was best calibrated.
        patience: epochs without a better validation AUC before stopping.
        val_fraction: share of official train (by patient) held out for validation.
        protocol: "official" or "pooled" (70/15/15 of everything, never scored on official test).
        seed: seed of the split, the weights and the augmentation (member k of an ensemble
            uses ``seed + k`` for its weights and augmentation; the split is the same for all).
        members: networks trained one after another on the same split and averaged (mean
            logit) into one flat graph, a deep ensemble; 1 is a single network. Epochs, patience
            and the time budget apply to each member.
        time_budget_s: stop after the epoch that passes this many seconds (None: no limit).
        augment: whether to augment.
        augmentation: augmentation ranges.
        operating: the threshold's target sensitivity (its ``zone_*`` targets belonged to the
            grey zone's older rule and are no longer used: the grey zone follows ``GreyZoneRule``).
    """

    architecture: str = "pneumonet"
    input_size: int = 128
    epochs: int = 45
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    imbalance: str = "none"
    patience: int = 15
    val_fraction: float = DEFAULT_VAL_FRACTION
    protocol: str = "official"
    seed: int = 20261123
    members: int = 1
    time_budget_s: float | None = None
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    operating: OperatingPointConfig = field(default_factory=OperatingPointConfig)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"Unknown protocol '{self.protocol}'; choose one of {PROTOCOLS}.")
        if self.imbalance not in IMBALANCE_METHODS:
            raise ConfigError(f"Unknown imbalance method '{self.imbalance}'; choose one of {IMBALANCE_METHODS}.")
        if self.members < 1:
            raise ConfigError(f"An ensemble needs at least one member; got members={self.members}.")
        if not self.augmentation.class_aspect > 0:
            raise ConfigError(f"class_aspect is a ratio and must be positive; got {self.augmentation.class_aspect}.")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must lie in (0, 0.5); got {self.val_fraction}.")
        get_architecture(self.architecture)


def _dataset(images: np.ndarray, labels: np.ndarray, config: TrainConfig) -> tf.data.Dataset:
    """Batches of (float32 images in [0, 1], labels), shuffled, augmented, oversampled if asked."""

    def by_class(label: int) -> tf.data.Dataset:
        rows = np.flatnonzero(labels == label)
        ds = tf.data.Dataset.from_tensor_slices((images[rows], labels[rows].astype(np.float32)))
        return ds.shuffle(len(rows), seed=config.seed + label, reshuffle_each_iteration=True).repeat()

    if config.imbalance == "oversample":
        ds = tf.data.Dataset.sample_from_datasets([by_class(0), by_class(1)], weights=[0.5, 0.5], seed=config.seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
        ds = ds.shuffle(len(labels), seed=config.seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(config.batch_size, drop_remainder=True)

    def prepare(batch_images, batch_labels):
        batch = tf.cast(batch_images, tf.float32) / 255.0  # (batch, size, size, 1)
        if config.augment:
            batch = augment_batch(batch, config.augmentation, batch_labels)
        return batch, tf.reshape(batch_labels, (-1, 1))

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class _TimeBudget(keras.callbacks.Callback):
    def __init__(self, budget_s: float | None):
        super().__init__()
        self.budget_s = budget_s
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if self.budget_s is not None and time.monotonic() - self.start > self.budget_s:
            print(f"Time budget of {self.budget_s:.0f} s reached after epoch {epoch + 1}; stopping.", flush=True)
            self.model.stop_training = True


def _print_progress(done: int, total: int) -> None:
    if done == total or done % 500 == 0:
        print(f"  decoded {done}/{total} images", file=sys.stderr, flush=True)


def _fit_one(model, x_train, y_train, val_data, config: TrainConfig, verbose: int):
    """Compiles and fits one network; returns it (best validation-AUC weights) and its history."""
    steps_per_epoch = max(1, len(y_train) // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * 0.1,
        decay_steps=steps_per_epoch * max(1, config.epochs - 1),
        warmup_target=config.learning_rate,
        warmup_steps=steps_per_epoch,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay),
        loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.AUC(from_logits=True, name="auc")],
    )
    class_weight = None
    if config.imbalance == "class_weight":
        counts = np.bincount(y_train, minlength=2)
        class_weight = {label: float(len(y_train) / (2 * counts[label])) for label in (0, 1)}
    history = model.fit(
        _dataset(x_train, y_train, config),
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=val_data,
        class_weight=class_weight,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_auc", mode="max", patience=config.patience, restore_best_weights=True
            ),
            _TimeBudget(config.time_budget_s),
        ],
        verbose=verbose,
    )
    return model, history.history


def train(
    config: TrainConfig,
    data_dir: Path,
    model_path: Path,
    command: str = "",
    progress: Callable[[int, int], None] | None = _print_progress,
    verbose: int = 2,
    grey_zone_rule: GreyZoneRule = GreyZoneRule(),
) -> ModelMetadata:
    """Trains, calibrates on validation, and writes the model and its metadata.

    Args:
        config: the run's settings.
        data_dir: the chest_xray_224 folder.
        model_path: where to write the ``.keras`` file (metadata goes beside it as ``.json``).
        command: the command line, stored in the metadata.
        progress: called as images are decoded.
        verbose: Keras fit verbosity.
        grey_zone_rule: the grey zone's rule, applied after calibration to the validation files
            scored through the pipeline (as ``python -m pneumo_model zone`` does for a saved model).

    Returns:
        The written metadata.
    """
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    split = make_split(Path(data_dir), config.protocol, config.val_fraction, config.seed)
    x_train = load_model_inputs(split.train, config.input_size, progress)
    x_val = load_model_inputs(split.validation, config.input_size, progress)
    y_train = np.array([s.label for s in split.train])
    y_val = np.array([s.label for s in split.validation])
    print(
        f"train {len(y_train)} images ({y_train.sum()} pneumonia), validation {len(y_val)} ({y_val.sum()} pneumonia)",
        file=sys.stderr,
        flush=True,
    )

    architecture = get_architecture(config.architecture)
    val_data = (x_val.astype(np.float32) / 255.0, y_val.reshape(-1, 1).astype(np.float32))
    networks, histories = [], []
    for member in range(config.members):
        if config.members > 1:
            print(f"member {member + 1} of {config.members}", file=sys.stderr, flush=True)
        member_config = dataclasses.replace(config, seed=config.seed + member)
        if member:  # the first member draws from the run's seed, exactly as a single network does
            keras.utils.set_random_seed(member_config.seed)
        network, history = _fit_one(architecture.build(config.input_size), x_train, y_train, val_data, member_config, verbose)
        networks.append(network)
        histories.append(history)
    model = networks[0] if len(networks) == 1 else average_logits(networks)
    val_auc = histories[0]["val_auc"]
    best_epoch = int(np.argmax(val_auc)) + 1
    gradcam_layer = architecture.gradcam_layer
    if len(networks) > 1 and gradcam_layer is not None:
        gradcam_layer = tuple(member_layer_name(gradcam_layer, k) for k in range(len(networks)))

    # Calibration, threshold and grey zone: validation only.
    provisional = provisional_metadata(config, split.fingerprint, gradcam_layer)
    val_logits = Predictor(model, provisional).logits(x_val)
    temperature = fit_temperature(val_logits, y_val)
    val_probabilities = sigmoid(val_logits, temperature)
    threshold = threshold_for_sensitivity(val_probabilities, y_val, config.operating.target_sensitivity)
    # The grey zone on float32 inputs through the pipeline, as `zone` measures a saved model, so
    # that both give the same band for the same weights; so is its validation share.
    zone = measure(Predictor(model, provisional), [s.path for s in split.validation], temperature, threshold, grey_zone_rule)
    validation = binary_metrics(y_val, val_probabilities, threshold)
    validation["ece"] = expected_calibration_error(y_val, val_probabilities)
    validation["epochs_trained"] = len(val_auc)
    validation["best_epoch"] = best_epoch
    validation["val_auc_history"] = [round(float(v), 5) for v in val_auc]
    if len(networks) > 1:
        # The figures above are the ensemble's, except the epochs (the first member's); each member's own:
        validation["members"] = [
            {
                "seed": config.seed + k,
                "roc_auc": binary_metrics(y_val, sigmoid(Predictor(network, provisional).logits(x_val), 1.0), 0.5)["roc_auc"],
                "epochs_trained": len(history["val_auc"]),
                "best_epoch": int(np.argmax(history["val_auc"])) + 1,
                "val_auc_history": [round(float(v), 5) for v in history["val_auc"]],
            }
            for k, (network, history) in enumerate(zip(networks, histories))
        ]

    metadata = dataclasses.replace(
        provisional,
        temperature=temperature,
        threshold=threshold,
        training_seconds=round(time.monotonic() - started, 1),
        train_config=_config_dict(config),
        validation=validation,
        created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        command=command,
    )
    metadata = metadata_with_band(metadata, zone)  # grey_zone, grey_zone_rule, validation["grey_zone_fraction"]
    saved = save_model(model, metadata, Path(model_path))
    # A gate beside the file belongs to the model just replaced; it would refuse the new one.
    from ..ood import gate_path, grades_path

    gate_path(Path(model_path)).unlink(missing_ok=True)
    grades_path(Path(model_path)).unlink(missing_ok=True)
    # The graph the app and the run-time commands score with, beside the model (``onnx_model``).
    from .onnx_export import export_onnx

    export_onnx(Path(model_path), x_val[:16].astype(np.float32) / 255.0)
    return saved


def provisional_metadata(config: TrainConfig, data_fingerprint: str, gradcam_layer) -> ModelMetadata:
    """The metadata a just-trained network is scored with before it is calibrated: temperature 1,
    threshold 0.5, no grey zone, no SHA-256 yet (``train`` and ``subtype_training`` replace them)."""
    return ModelMetadata(
        architecture=config.architecture,
        input_size=config.input_size,
        gradcam_layer=gradcam_layer,
        temperature=1.0,
        threshold=0.5,
        grey_zone=(0.5, 0.5),
        protocol=config.protocol,
        keras_version=keras.__version__,
        tensorflow_version=tf.__version__,
        model_sha256="",
        data_fingerprint=data_fingerprint,
        seed=config.seed,
        training_seconds=0.0,
    )


def _config_dict(config: TrainConfig) -> dict:
    data = dataclasses.asdict(config)
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in data.items()}
