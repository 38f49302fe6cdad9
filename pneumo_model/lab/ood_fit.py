"""Fitting the out-of-distribution gate (the lab side): detectors on a model's training X-rays,
scales and threshold on its validation X-rays. The app only loads and scores a fitted gate
(``pneumo_model.ood``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..artifacts import load_model
from ..data import load_model_inputs, model_split
from ..ood import FIXED_DETECTORS, ActivationSummaries, Gaussian, OodConfig, OodGate, layout_vectors, log_sharpness
from ..paths import gate_path
from .shifts import keep_top


def fit_gate(model, model_sha256: str, train_images: np.ndarray, validation_images: np.ndarray, config: OodConfig = OodConfig()) -> OodGate:
    """Fits the detectors on training X-rays and the threshold on validation X-rays.

    Both sets are used whole and with a random lower part cropped off (the training data
    pipeline's crop, so a diaphragm-cropped X-ray is in distribution).

    Args:
        model: the Keras model the gate belongs to (not changed).
        model_sha256: SHA-256 of its file.
        train_images, validation_images: (n, size, size, 1) uint8 model inputs.
        config: settings.
    """
    rng = np.random.default_rng(config.seed)
    summarise = ActivationSummaries(model, config.layers)

    def with_crops(images: np.ndarray) -> np.ndarray:
        floats = images.astype(np.float32) / 255.0
        keeps = rng.uniform(*config.lower_crop_keep, len(images))
        cropped = np.stack([keep_top(image, keep) for image, keep in zip(floats, keeps)])
        return np.concatenate([floats, cropped])

    train = with_crops(train_images)
    _, train_summaries = summarise(train)
    sharpness = log_sharpness(train)
    provisional = OodGate(
        model_sha256=model_sha256,
        layers=tuple(config.layers),
        activations=tuple(Gaussian.fit(summary) for summary in train_summaries),
        layout=Gaussian.fit(layout_vectors(train, config.thumbnail)),
        thumbnail=config.thumbnail,
        sharpness_mean=float(sharpness.mean()),
        sharpness_std=float(sharpness.std()),
        scales=np.ones(len(config.layers) + len(FIXED_DETECTORS)),
        threshold=1.0,
    )
    validation = with_crops(validation_images)
    values = provisional.detector_values(validation, summarise(validation)[1], np.zeros(len(validation)))
    scales = np.quantile(values, config.detector_quantile, axis=0)
    colour = provisional.detectors.index("colour")
    scales[colour] = max(float(scales[colour]), config.colour_floor)
    largest = np.max(values / scales, axis=1)
    threshold = float(np.quantile(largest, config.pass_quantile))
    whole = len(validation_images)
    facts = {
        "train_images": int(len(train_images)),
        "validation_images": int(whole),
        "validation_pass_rate": float(np.mean(largest[:whole] <= threshold)),
        "validation_cropped_pass_rate": float(np.mean(largest[whole:] <= threshold)),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()},
    }
    return dataclasses.replace(provisional, scales=scales, threshold=threshold, facts=facts)


def fit_for_model(model_path: Path, data_dir: Path, config: OodConfig = OodConfig()) -> OodGate:
    """Fits the gate of the model at ``model_path`` on that model's own training and validation
    split (``data.model_split``) and saves it beside the model (``gate_path``).

    The images are held as training holds them (``load_model_inputs``, 8-bit), since fitting the
    gate is part of training a model.

    Raises:
        DataError: the data folder differs from the data the model was trained on.
    """
    # Not through Predictor: a stale gate beside the model (of a replaced model) must not stop its refit.
    model, metadata = load_model(Path(model_path))
    split = model_split(metadata, Path(data_dir))
    train = load_model_inputs(split.train, metadata.input_size)
    validation = load_model_inputs(split.validation, metadata.input_size)
    gate = fit_gate(model, metadata.model_sha256, train, validation, config)
    gate.save(gate_path(model_path))
    return gate
