"""Explanations of one prediction: Grad-CAM heat maps and LIME superpixels, each with its overlay.

Computing an explanation and drawing it are separate steps. The explanation lives on the model
input (the whole upload squashed to a square, see ``preprocess``); the overlays stretch it back
onto the original grey image, so it is drawn at the upload's own size and aspect ratio.

Nothing here changes the model it is given: the app shares one model between all its users.
Bad arguments (wrong shapes, values outside [0, 1]) raise ``ExplanationError`` (a ``ValueError``
and a ``PneumoError``): they are mistakes in
the calling code, not in the user's upload, which ``load_image`` has already checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import cv2
import keras
import numpy as np
import tensorflow as tf
from lime import lime_image
from matplotlib import colormaps
from skimage.segmentation import find_boundaries, slic

from .errors import ExplanationError
from .preprocessing import to_unit_range

# Okabe-Ito colours, told apart by readers with any common colour-vision deficiency.
VERMILLION = (213, 94, 0)
BLUE = (0, 114, 178)


# --------------------------------------------------------------------------------------------
# Input checks shared by both methods


def _check_model_input(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Returns a (H, W, 1) float32 copy of a model input given as (H, W) or (H, W, 1) in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3 or image.shape[2] != 1 or image.shape[0] < 2 or image.shape[1] < 2:
        raise ExplanationError(
            f"The {name} must be one grey model input of shape (height, width, 1) or (height, width), "
            f"as `preprocess` returns; got shape {image.shape}."
        )
    _check_unit_range(image, name)
    return image.astype(np.float32)  # (H, W, 1), a new array


def _check_unit_range(values: np.ndarray, name: str) -> None:
    if not np.issubdtype(values.dtype, np.floating):
        raise ExplanationError(f"The {name} must be a float array with values in [0, 1]; got dtype {values.dtype}.")
    if not np.all(np.isfinite(values)):
        raise ExplanationError(f"The {name} contains NaN or infinite values; it must lie in [0, 1].")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ExplanationError(
            f"The {name} must lie in [0, 1]; its values span [{low:.4g}, {high:.4g}]. "
            "Use `preprocess` to build model inputs."
        )


def _display_grey(image: np.ndarray) -> np.ndarray:
    """The original grey image as float32 (H, W) in [0, 1], by the package's intensity rule.

    Args:
        image: 2-D (height, width) uint8, uint16, or float in [0, 1], as ``load_image`` returns.
    """
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 1:
        raise ExplanationError(
            f"The image must be the original 2-D grey image (height, width) as `load_image` returns; "
            f"got shape {image.shape}."
        )
    if np.issubdtype(image.dtype, np.floating):
        _check_unit_range(image, "image")
    elif image.dtype not in (np.uint8, np.uint16):
        raise ExplanationError(f"The image must be uint8, uint16 or float in [0, 1]; got dtype {image.dtype}.")
    return to_unit_range(image)  # (H, W) float32


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ExplanationError(f"{name} must lie in [0, 1]; got {alpha}.")


def _grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)  # (H, W, 3) float32


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Grad-CAM


class GradCam:
    """Grad-CAM heat maps for the pneumonia logit of a flat functional Keras model.

    The constructor builds one sub-model sharing the model's layers and weights, returning the
    target layers' activations and the logit, and traces one graph for any batch size; build it
    once per model and reuse it (it is read-only and safe to share). Subclasses may override
    ``channel_weights`` to implement another CAM method.

    An ensemble names one target layer per member (``ModelMetadata.gradcam_layer`` is then a
    tuple). The members' weighted activations are summed before the ReLU, which is Grad-CAM on
    the members' feature maps stacked into one layer: each member contributes in proportion to
    its share of the ensemble's logit.

    Args:
        model: maps (batch, H, W, 1) float32 images in [0, 1] to (batch, 1) logits. Not changed.
        layer_name: the target layer, or several of the same height and width; a spatial
            (batch, h, w, channels) activation. Take it from the model's metadata.
        epsilon: maps are divided by max(peak, epsilon), so an all-zero map stays zero, never NaN.

    Raises:
        ExplanationError: the model has no such layer, or its output is not spatial, or the
            layers differ in height and width.
    """

    def __init__(self, model: keras.Model, layer_name: str | Sequence[str], epsilon: float = 1e-7):
        names = (layer_name,) if isinstance(layer_name, str) else tuple(layer_name)
        if not names:
            raise ExplanationError("Grad-CAM needs at least one target layer.")
        targets = []
        for name in names:
            try:
                layer = model.get_layer(name)
            except ValueError:
                raise ExplanationError(f"The model has no layer named '{name}' to use for Grad-CAM.") from None
            if len(layer.output.shape) != 4:
                raise ExplanationError(
                    f"Grad-CAM needs a spatial layer with (batch, height, width, channels) output; "
                    f"'{name}' has shape {layer.output.shape}."
                )
            targets.append(layer.output)
        if len({tuple(target.shape[1:3]) for target in targets}) != 1:
            raise ExplanationError(f"Grad-CAM's target layers {', '.join(names)} differ in height and width.")
        self.layer_name = layer_name
        self.epsilon = epsilon
        self.input_shape = tuple(model.inputs[0].shape[1:])  # (H, W, 1)
        self._grad_model = keras.Model(model.inputs, [*targets, model.output])
        self._heatmaps = tf.function(
            self._compute, input_signature=[tf.TensorSpec((None, *self.input_shape), tf.float32)]
        )

    def channel_weights(self, activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
        """Grad-CAM's weight per channel: the gradient averaged over space, (batch, channels)."""
        return tf.reduce_mean(gradients, axis=(1, 2))

    def _compute(self, images: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            *activations, logits = self._grad_model(images, training=False)  # k x (batch, h, w, c), (batch, 1)
            pneumonia = logits[:, 0]  # (batch,)
        # Each logit depends on its own image only, so the gradient of the sum is per image.
        gradients = tape.gradient(pneumonia, activations)  # k x (batch, h, w, c)
        weighted = [
            tf.einsum("bhwc,bc->bhw", a, self.channel_weights(a, g)) for a, g in zip(activations, gradients)
        ]  # k x (batch, h, w)
        cam = tf.nn.relu(tf.add_n(weighted))  # (batch, h, w)
        cam = tf.image.resize(cam[..., tf.newaxis], self.input_shape[:2], method="bilinear")[..., 0]  # (batch, H, W)
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)  # (batch, 1, 1)
        # Zero gradients give a zero map: divide by max(peak, eps), never by zero.
        return tf.clip_by_value(cam / tf.maximum(peak, self.epsilon), 0.0, 1.0)  # (batch, H, W)

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        """Heat maps for a batch of model inputs.

        Args:
            images: (n, H, W, 1) float32 in [0, 1], the model's input shape.

        Returns:
            New (n, H, W) float32 array in [0, 1]; 1 marks the region that most raises the
            pneumonia logit. All zeros where no region raises it (or the gradients are zero).
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ExplanationError(
                f"Expected a batch of model inputs of shape (n, {', '.join(map(str, self.input_shape))}); "
                f"got shape {images.shape}."
            )
        _check_unit_range(images, "images")
        return self._heatmaps(tf.constant(images, dtype=tf.float32)).numpy()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Heat map for one model input (H, W, 1) or (H, W) float32 in [0, 1]: (H, W) float32 in [0, 1]."""
        image = _check_model_input(image)
        return self.heatmaps(image[np.newaxis])[0]


