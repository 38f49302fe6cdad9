"""Explanations of one prediction: Grad-CAM heat maps and LIME superpixels, each with its overlay.

Computing an explanation and drawing it are separate steps. The explanation lives on the model
input (the whole upload squashed to a square, see ``preprocess``); the overlays stretch it back
onto the original grey image, so it is drawn at the upload's own size and aspect ratio.

Maps are drawn on one fixed scale shared by every image (``HeatmapScale``, fitted on the model's
validation split by the rule in ``docs/heatmap_scale.md`` and saved beside the model as
``<model>.cam.json``), never stretched to each image's own maximum: a trace on a normal film stays
faint, and a map no stronger than on most normal films is said to be weak.

Nothing here changes the model it is given: the app shares one model between all its users.
Bad arguments (wrong shapes, values outside [0, 1]) raise ``ExplanationError`` (a ``ValueError``
and a ``PneumoError``): they are mistakes in
the calling code, not in the user's upload, which ``load_image`` has already checked.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries, slic

from .bundle import (  # noqa: F401 (the path functions are re-exported)
    HEATMAP_SCALE,
    SUBTYPE_HEATMAP_SCALE,
    SideFile,
    heatmap_scale_path,
    read_side_json,
    subtype_heatmap_scale_path,
)
from .errors import ExplanationError, ModelFileError
from .onnx_model import OnnxModel
from .preprocessing import to_unit_range

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

# Okabe-Ito colours, told apart by readers with any common colour-vision deficiency.
VERMILLION = (213, 94, 0)
BLUE = (0, 114, 178)

HEATMAP_SCALE_SCHEMA_VERSION = 1
HEATMAP_SCALE_RULE = "docs/heatmap_scale.md"
FIT_COMMAND = HEATMAP_SCALE.command


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
    """Grad-CAM heat maps for the pneumonia logit of a flat functional Keras model, or of its
    exported ONNX graph.

    Given an ``onnx_model.OnnxModel`` (the app and the run-time commands), the maps come from the
    graph's ``cam`` output: the last feature layer weighted by the dense head's weights, which for
    a head of global average pooling, dropout and one dense unit is exactly Grad-CAM's weighted
    sum (the export refuses any other head, ``lab.onnx_export``); only the ReLU and the bilinear
    resizing are done here, as the TensorFlow path does them. No gradients, no TensorFlow.

    The constructor builds one sub-model sharing the model's layers and weights, returning the
    target layers' activations and the logit, and traces one graph for any batch size; build it
    once per model and reuse it (it is read-only and safe to share). Subclasses may override
    ``channel_weights`` to implement another CAM method.

    ``sign=-1`` maps the *negative* of the logit instead: the same weighted sum with its sign
    flipped before the ReLU, so it keeps the regions whose contribution lowered the logit (for the
    subtype network's viral logit, the regions that pushed towards the bacterial pattern; see
    ``docs/heatmap_scale.md``). The gradient of ``-logit`` is minus the gradient, so this is
    exactly Grad-CAM of ``-logit`` on both paths.

    An ensemble names one target layer per member (``ModelMetadata.gradcam_layer`` is then a
    tuple). The members' weighted activations are summed before the ReLU, which is Grad-CAM on
    the members' feature maps stacked into one layer: each member contributes in proportion to
    its share of the ensemble's logit.

    ``raw_heatmaps`` gives the maps as they are, in the unit of the logit (for a network ending in
    global average pooling and one dense logit, a cell's value is its contribution to the logit),
    so that one ``HeatmapScale`` fits every image. ``heatmaps`` divides each map by its own
    maximum: for the shape of a map only (where its heat lies), never to show how strong it is.

    Args:
        model: maps (batch, H, W, 1) float32 images in [0, 1] to (batch, 1) logits. Not changed.
        layer_name: the target layer, or several of the same height and width; a spatial
            (batch, h, w, channels) activation. Take it from the model's metadata.
        epsilon: maps are divided by max(peak, epsilon), so an all-zero map stays zero, never NaN.
        sign: +1 maps the logit, -1 its negative.

    Raises:
        ExplanationError: the model has no such layer, or its output is not spatial, or the
            layers differ in height and width, or ``sign`` is not +1 or -1.
    """

    def __init__(
        self, model: keras.Model | OnnxModel, layer_name: str | Sequence[str], epsilon: float = 1e-7, sign: int = 1
    ):
        names = (layer_name,) if isinstance(layer_name, str) else tuple(layer_name)
        if not names:
            raise ExplanationError("Grad-CAM needs at least one target layer.")
        if sign not in (1, -1):
            raise ExplanationError(f"Grad-CAM's sign is +1 (the logit) or -1 (its negative); got {sign}.")
        self.layer_name = layer_name
        self.epsilon = epsilon
        self.sign = sign
        if isinstance(model, OnnxModel):
            if model.record.cam_refusal is not None:
                raise ExplanationError(f"The model's exported graph has no Grad-CAM map: {model.record.cam_refusal}")
            exported = model.record.gradcam_layer
            exported = (exported,) if isinstance(exported, str) else tuple(exported or ())
            if names != exported:
                raise ExplanationError(
                    f"The model's exported graph computes Grad-CAM on {', '.join(exported) or 'no layer'}, not on "
                    f"{', '.join(names)}; use the Keras model (the lab side) for another layer."
                )
            self.input_shape = (model.input_size, model.input_size, 1)
            self._onnx = model
            return
        import keras
        import tensorflow as tf

        self._onnx = None
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
        self.input_shape = tuple(model.inputs[0].shape[1:])  # (H, W, 1)
        self._grad_model = keras.Model(model.inputs, [*targets, model.output])
        self._raw_heatmaps = tf.function(
            self._compute, input_signature=[tf.TensorSpec((None, *self.input_shape), tf.float32)]
        )

    def channel_weights(self, activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
        """Grad-CAM's weight per channel: the gradient averaged over space, (batch, channels)."""
        import tensorflow as tf

        return tf.reduce_mean(gradients, axis=(1, 2))

    def _compute(self, images: tf.Tensor) -> tf.Tensor:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            *activations, logits = self._grad_model(images, training=False)  # k x (batch, h, w, c), (batch, 1)
            pneumonia = self.sign * logits[:, 0]  # (batch,): the logit, or its negative
        # Each logit depends on its own image only, so the gradient of the sum is per image.
        gradients = tape.gradient(pneumonia, activations)  # k x (batch, h, w, c)
        weighted = [
            tf.einsum("bhwc,bc->bhw", a, self.channel_weights(a, g)) for a, g in zip(activations, gradients)
        ]  # k x (batch, h, w)
        cam = tf.nn.relu(tf.add_n(weighted))  # (batch, h, w)
        # Bilinear resizing stays within the cells' range, so the map's maximum is a cell's value.
        return tf.image.resize(cam[..., tf.newaxis], self.input_shape[:2], method="bilinear")[..., 0]  # (batch, H, W)

    def raw_heatmaps(self, images: np.ndarray) -> np.ndarray:
        """Heat maps for a batch of model inputs, as they are (no division by their maximum).

        Args:
            images: (n, H, W, 1) float32 in [0, 1], the model's input shape.

        Returns:
            New (n, H, W) float32 array >= 0 in the unit of the pneumonia logit; all zeros where
            no region raises it (or the gradients are zero). Show it through a ``HeatmapScale``.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ExplanationError(
                f"Expected a batch of model inputs of shape (n, {', '.join(map(str, self.input_shape))}); "
                f"got shape {images.shape}."
            )
        _check_unit_range(images, "images")
        if self._onnx is not None:
            return self._onnx_heatmaps(images)
        import tensorflow as tf

        return np.maximum(self._raw_heatmaps(tf.constant(images, dtype=tf.float32)).numpy(), 0.0)

    def _onnx_heatmaps(self, images: np.ndarray) -> np.ndarray:
        cells = np.maximum(self.sign * self._onnx.cam(images.astype(np.float32)), 0.0)  # (n, h, w): the ReLU
        height, width = self.input_shape[:2]
        # cv2's bilinear resizing of float maps uses half-pixel centres and clamps at the edges,
        # as tf.image.resize does (``_compute``): the two paths agree to float32 round-off.
        resized = [cv2.resize(cell, (width, height), interpolation=cv2.INTER_LINEAR) for cell in cells]
        return np.maximum(np.stack(resized).astype(np.float32), 0.0) if resized else np.zeros((0, height, width), np.float32)

    def raw(self, image: np.ndarray) -> np.ndarray:
        """The raw heat map of one model input (H, W, 1) or (H, W) float32 in [0, 1]: (H, W) float32 >= 0."""
        image = _check_model_input(image)
        return self.raw_heatmaps(image[np.newaxis])[0]

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        """Heat maps for a batch of model inputs, each divided by its own maximum (its shape only).

        Args:
            images: (n, H, W, 1) float32 in [0, 1], the model's input shape.

        Returns:
            New (n, H, W) float32 array in [0, 1]; 1 marks the region that most raises the
            pneumonia logit in that image, however little. All zeros where no region raises it.
        """
        raw = self.raw_heatmaps(images)  # (n, H, W)
        peak = raw.max(axis=(1, 2), keepdims=True)  # (n, 1, 1)
        # Zero gradients give a zero map: divide by max(peak, eps), never by zero.
        return np.clip(raw / np.maximum(peak, self.epsilon), 0.0, 1.0).astype(np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Relative heat map for one model input (H, W, 1) or (H, W) float32 in [0, 1]: (H, W) float32 in [0, 1]."""
        image = _check_model_input(image)
        return self.heatmaps(image[np.newaxis])[0]


def overlay_heatmap(
    image: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.4,
    colormap: str = "viridis",
    fade: bool = True,
    fade_until: float = 1.0,
) -> np.ndarray:
    """Draws a heat map over the original grey image, at the original's size and aspect ratio.

    The heat map was computed on the model input, the whole image squashed to a square, so it is
    stretched back to (height, width) of the original.

    Args:
        image: the original 2-D grey image (height, width): uint8, uint16 (stretched min-max, as
            for the model) or float in [0, 1].
        heatmap: 2-D float array in [0, 1] of any size: a raw map through ``HeatmapScale.unit``.
        alpha: opacity of the heat map where it is 1, in [0, 1] (0 shows the image only).
        colormap: "viridis" or "cividis", maps readable with colour-vision deficiencies.
        fade: each pixel's opacity grows from 0 where the map is 0 (the film is left as it is)
            to ``alpha`` where it reaches ``fade_until``, so a weak map stays faint; False:
            ``alpha`` everywhere.
        fade_until: the map value from which the opacity is the full ``alpha``, in (0, 1]
            (``HeatmapScale.overlay`` puts it at the weak cut).

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
    if not 0.0 < fade_until <= 1.0:
        raise ExplanationError(f"fade_until must lie in (0, 1]; got {fade_until}.")
    if colormap not in ("viridis", "cividis"):
        raise ExplanationError(f"Use a colour-blind-safe colour map, 'viridis' or 'cividis'; got '{colormap}'.")
    height, width = grey.shape
    stretched = np.clip(
        cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0
    )  # (H, W)
    colours = colormaps[colormap](stretched)[:, :, :3]  # (H, W, 3) float64 in [0, 1]
    opacity = alpha * np.minimum(stretched / fade_until, 1.0)[:, :, np.newaxis] if fade else alpha  # (H, W, 1) or a number
    return _to_uint8((1.0 - opacity) * _grey_rgb(grey) + opacity * colours)  # (H, W, 3) uint8


# --------------------------------------------------------------------------------------------
# One fixed scale for every image


@dataclass(frozen=True)
class HeatmapScale:
    """The fixed scale every heat map of one model is drawn on (``docs/heatmap_scale.md``).

    Fitted on the model's validation split by ``pneumo_model.lab.cam_scale`` and saved beside the
    model; it belongs to that model only (the unit of its maps is its logit).

    Attributes:
        model_sha256: the model it was fitted for.
        gradcam_scale: ``S``, the raw Grad-CAM value drawn at full colour (higher saturates).
        gradcam_weak_below: ``T``, a map whose raw maximum is below it is weak.
        lime_small_below: ``L``, a LIME explanation whose largest absolute weight is below it has
            all weights small; also the smallest half-width of LIME's colour scale. None for a
            scale with no LIME part (the subtype pattern's map).
        lime_num_samples, lime_n_segments: the LIME settings ``L`` was fitted with (the only ones
            it judges); None with it.
        facts: how it was fitted (counts, shares, medians); not used to draw.
    """

    model_sha256: str
    gradcam_scale: float
    gradcam_weak_below: float
    lime_small_below: float | None = None
    lime_num_samples: int | None = None
    lime_n_segments: int | None = None
    facts: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        numbers = (self.gradcam_scale, self.gradcam_weak_below) + (
            () if self.lime_small_below is None else (self.lime_small_below,)
        )
        if not all(np.isfinite(numbers)) or self.gradcam_scale <= 0 or min(numbers) < 0:
            raise ModelFileError(
                f"A heat-map scale needs a positive Grad-CAM scale and non-negative cuts; got {numbers}. "
                f"Fit it again with `{FIT_COMMAND}`."
            )

    @property
    def id(self) -> str:
        """12 hex digits naming the numbers that draw (cache keys: another scale, other pictures)."""
        drawn = {k: v for k, v in asdict(self).items() if k != "facts"}
        return hashlib.sha256(json.dumps(drawn, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def weak_fraction(self) -> float:
        """``T / S``: where the weak cut lies on the shown 0-1 scale."""
        return self.gradcam_weak_below / self.gradcam_scale

    def unit(self, raw: np.ndarray) -> np.ndarray:
        """A raw Grad-CAM map (any shape, >= 0) on the fixed scale: new float32 in [0, 1], saturating at 1."""
        raw = np.asarray(raw, dtype=np.float32)
        if not np.all(np.isfinite(raw)) or (raw.size and raw.min() < 0):
            raise ExplanationError("A raw heat map must be finite and >= 0, as `GradCam.raw` returns.")
        return np.clip(raw / np.float32(self.gradcam_scale), 0.0, 1.0)

    def peak(self, raw: np.ndarray) -> float:
        """The map's maximum on the fixed scale, not clipped (1.7: above the scale's full colour)."""
        return float(np.max(raw)) / self.gradcam_scale if np.size(raw) else 0.0

    def overlay(self, image: np.ndarray, raw: np.ndarray, alpha: float = 0.4, colormap: str = "viridis") -> np.ndarray:
        """A raw Grad-CAM map drawn over the original grey image on this scale (``overlay_heatmap``):
        the colour says how strong, and the opacity grows from none at 0 to ``alpha`` at the weak cut,
        so every region stronger than on 95 % of normal films is drawn at full opacity.

        Returns:
            New (height, width, 3) uint8 RGB image at the original's size.
        """
        return overlay_heatmap(image, self.unit(raw), alpha, colormap, fade_until=self.fade_until)

    @property
    def fade_until(self) -> float:
        """Where the overlay's opacity reaches its full value: the weak cut on the 0-1 scale, within (0, 1]."""
        return min(max(self.weak_fraction, 1e-3), 1.0)

    def is_weak(self, raw: np.ndarray) -> bool:
        """True when no region raised the pneumonia score more than on 95 % of normal validation films."""
        return (float(np.max(raw)) if np.size(raw) else 0.0) < self.gradcam_weak_below

    def lime_half_width(self, explanation: "LimeExplanation") -> float:
        """LIME's symmetric colour scale ``±`` this: the largest absolute weight, at least ``L``."""
        return max(explanation.largest_weight, self.lime_small_below or 0.0)

    def judges_lime(self, config: "LimeConfig") -> bool:
        """Whether the small-weight cut holds for these settings (the ones it was fitted with; never
        for a scale with no LIME part)."""
        if self.lime_small_below is None:
            return False
        return (config.num_samples, config.n_segments) == (self.lime_num_samples, self.lime_n_segments)

    def lime_all_small(self, explanation: "LimeExplanation", config: "LimeConfig") -> bool | None:
        """True when every LIME weight is below ``L``; None when the settings are not those ``L`` judges."""
        if not self.judges_lime(config):
            return None
        return explanation.largest_weight < self.lime_small_below

    def to_dict(self) -> dict:
        return {"schema_version": HEATMAP_SCALE_SCHEMA_VERSION, "rule": HEATMAP_SCALE_RULE, **asdict(self)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path, model_sha256: str | None = None, side: SideFile = HEATMAP_SCALE) -> "HeatmapScale":
        """Reads a scale written by ``save``.

        Args:
            path: the ``<model>.cam.json`` file (or the pattern map's ``<model>.subtype.cam.json``).
            model_sha256: the model it must belong to (the subtype model's, for the pattern map's);
                None accepts any.
            side: which side file it is (``bundle.HEATMAP_SCALE`` or ``bundle.SUBTYPE_HEATMAP_SCALE``),
                for the messages' words and command.

        Raises:
            ModelFileError: the file is missing, unreadable, of another version, or made for
                another model (the message says how to fit it again).
        """
        path = Path(path)
        data = read_side_json(path, side, schemas={HEATMAP_SCALE_SCHEMA_VERSION}, model_sha256=model_sha256)
        lime = data.get("lime_small_below") is not None  # the pattern map's scale has no LIME part
        try:
            return cls(
                model_sha256=str(data["model_sha256"]),
                gradcam_scale=float(data["gradcam_scale"]),
                gradcam_weak_below=float(data["gradcam_weak_below"]),
                lime_small_below=float(data["lime_small_below"]) if lime else None,
                lime_num_samples=int(data["lime_num_samples"]) if lime else None,
                lime_n_segments=int(data["lime_n_segments"]) if lime else None,
                facts=dict(data.get("facts", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelFileError(
                f"The {side.what} {path.name} cannot be read ({error}). Make it again with `{side.command}`."
            ) from None


# --------------------------------------------------------------------------------------------
# Legends: a colour bar that says what the colours mean, drawn as a picture


def _figure_pixels(figure: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()  # (h, w, 3) uint8


def _legend_axes(width: int) -> tuple[Figure, object, float]:
    """A white figure ``width`` px wide holding one bar with room for labels above and below it.

    The font is a 21st of the width: drawn at under half its size in a page column (about 290 px
    at 1366 x 768), the words are about 11 px high, as the page's captions.
    """
    font = width / 21
    height = round(font * 5.6)
    figure = Figure(figsize=(width / 72, height / 72), dpi=72, facecolor="white")
    axes = figure.add_axes((0.06, 0.45, 0.88, 0.22))
    axes.set_yticks([])
    axes.tick_params(labelsize=font * 0.8, length=font * 0.25, pad=font * 0.1)
    for spine in axes.spines.values():
        spine.set_linewidth(0.5)
    return figure, axes, font


def gradcam_colour_bar(
    scale: HeatmapScale,
    alpha: float = 0.4,
    colormap: str = "viridis",
    peak: float | None = None,
    width: int = 640,
    top_words: str = "pneumonia top 1 %",
) -> np.ndarray:
    """The Grad-CAM colour bar: 0 to 1 on the fixed scale, drawn as ``HeatmapScale.overlay`` draws it on a
    mid-grey film at opacity ``alpha``, with the weak cut dashed and, given ``peak``, this image's
    maximum marked. The words that explain it go in the caption beside it (``GRADCAM_BAR_WORDS``;
    ``PATTERN_BAR_WORDS`` with ``top_words=PATTERN_TOP_WORDS`` for the pattern's map).

    Returns:
        New (h, width, 3) uint8 RGB picture.
    """
    _check_alpha(alpha)
    ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (8, 1))  # (8, 256)
    strip = overlay_heatmap(
        np.full(ramp.shape, 0.5, np.float32), ramp, alpha=alpha, colormap=colormap, fade_until=scale.fade_until
    )
    figure, axes, font = _legend_axes(width)
    axes.imshow(strip, extent=(0, 1, 0, 1), aspect="auto", interpolation="nearest")
    cut = scale.weak_fraction
    ticks = [(0.0, "0"), (1.0, "1")] + ([(cut, f"{cut:.2f}")] if 0.08 < cut < 0.92 else [])
    axes.set_xticks([t for t, _ in ticks], [label for _, label in ticks])
    axes.set_xlim(0, 1)
    if cut < 1.0:
        axes.axvline(cut, color="white", linewidth=font * 0.16)
        axes.axvline(cut, color="black", linewidth=font * 0.08, linestyle=(0, (2, 1.5)))
    axes.text(0.0, -0.95, "no contribution", ha="left", va="top", fontsize=font * 0.8, transform=axes.transAxes)
    axes.text(1.0, -0.95, top_words, ha="right", va="top", fontsize=font * 0.8, transform=axes.transAxes)
    if peak is not None:
        where = min(max(peak, 0.0), 1.0)  # the bar's x is the axes' fraction too
        axes.plot([where], [1.15], marker="v", markersize=font * 0.7, color="black", clip_on=False, transform=axes.transAxes)
        label = f"this image {peak:.2f}" + (" (saturates)" if peak > 1 else "")
        align = "center" if 0.2 < where < 0.8 else ("left" if where <= 0.2 else "right")
        axes.text(where, 1.45, label, ha=align, va="bottom", fontsize=font * 0.8, transform=axes.transAxes)
    return _figure_pixels(figure)


GRADCAM_BAR_WORDS = (
    "Grad-CAM colour bar, one scale for every image: 1 = as hot as the top 1 % of validation pneumonia map "
    "pixels (higher saturates). Dashed: 95 % of normal validation films peak below it. ▼ this image's peak."
)


PATTERN_TOP_WORDS = "pattern top 1 %"
PATTERN_BAR_WORDS = (
    "Pattern map colour bar, its own scale (not the pneumonia map's): 1 = as hot as the top 1 % of validation "
    "map pixels of pneumonia films of the pattern drawn (higher saturates). ▼ this image's peak."
)


def pattern_bar_words(scale: HeatmapScale) -> str:
    """``PATTERN_BAR_WORDS`` with where the weak cut lies: dashed on the bar, or beyond its end (the
    bar draws no cut at or above 1)."""
    cut = scale.weak_fraction
    if cut < 1.0:
        return PATTERN_BAR_WORDS + " Dashed: 95 % of validation films of the other pattern peak below it."
    return PATTERN_BAR_WORDS + (
        f" The weak cut lies beyond the bar, at {cut:.2f}: maps of films of the other pattern reach the whole bar too."
    )


def lime_colour_bar(half_width: float, small_below: float | None, alpha: float = 0.4, width: int = 640) -> np.ndarray:
    """LIME's legend: weights from ``-half_width`` (blue, away from pneumonia) to ``+half_width``
    (orange, towards), drawn as the overlay fills them on a mid-grey film, with ``±small_below``
    dashed when given. The words that explain it go in the caption beside it (``LIME_BAR_WORDS``).

    Returns:
        New (h, width, 3) uint8 RGB picture.
    """
    _check_alpha(alpha)
    if not half_width > 0:
        raise ExplanationError(f"LIME's colour scale needs a positive half-width; got {half_width}.")
    weights = np.tile(np.linspace(-half_width, half_width, 257), (8, 1))  # (8, 257)
    strip = _to_uint8(_lime_fill(np.full(weights.shape, 0.5, np.float32), weights, half_width, alpha))
    figure, axes, font = _legend_axes(width)
    axes.imshow(strip, extent=(-half_width, half_width, 0, 1), aspect="auto", interpolation="nearest")
    axes.set_xticks([-half_width, 0.0, half_width], [f"{-half_width:+.2f}", "0", f"{half_width:+.2f}"])
    axes.set_xlim(-half_width, half_width)
    if small_below is not None and 0 < small_below < half_width:
        for side in (-small_below, small_below):
            axes.axvline(side, color="black", linewidth=font * 0.08, linestyle=(0, (2, 1.5)))
    words = {"fontsize": font * 0.8, "transform": axes.transAxes}
    axes.text(0.0, -0.95, "away from pneumonia", ha="left", va="top", color=np.array(BLUE) / 255, **words)
    axes.text(1.0, -0.95, "towards pneumonia", ha="right", va="top", color=np.array(VERMILLION) / 255, **words)
    axes.text(0.5, 1.3, "change in probability", ha="center", va="bottom", **words)
    return _figure_pixels(figure)


LIME_BAR_WORDS = (
    "LIME colour bar, one symmetric scale: orange = showing the region raised the probability of pneumonia by "
    "the amount on the bar, blue = lowered it (LIME's local linear model)."
)


def with_legend(picture: np.ndarray, legend: np.ndarray, grow: bool = False) -> np.ndarray:
    """The picture with its legend below it, on white, at the wider of their two widths.

    Args:
        picture: uint8 (h, w, 3), e.g. an overlay. Not modified.
        legend: uint8 (h, w, 3), e.g. ``gradcam_colour_bar``; a narrower one is enlarged to the
            picture's width.
        grow: a picture narrower than the legend is enlarged to its width (a page shows both at
            the column's width); False: it keeps its own size, centred.

    Returns:
        New (h_picture + h_legend, width, 3) uint8 RGB picture.
    """
    if grow and picture.shape[1] < legend.shape[1]:
        height = round(picture.shape[0] * legend.shape[1] / picture.shape[1])
        picture = cv2.resize(picture, (legend.shape[1], height), interpolation=cv2.INTER_CUBIC)
    width = max(picture.shape[1], legend.shape[1])
    if legend.shape[1] < width:  # a large picture: the legend grows with it
        height = round(legend.shape[0] * width / legend.shape[1])
        legend = cv2.resize(legend, (width, height), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((picture.shape[0] + legend.shape[0], width, 3), 255, np.uint8)
    left = (width - picture.shape[1]) // 2
    canvas[: picture.shape[0], left : left + picture.shape[1]] = picture
    canvas[picture.shape[0] :] = legend
    return canvas


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

    @property
    def largest_weight(self) -> float:
        """The largest absolute weight (0 when there are none)."""
        return float(np.max(np.abs(self.weights))) if self.weights.size else 0.0

    def overlay(
        self,
        image: np.ndarray,
        half_width: float | None = None,
        alpha: float = 0.4,
        line_width: int | None = None,
        positive_colour: tuple[int, int, int] = VERMILLION,
        negative_colour: tuple[int, int, int] = BLUE,
    ) -> np.ndarray:
        """Every superpixel filled by its weight on one symmetric scale, over the original grey image
        at its size and aspect ratio; the strongest on each side (``positive``, ``negative``) outlined.

        A superpixel's fill has the colour of its side and the opacity ``alpha * |weight| / half_width``
        (full at the scale's end, none at 0); its outline, where it has one, the opacity
        ``|weight| / half_width``. So a weak explanation stays faint on a wider scale.

        Args:
            image: the original 2-D grey image (height, width): uint8, uint16 or float in [0, 1].
            half_width: the scale runs from ``-half_width`` to ``+half_width`` (weights beyond it
                saturate); None: this explanation's largest absolute weight
                (``HeatmapScale.lime_half_width`` gives the fixed-scale one).
            alpha: fill opacity at the scale's ends, in [0, 1] (0: outlines only).
            line_width: outline width in pixels of the original; None scales it with the image
                (1 px per 300 px of the longer side, at least 1).
            positive_colour: RGB of superpixels pushing towards pneumonia (Okabe-Ito vermillion).
            negative_colour: RGB of superpixels pushing away from pneumonia (Okabe-Ito blue).

        Returns:
            New (height, width, 3) uint8 RGB image.

        Raises:
            ValueError: the image is not 2-D grey, alpha is outside [0, 1], or half_width is not positive.
        """
        grey = _display_grey(image)  # (H, W) float32 in [0, 1]
        _check_alpha(alpha)
        half_width = self.largest_weight if half_width is None else float(half_width)
        if half_width == 0.0 and self.largest_weight == 0.0:
            return _to_uint8(_grey_rgb(grey))  # no weight anywhere: nothing to draw
        if not half_width > 0:
            raise ExplanationError(f"LIME's colour scale needs a positive half-width; got {half_width}.")
        height, width = grey.shape
        if line_width is None:
            line_width = max(1, round(max(height, width) / 300))
        # Nearest-neighbour stretch of the square segment map back to the original's shape.
        rows = np.arange(height) * self.segments.shape[0] // height  # (H,)
        cols = np.arange(width) * self.segments.shape[1] // width  # (W,)
        segments = self.segments[rows[:, np.newaxis], cols[np.newaxis, :]]  # (H, W)
        rgb = _lime_fill(grey, self.weights[segments], half_width, alpha, positive_colour, negative_colour)
        kernel = np.ones((line_width, line_width), np.uint8)
        for ids, colour in ((self.negative, negative_colour), (self.positive, positive_colour)):
            colour = np.asarray(colour, dtype=np.float32) / 255.0  # (3,)
            for segment in ids:
                inside = segments == segment  # (H, W) bool
                outline = find_boundaries(inside, mode="inner")  # (H, W) bool, inside the superpixel
                outline = cv2.dilate(outline.astype(np.uint8), kernel).astype(bool) & inside
                strength = min(abs(float(self.weights[segment])) / half_width, 1.0)
                rgb[outline] = (1.0 - strength) * rgb[outline] + strength * colour
        return _to_uint8(rgb)


def _lime_fill(
    grey: np.ndarray,
    weights: np.ndarray,
    half_width: float,
    alpha: float,
    positive_colour: tuple[int, int, int] = VERMILLION,
    negative_colour: tuple[int, int, int] = BLUE,
) -> np.ndarray:
    """(H, W) grey in [0, 1] and (H, W) weights -> (H, W, 3) float32: each pixel blended towards its
    side's colour with opacity ``alpha * min(|weight| / half_width, 1)``."""
    rgb = _grey_rgb(grey.astype(np.float32))  # (H, W, 3) float32
    opacity = (alpha * np.clip(np.abs(weights) / half_width, 0.0, 1.0)).astype(np.float32)[:, :, np.newaxis]  # (H, W, 1)
    colours = np.where(
        (weights > 0)[:, :, np.newaxis],
        np.asarray(positive_colour, np.float32) / 255.0,
        np.asarray(negative_colour, np.float32) / 255.0,
    )  # (H, W, 3)
    return (1.0 - opacity) * rgb + opacity * colours


@functools.cache
def _quiet_lime_explainer() -> type:
    """``_QuietLimeExplainer``, defined on first use: importing LIME loads scikit-learn (a second
    or two of a cold server's start), which nothing but a LIME explanation needs."""
    from lime import lime_image

    class _QuietLimeExplainer(lime_image.LimeImageExplainer):
        """LIME's image explainer without its progress bar (tqdm on stderr, one per explanation, which
        filled the server's log), and building each batch of perturbed images at once.

        ``data_labels`` draws the same random on/off matrix as LIME's own (same calls on
        ``random_state``), so a seed gives the same explanation; only the loop that builds the images
        one by one, with a progress bar, is replaced.
        """

        def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples, batch_size=10):
            n_features = np.unique(segments).shape[0]
            data = self.random_state.randint(0, 2, num_samples * n_features).reshape((num_samples, n_features))
            data[0, :] = 1
            labels = []
            for start in range(0, num_samples, batch_size):
                shown = data[start : start + batch_size].astype(bool)[:, segments]  # (batch, H, W)
                batch = np.where(shown[..., np.newaxis], image[np.newaxis], fudged_image[np.newaxis])  # (batch, H, W, 3)
                labels.extend(classifier_fn(batch))
            return data, np.array(labels)

    return _QuietLimeExplainer


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
    explainer = _quiet_lime_explainer()(kernel_width=config.kernel_width, feature_selection="none", random_state=config.seed)
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
