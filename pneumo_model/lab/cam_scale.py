"""Fitting the heat-map scale (the lab side) by the rule in ``docs/heatmap_scale.md``: Grad-CAM's
fixed scale and weak cut, and LIME's small-weight cut, all on the model's validation split; and
the subtype pattern's map's own scale and weak cut, on that split's pneumonia films (the rule's
section "The radiographic pattern's map"). The app and the ``explain`` command only load a fitted
scale (``pneumo_model.explain.HeatmapScale``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data import Sample, model_split
from ..errors import ConfigError, ModelFileError
from ..explain import GradCam, HeatmapScale, LimeConfig, explain_lime
from ..prediction import Predictor
from ..subtype import VIRAL, SubtypeModel
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


def map_statistics(gradcam: GradCam, inputs: np.ndarray, batch_size: int, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every input's raw Grad-CAM map, a batch at a time, reduced to what a scale is fitted on.

    Args:
        gradcam: the maps' maker (its model, layer and sign).
        inputs: (n, size, size, 1) float32 model inputs.
        batch_size: inputs per forward pass.
        kept: (n,) bool, the inputs whose every pixel value is kept.

    Returns:
        ``(maxima, values)``: (n,) each map's maximum, and the pixel values of the kept maps, flat.
    """
    maxima = np.empty(len(inputs))
    values = []
    for start in range(0, len(inputs), batch_size):
        raw = gradcam.raw_heatmaps(inputs[start : start + batch_size])  # (batch, size, size)
        maxima[start : start + len(raw)] = raw.max(axis=(1, 2))
        values.append(raw[kept[start : start + len(raw)]].ravel())
    return maxima, np.concatenate(values) if values else np.empty(0, np.float32)


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
    maxima, pneumonia_values = map_statistics(gradcam, inputs, predictor.batch_size, labels == 1)
    scale = float(np.quantile(pneumonia_values, rule.scale_quantile))
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


def fit_subtype_scale(
    subtype: SubtypeModel,
    validation: Sequence[Sample],
    rule: CamScaleRule = CamScaleRule(),
    log: Callable[[str], None] | None = None,
) -> HeatmapScale:
    """The pattern map's scale of ``subtype`` from its validation split's pneumonia films
    (``docs/heatmap_scale.md``, "The radiographic pattern's map"): ``S`` from each film's map in
    the direction of its own label, ``T`` from each film's map in the other direction. No LIME part.

    Raises:
        ModelFileError: no map of a film of its own pattern has any heat (a zero scale cannot draw).
        ConfigError: the split holds no viral or no bacterial pneumonia film.
        InvalidImageError: a file cannot be used.
    """
    log = log or (lambda line: None)
    films = [sample for sample in validation if sample.label == 1]
    viral = np.array([sample.subtype == VIRAL for sample in films], dtype=bool)
    if viral.all() or not viral.any():
        raise ConfigError(
            f"The pattern map's scale needs viral and bacterial validation pneumonia films; this split has "
            f"{int(viral.sum())} viral of {len(films)}."
        )
    # Decoded through the one pipeline; the subtype network's own calls are not used here.
    _, inputs = call_files(Predictor(subtype.model, subtype.metadata), [sample.path for sample in films])
    directions = {}
    for name, sign, own in (("viral", 1, viral), ("bacterial", -1, ~viral)):
        gradcam = GradCam(subtype.model, subtype.metadata.gradcam_layer, sign=sign)
        maxima, values = map_statistics(gradcam, inputs, subtype.batch_size, own)
        directions[name] = (own, maxima, values)
    own_values = np.concatenate([values for _, _, values in directions.values()])
    other_maxima = np.concatenate([maxima[~own] for own, maxima, _ in directions.values()])
    scale = float(np.quantile(own_values, rule.scale_quantile))
    weak_below = float(np.quantile(other_maxima, rule.weak_quantile))
    log(f"Pattern map: scale {scale:.4g}, weak below {weak_below:.4g} ({len(films)} validation pneumonia films)")
    if not scale > 0:
        raise ModelFileError(
            "No validation map of the subtype network has any heat on films of its own pattern, so its scale would "
            "be 0: nothing written. Check the subtype model (`python -m pneumo_model train-subtype`)."
        )
    facts = {
        "split": "validation",
        "map": "subtype pattern (viral map: the viral logit; bacterial map: its negative)",
        "n_viral": int(viral.sum()),
        "n_bacterial": int((~viral).sum()),
        "rule_settings": {"scale_quantile": rule.scale_quantile, "weak_quantile": rule.weak_quantile},
    }
    for name, (own, maxima, values) in directions.items():
        facts[f"{name}_own_q99"] = float(np.quantile(values, rule.scale_quantile))
        facts[f"{name}_weak_share_own"] = float(np.mean(maxima[own] < weak_below))
        facts[f"{name}_weak_share_other"] = float(np.mean(maxima[~own] < weak_below))
        facts[f"{name}_median_peak_own"] = float(np.median(maxima[own]) / scale)
        facts[f"{name}_median_peak_other"] = float(np.median(maxima[~own]) / scale)
    return HeatmapScale(
        model_sha256=subtype.metadata.model_sha256, gradcam_scale=scale, gradcam_weak_below=weak_below, facts=facts
    )


def measure_subtype(
    model_path: Path, data_dir: Path, rule: CamScaleRule = CamScaleRule(), log: Callable[[str], None] | None = None
) -> HeatmapScale:
    """The pattern map's rule on the subtype network beside ``model_path`` (the main model's
    ``.keras``), on its own validation split (``data.model_split`` of its metadata); nothing is written.

    Raises:
        ModelFileError: the subtype model is missing or altered.
        DataError: the data folder differs from the data it was trained on.
    """
    subtype = SubtypeModel.load(Path(model_path), runtime="keras")
    validation = model_split(subtype.metadata, Path(data_dir)).validation
    return fit_subtype_scale(subtype, validation, rule, log)