def overlay_heatmap(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "viridis"
) -> np.ndarray:
    """Draws a heat map over the original grey image, at the original's size and aspect ratio.

    The heat map was computed on the model input, the whole image squashed to a square, so it is
    stretched back to (height, width) of the original.

    Args:
        image: the original 2-D grey image (height, width): uint8, uint16 (stretched min-max, as
            for the model) or float in [0, 1].
        heatmap: 2-D float array in [0, 1] of any size, e.g. from ``GradCam``.
        alpha: opacity of the heat map, in [0, 1] (0 shows the image only).
        colormap: "viridis" or "cividis", maps readable with colour-vision deficiencies.

    Returns:
        New (height, width, 3) uint8 RGB image.

    Raises:
        ValueError: the image is not 2-D, the heat map is not 2-D in [0, 1], alpha is outside
            [0, 1], or the colour map is not one of the two.
    """
    grey = _display_grey(image)  # (H, W) float32 in [0, 1]
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2 or min(heatmap.shape) < 1:
        raise ExplanationError(f"The heat map must be 2-D (height, width); got shape {heatmap.shape}.")
    _check_unit_range(heatmap, "heat map")
    _check_alpha(alpha)
    if colormap not in ("viridis", "cividis"):
        raise ExplanationError(f"Use a colour-blind-safe colour map, 'viridis' or 'cividis'; got '{colormap}'.")
    height, width = grey.shape
    stretched = cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)  # (H, W)
    colours = colormaps[colormap](np.clip(stretched, 0.0, 1.0))[:, :, :3]  # (H, W, 3) float64 in [0, 1]
    return _to_uint8((1.0 - alpha) * _grey_rgb(grey) + alpha * colours)  # (H, W, 3) uint8


# --------------------------------------------------------------------------------------------
# LIME


