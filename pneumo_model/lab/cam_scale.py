"""Fitting the heat-map scale (the lab side) by the rule in ``docs/heatmap_scale.md``: Grad-CAM's
fixed scale and weak cut, and LIME's small-weight cut, all on the model's validation split. The
app and the ``explain`` command only load a fitted scale (``pneumo_model.explain.HeatmapScale``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data import Sample, model_split
from ..explain import GradCam, HeatmapScale, LimeConfig, explain_lime
from ..prediction import Predictor
from .evaluation import call_files


@dataclass(frozen=True)
class CamScaleRule:
    """The rule's settings, as ``docs/heatmap_scale.md`` writes them.

    Attributes:
        scale_quantile: quantile of all validation pneumonia map pixels drawn at full colour.
        weak_quantile: quantile of validation normal maps' maxima below which a map is weak.
        lime_per_class: validation images of each class explained with LIME.
        lime_seed: seed of the LIME draw (``numpy.random.default_rng``).
        lime_small_quantile: quantile of the normal draw's largest absolute weights below which
            every weight is small.
        lime: the LIME settings (the app's defaults).
    """

    scale_quantile: float = 0.99
    weak_quantile: float = 0.95
    lime_per_class: int = 30
    lime_seed: int = 0
    lime_small_quantile: float = 0.95
    lime: LimeConfig = LimeConfig()


def lime_draw(samples: Sequence[Sample], label: int, n: int, seed: int) -> list[Sample]:
    """``n`` of the class's samples, drawn without replacement from them in the split's order."""
    of_class = [sample for sample in samples if sample.label == label]
    chosen = np.random.default_rng(seed).choice(len(of_class), size=min(n, len(of_class)), replace=False)
    return [of_class[index] for index in chosen]


def fit_scale(
    predictor: Predictor,
    validation: Sequence[Sample],
    rule: CamScaleRule = CamScaleRule(),
    log: Callable[[str], None] | None = None,
) -> HeatmapScale:
    """The heat-map scale of ``predictor``'s model from its validation samples.

    Raises:
        ModelFileError: no validation pneumonia map has any heat (a zero scale cannot draw).
        InvalidImageError: a file cannot be used.
    """
    log = log or (lambda line: None)
    labels = np.array([sample.label for sample in validation])
    _, inputs = call_files(predictor, [sample.path for sample in validation])  # (n, size, size, 1) float32
    gradcam = GradCam(predictor.model, predictor.metadata.gradcam_layer)
    maxima = np.empty(len(inputs))
    pneumonia_values = []
    for start in range(0, len(inputs), predictor.batch_size):
        raw = gradcam.raw_heatmaps(inputs[start : start + predictor.batch_size])  # (batch, size, size)
        maxima[start : start + len(raw)] = raw.max(axis=(1, 2))
        pneumonia_values.append(raw[labels[start : start + len(raw)] == 1].ravel())
    scale = float(np.quantile(np.concatenate(pneumonia_values), rule.scale_quantile))
    weak_below = float(np.quantile(maxima[labels == 0], rule.weak_quantile))
    log(f"Grad-CAM: scale {scale:.4g}, weak below {weak_below:.4g} ({len(inputs)} validation images)")

    largest = {}
    for label, name in ((0, "normal"), (1, "pneumonia")):
        drawn = lime_draw(validation, label, rule.lime_per_class, rule.lime_seed)
        _, drawn_inputs = call_files(predictor, [sample.path for sample in drawn])
        weights = []
        for index, model_input in enumerate(drawn_inputs):
            weights.append(explain_lime(model_input, predictor, rule.lime).largest_weight)
            log(f"LIME, {name}: {index + 1} of {len(drawn_inputs)}")
        largest[name] = np.array(weights)
    small_below = float(np.quantile(largest["normal"], rule.lime_small_quantile))

    pneumonia_max, normal_max = maxima[labels == 1], maxima[labels == 0]
    facts = {
        "split": "validation",
        "n_pneumonia": int(len(pneumonia_max)),
        "n_normal": int(len(normal_max)),
        "gradcam_weak_share_pneumonia": float(np.mean(pneumonia_max < weak_below)),
        "gradcam_weak_share_normal": float(np.mean(normal_max < weak_below)),
        "gradcam_median_peak_pneumonia": float(np.median(pneumonia_max) / scale) if scale > 0 else None,
        "gradcam_median_peak_normal": float(np.median(normal_max) / scale) if scale > 0 else None,
        "lime_n_normal": int(len(largest["normal"])),
        "lime_n_pneumonia": int(len(largest["pneumonia"])),
        "lime_median_largest_weight_normal": float(np.median(largest["normal"])),
        "lime_median_largest_weight_pneumonia": float(np.median(largest["pneumonia"])),
        "lime_small_share_pneumonia": float(np.mean(largest["pneumonia"] < small_below)),
        "lime_small_share_normal": float(np.mean(largest["normal"] < small_below)),
        "rule_settings": {k: v for k, v in asdict(rule).items() if k != "lime"},
    }
    return HeatmapScale(
        model_sha256=predictor.metadata.model_sha256,
        gradcam_scale=scale,
        gradcam_weak_below=weak_below,
        lime_small_below=small_below,
        lime_num_samples=rule.lime.num_samples,
        lime_n_segments=rule.lime.n_segments,
        facts=facts,
    )


def measure_model(
    model_path: Path, data_dir: Path, rule: CamScaleRule = CamScaleRule(), log: Callable[[str], None] | None = None
) -> HeatmapScale:
    """The rule on a saved model's own validation split (``data.model_split``), at its shipped
    operating point; nothing is written.

    Raises:
        ModelFileError: the model files are missing or altered.
        DataError: the data folder differs from the data the model was trained on.
    """
    predictor = Predictor.from_file(Path(model_path), runtime="keras")
    validation = model_split(predictor.metadata, Path(data_dir)).validation
    return fit_scale(predictor, validation, rule, log)
