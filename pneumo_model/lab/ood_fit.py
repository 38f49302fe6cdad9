"""Fitting the out-of-distribution gate (the lab side): detectors on a model's training X-rays,
scales and threshold on its validation X-rays; its grade cut-offs (``fix_grades``) on validation
X-rays and the out-of-distribution corpus. The app only loads and scores a fitted gate
(``pneumo_model.ood``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..artifacts import load_model
from ..data import load_model_inputs, model_split
from ..ood import (
    FIXED_DETECTORS,
    ActivationSummaries,
    Gaussian,
    OodConfig,
    OodGate,
    OodGrades,
    grade_shares,
    layout_vectors,
    log_sharpness,
)
from ..paths import file_sha256, gate_path, grades_path
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
    grades_path(model_path).unlink(missing_ok=True)  # fixed for the gate just replaced: fix them again
    # The run time reads the gate's summaries from the exported graph: export again if it lacks them.
    from ..onnx_model import OnnxRecord, onnx_record_path
    from .onnx_export import export_onnx

    record = onnx_record_path(model_path)
    if not record.is_file() or not set(gate.layers) <= set(OnnxRecord.load(record).summary_layers):
        export_onnx(Path(model_path))
    return gate


@dataclasses.dataclass(frozen=True)
class GradeRule:
    """How the gate's grade cut-offs are fixed (docs/ood_grades.md), on validation X-rays and the
    out-of-distribution corpus only.

    Attributes:
        unusual_quantile: ``unusual_from`` is this quantile of the validation X-rays' scores
            (whole films, scored as the app scores them): that share of ordinary films reads
            plainly, the rest "read with care" (the gate's own detectors are scaled at the same
            quantile).
        outside_decimals: ``outside_from`` is the lowest score of any corpus image, rounded down
            to this many decimals, so that every generated non-chest image stays hidden.
        corpus_xrays, seed: the corpus's validation X-rays and seed (as ``evaluate_ood``'s).
    """

    unusual_quantile: float = 0.99
    outside_decimals: int = 2
    corpus_xrays: int = 20
    seed: int = 20261123


def fix_grades(model_path: Path, data_dir: Path, rule: GradeRule = GradeRule()) -> OodGrades:
    """Fixes the gate's grade cut-offs on the model's validation X-rays and the corpus, and saves
    them beside the model (``grades_path``). The test split is not read.

    Every image goes through ``DecodedImage`` and ``Predictor`` as in the app: validation films
    whole and with the automatic diaphragm crop (the crop's scores are reported, not used), the
    corpus as uploaded bytes.

    Raises:
        ModelFileError: no gate beside the model.
        DataError: the data folder differs from the data the model was trained on.
    """
    from ..crop import find_diaphragm
    from ..errors import InvalidImageError, ModelFileError
    from ..prediction import Predictor
    from .evaluation import _shown_path, _validation_xrays, decoded_batches
    from .ood_corpus import build_corpus

    model_path = Path(model_path)
    gate_file = gate_path(model_path)
    if not gate_file.is_file():
        raise ModelFileError(f"No out-of-distribution gate beside {model_path}; run `python -m pneumo_model ood fit` first.")
    grades_path(model_path).unlink(missing_ok=True)  # scored with the single cut, never with stale grades
    predictor = Predictor.from_file(model_path, runtime="keras")
    split = model_split(predictor.metadata, Path(data_dir))
    whole, cropped = [], []
    for batch in decoded_batches([sample.path for sample in split.validation], predictor.batch_size):
        for image, call in zip(batch, predictor.calls(batch)):
            whole.append(call.ood_score)
            found = find_diaphragm(image.pixels)
            if found.found:
                cropped.append(predictor.call_on_crop(image, found.box).ood_score)
    corpus = build_corpus(_validation_xrays(split.validation, rule.corpus_xrays, rule.seed), rule.seed)
    corpus_scores, rejected = {}, {}
    for category, files in corpus.items():
        corpus_scores[category], rejected[category] = [], 0
        for _, data in files:
            try:
                corpus_scores[category].append(predictor.predict_source(data).ood_score)
            except InvalidImageError:
                rejected[category] += 1
    lowest = min(min(scores) for scores in corpus_scores.values() if scores)
    step = 10.0**rule.outside_decimals
    outside_from = max(1.0, float(np.floor(lowest * step) / step))
    unusual_from = min(1.0, float(np.quantile(whole, rule.unusual_quantile)))
    provisional = OodGrades(file_sha256(gate_file), unusual_from, outside_from)
    facts = {
        "rule": {k: v for k, v in dataclasses.asdict(rule).items()},
        "rule_words": (
            f"unusual_from: the {rule.unusual_quantile:.0%} quantile of the validation X-rays' scores (whole films); "
            f"outside_from: the lowest score of any corpus image, rounded down to {rule.outside_decimals} decimals, "
            "and at least 1"
        ),
        "validation_images": len(whole),
        "validation_highest_score": float(np.max(whole)),
        "validation_whole": grade_shares(provisional, whole),
        "validation_diaphragm_crop": grade_shares(provisional, cropped),
        "corpus_lowest_score": float(lowest),
        "corpus": {
            category: grade_shares(provisional, scores) | {"rejected_by_decoder": rejected[category],
                                                            "lowest_score": float(min(scores)) if scores else None}
            for category, scores in corpus_scores.items()
        },
        "gate_threshold": predictor.gate.threshold,
        "command": f"python -m pneumo_model ood grades --model {_shown_path(model_path)}",
    }
    grades = dataclasses.replace(provisional, facts=facts)
    grades.save(grades_path(model_path))
    return grades