class ProbabilityModel(Protocol):
    """Anything with ``probabilities(images) -> (n,)``, such as ``prediction.Predictor``."""

    def probabilities(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LimeConfig:
    """Settings of a LIME explanation.

    Attributes:
        num_samples: perturbed images scored by the model.
        batch_size: perturbed images per call of the model (and per progress report).
        n_segments: superpixels SLIC aims for (it may return a few fewer).
        compactness: SLIC's balance of shape against intensity for [0, 1] grey images; higher
            gives more square superpixels, lower follows the anatomy more closely.
        sigma: width of the Gaussian smoothing before SLIC, in pixels.
        top_k: how many superpixels to report on each side (towards and away from pneumonia).
        hide_value: the grey level that replaces a hidden superpixel; None uses the image's mean.
            A flat mean grey removes the structure without the black holes (air) that zero would
            put into a chest X-ray.
        kernel_width: LIME's kernel width on the cosine distance between perturbations.
        seed: seeds LIME's sampling and its linear model; the same seed gives the same result.
    """

    num_samples: int = 1000
    batch_size: int = 256
    n_segments: int = 50
    compactness: float = 0.1
    sigma: float = 1.0
    top_k: int = 5
    hide_value: float | None = None
    kernel_width: float = 0.25
    seed: int = 0

    def __post_init__(self):
        if self.num_samples < 2 or self.batch_size < 1 or self.n_segments < 2 or self.top_k < 1:
            raise ExplanationError(
                "LimeConfig needs num_samples >= 2, batch_size >= 1, n_segments >= 2 and top_k >= 1; "
                f"got {self.num_samples}, {self.batch_size}, {self.n_segments}, {self.top_k}."
            )
        if self.hide_value is not None and not 0.0 <= self.hide_value <= 1.0:
            raise ExplanationError(f"hide_value must lie in [0, 1] or be None; got {self.hide_value}.")


@dataclass(frozen=True, eq=False)
class LimeExplanation:
    """LIME's explanation of the pneumonia probability for one model input.

    Attributes:
        segments: (H, W) int32 superpixel ids 0..n-1 on the model input (read-only).
        weights: (n,) float64 local-model weight of each superpixel: how much showing it (rather
            than hiding it) adds to the pneumonia probability (read-only).
        positive: ids of up to ``top_k`` superpixels with the largest positive weights, largest first.
        negative: ids of up to ``top_k`` superpixels with the most negative weights, most negative first.
        score: R^2 of the weighted linear model on the perturbed samples (how well it fits locally).
        intercept: the linear model's intercept (predicted probability with everything hidden).
        local_prediction: the linear model's probability for the unperturbed image.
    """

    segments: np.ndarray
    weights: np.ndarray
    positive: tuple[int, ...]
    negative: tuple[int, ...]
    score: float
    intercept: float
    local_prediction: float

    def overlay(
        self,
        image: np.ndarray,
        fill_alpha: float = 0.0,
        line_width: int | None = None,
        positive_colour: tuple[int, int, int] = VERMILLION,
        negative_colour: tuple[int, int, int] = BLUE,
    ) -> np.ndarray:
        """Outlines the reported superpixels on the original grey image, at its size and aspect ratio.

        Args:
            image: the original 2-D grey image (height, width): uint8, uint16 or float in [0, 1].
            fill_alpha: opacity of a fill inside the outlined superpixels, in [0, 1] (0: outlines only).
            line_width: outline width in pixels of the original; None scales it with the image
                (1 px per 300 px of the longer side, at least 1).
            positive_colour: RGB of superpixels pushing towards pneumonia (Okabe-Ito vermillion).
            negative_colour: RGB of superpixels pushing away from pneumonia (Okabe-Ito blue).

        Returns:
            New (height, width, 3) uint8 RGB image.

        Raises:
            ValueError: the image is not 2-D grey, or fill_alpha is outside [0, 1].
        """
        grey = _display_grey(image)  # (H, W) float32 in [0, 1]
        _check_alpha(fill_alpha, "fill_alpha")
        height, width = grey.shape
        if line_width is None:
            line_width = max(1, round(max(height, width) / 300))
        # Nearest-neighbour stretch of the square segment map back to the original's shape.
        rows = np.arange(height) * self.segments.shape[0] // height  # (H,)
        cols = np.arange(width) * self.segments.shape[1] // width  # (W,)
        segments = self.segments[rows[:, np.newaxis], cols[np.newaxis, :]]  # (H, W)
        rgb = _grey_rgb(grey)  # (H, W, 3) float32
        kernel = np.ones((line_width, line_width), np.uint8)
        for ids, colour in ((self.negative, negative_colour), (self.positive, positive_colour)):
            if not ids:
                continue
            colour = np.asarray(colour, dtype=np.float32) / 255.0  # (3,)
            inside = np.isin(segments, ids)  # (H, W) bool
            rgb[inside] = (1.0 - fill_alpha) * rgb[inside] + fill_alpha * colour
            # Each chosen superpixel gets its own outline, drawn inside it.
            outline = find_boundaries(np.where(inside, segments + 1, 0), mode="inner")  # (H, W) bool
            outline = cv2.dilate(outline.astype(np.uint8), kernel).astype(bool) & inside
            rgb[outline] = colour
        return _to_uint8(rgb)


def slic_segments(image: np.ndarray, config: LimeConfig = LimeConfig()) -> np.ndarray:
    """SLIC superpixels of a grey model input.

    Args:
        image: (H, W) or (H, W, 1) float32 in [0, 1].
        config: ``n_segments``, ``compactness`` and ``sigma`` are used.

    Returns:
        New (H, W) int32 array of superpixel ids numbered 0..n-1 without gaps (LIME needs that).
    """
    grey = _check_model_input(image)[:, :, 0]  # (H, W)
    labels = slic(
        grey,
        n_segments=config.n_segments,
        compactness=config.compactness,
        sigma=config.sigma,
        channel_axis=None,
        start_label=0,
    )  # (H, W)
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(grey.shape).astype(np.int32)


def explain_lime(
    image: np.ndarray,
    classifier: ProbabilityModel | Callable[[np.ndarray], np.ndarray],
    config: LimeConfig = LimeConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> LimeExplanation:
    """Explains one pneumonia probability with LIME over SLIC superpixels.

    LIME hides random sets of superpixels (filling them with ``config.hide_value``), scores the
    perturbed images, and fits a weighted linear model of the probability on which superpixels
    were shown. LIME expects colour images, so the grey input is given to it as three equal
    channels and the model sees channel 0 again.

    Args:
        image: one model input, (H, W, 1) or (H, W) float32 in [0, 1], as ``preprocess`` returns.
            Not modified.
        classifier: a ``Predictor`` (anything with ``probabilities``), or a function mapping
            (n, H, W, 1) float32 images in [0, 1] to (n,) probabilities of pneumonia.
        config: the LIME settings.
        progress: called as ``progress(done, total)`` after each batch of perturbed images is
            scored, ``done`` growing to ``total = config.num_samples``.

    Returns:
        A ``LimeExplanation``.

    Raises:
        ValueError: the image is not one grey input in [0, 1], or the classifier returns
            something other than (n,) probabilities in [0, 1].
    """
    grey = _check_model_input(image)  # (H, W, 1) float32
    probabilities = classifier.probabilities if hasattr(classifier, "probabilities") else classifier
    segments = slic_segments(grey, config)  # (H, W) int32
    n_segments = int(segments.max()) + 1
    done = 0

    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        nonlocal done
        images = np.ascontiguousarray(batch[:, :, :, :1], dtype=np.float32)  # (n, H, W, 1)
        p = np.asarray(probabilities(images), dtype=np.float64)
        if p.shape not in ((len(images),), (len(images), 1)):
            raise ExplanationError(
                f"The classifier must return one probability per image, shape ({len(images)},); got {p.shape}."
            )
        p = p.reshape(-1)  # (n,)
        if not np.all((p >= 0.0) & (p <= 1.0)):
            raise ExplanationError("The classifier must return probabilities in [0, 1] (not logits, not NaN).")
        done += len(images)
        if progress is not None:
            progress(done, config.num_samples)
        return np.stack([1.0 - p, p], axis=1)  # (n, 2): [normal, pneumonia]

    hide_value = float(grey.mean()) if config.hide_value is None else config.hide_value
    explainer = lime_image.LimeImageExplainer(
        kernel_width=config.kernel_width, feature_selection="none", random_state=config.seed
    )
    explanation = explainer.explain_instance(
        np.repeat(grey, 3, axis=2),  # (H, W, 3) float32, three equal channels
        classifier_fn,
        labels=(1,),
        top_labels=None,
        hide_color=hide_value,
        num_features=n_segments,
        num_samples=config.num_samples,
        batch_size=config.batch_size,
        segmentation_fn=lambda _: segments,
        random_seed=config.seed,
    )
    weights = np.zeros(n_segments, dtype=np.float64)  # (n,)
    for segment, weight in explanation.local_exp[1]:
        weights[segment] = weight
    order = np.argsort(-weights, kind="stable")  # largest first
    positive = tuple(int(s) for s in order[: config.top_k] if weights[s] > 0)
    negative = tuple(int(s) for s in order[::-1][: config.top_k] if weights[s] < 0)
    segments.flags.writeable = False
    weights.flags.writeable = False
    return LimeExplanation(
        segments=segments,
        weights=weights,
        positive=positive,
        negative=negative,
        score=float(explanation.score),
        intercept=float(explanation.intercept[1]),
        local_prediction=float(np.ravel(explanation.local_pred)[0]),
    )
