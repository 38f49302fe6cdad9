"""The out-of-distribution gate: does an image look like the frontal paediatric chest X-rays the
model was trained on?

Several detectors, each a distance from the training X-rays, are combined:

* ``activations:<layer>``: Mahalanobis distance (Ledoit-Wolf covariance) of a summary of the
  network's activations in an early, a middle and a late convolution block: per channel, the
  mean in each quarter of the image (2 x 2 grid, so the layout counts) and the standard
  deviation. Early layers see texture and contrast, later ones shapes and layout.
* ``layout``: Mahalanobis distance of a 16 x 16 thumbnail of the model input, normalised to zero
  mean and unit variance (the arrangement of bright and dark regions, whatever the exposure).
* ``sharpness``: distance, in standard deviations of the training X-rays, of the log mean
  absolute Laplacian of the model input (an enlarged small crop is far blurrier than any
  radiograph squashed to the input size; noise is far sharper).
* ``colour``: ``ImageInfo.colour_spread`` (X-rays are grey; phone photos and pictures are not).

Each detector's value is divided by its 99th percentile on validation X-rays; an image's
``ood_score`` is the largest of these ratios divided by the gate's threshold, the 99.5th
percentile of that largest ratio on validation X-rays (whole, and with the lower part cropped
off so that a diaphragm crop passes). An image is out of distribution when ``ood_score > 1``.
Fitted on the training split, thresholded on the validation split; the test split is only
scored (``evaluation.evaluate_ood``).

The gate belongs to one model (its activations): it is saved beside the model as
``<model>.ood.npz`` (no pickle) and carries the model's SHA-256.

Grades (``OodGrades``, docs/ood_grades.md): one cut at 1 reads too categorically, since the
gate flags a few ordinary chest films just above it. The score is read in three grades:
``in_distribution`` (below ``unusual_from``), ``unusual`` (near the cut on either side: the call
is shown with a note) and ``outside`` (from ``outside_from`` up: the call is hidden). The two
cut-offs are fixed on validation X-rays and the out-of-distribution corpus, never on the test
split, and saved in a small side file ``<model>.ood_grades.json`` that carries the SHA-256 of
the gate file it was fixed for (a refitted gate makes it stale). Without that file a flagged
image is ``outside`` and any other ``in_distribution``: the single cut as before.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .bundle import GATE, GRADES, read_side_json
from .errors import ModelFileError
from .paths import file_sha256, gate_path, grades_path  # noqa: F401 (re-exported)

GATE_SCHEMA_VERSION = 2
GRADES_SCHEMA_VERSION = 1
# The gate's grades, from least to most unlike the training X-rays (``OodGrades``).
IN_DISTRIBUTION, UNUSUAL, OUTSIDE = "in_distribution", "unusual", "outside"
OOD_GRADES = (IN_DISTRIBUTION, UNUSUAL, OUTSIDE)
FIXED_DETECTORS = ("layout", "sharpness", "colour")


@dataclass(frozen=True)
class OodConfig:
    """Settings of fitting the gate.

    Attributes:
        layers: the network layers whose activations are summarised (pneumonet's block ends).
        thumbnail: side of the ``layout`` thumbnail.
        detector_quantile: percentile of validation values each detector is divided by.
        pass_quantile: share of validation X-rays that must pass (the threshold's quantile).
        colour_floor: smallest colour spread (8-bit grey levels) the colour detector's scale
            may take: validation files are grey (spread 0), so without a floor any JPEG chroma
            noise would flag. 6 levels is a visible tint.
        lower_crop_keep: range of the top share kept in the crop-augmented copies.
        seed: seed of the crop augmentation.
    """

    layers: tuple[str, ...] = ("stem_relu2", "block0_relu2", "block1_relu2")
    thumbnail: int = 16
    detector_quantile: float = 0.99
    pass_quantile: float = 0.995
    colour_floor: float = 6.0
    lower_crop_keep: tuple[float, float] = (0.7, 0.95)
    seed: int = 20261123


def _planes(images: np.ndarray) -> np.ndarray:
    """(n, size, size, 1) model inputs, float in [0, 1] or uint8 -> (n, size, size) float32 in [0, 1]."""
    images = np.asarray(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return images.reshape(images.shape[0], images.shape[1], images.shape[2]).astype(np.float32) / scale


def layout_vectors(images: np.ndarray, side: int) -> np.ndarray:
    """(n, side * side): area-resized thumbnails, each normalised to zero mean and unit variance."""
    planes = _planes(images)
    thumbs = np.stack([cv2.resize(plane, (side, side), interpolation=cv2.INTER_AREA).reshape(-1) for plane in planes])
    return (thumbs - thumbs.mean(axis=1, keepdims=True)) / (thumbs.std(axis=1, keepdims=True) + 1e-3)


def log_sharpness(images: np.ndarray) -> np.ndarray:
    """(n,): log of the mean absolute Laplacian of each model input."""
    planes = _planes(images)
    return np.array([np.log(np.mean(np.abs(cv2.Laplacian(plane, cv2.CV_32F))) + 1e-6) for plane in planes])


def summarise_activation(activation):
    """A TensorFlow tensor (batch, h, w, c) of one layer -> its gate summary (batch, 5c): per
    channel, the mean in each quarter of the image (2 x 2 grid) and the standard deviation.

    Written once in TensorFlow ops, for ``ActivationSummaries`` and for the ONNX export
    (``lab.onnx_export``), which puts it into the exported graph, so both give the same numbers.
    """
    import tensorflow as tf

    _, h, w, c = activation.shape
    quarters = tf.reshape(activation, (-1, 2, h // 2, 2, w // 2, c))
    grid = tf.reshape(tf.reduce_mean(quarters, axis=[2, 4]), (-1, 4 * c))  # (batch, 4c)
    spread = tf.math.reduce_std(activation, axis=[1, 2])  # (batch, c)
    return tf.concat([grid, spread], axis=1)  # (batch, 5c)


def check_summary_layers(model, layers: tuple[str, ...]) -> None:
    """Refuses gate layers a Keras model lacks, or whose height or width is odd.

    Raises:
        ModelFileError: a layer is missing, or cannot be split into a 2 x 2 grid.
    """
    known = {layer.name for layer in model.layers}
    missing = [name for name in layers if name not in known]
    if missing:
        raise ModelFileError(
            f"The model has no layer {', '.join(missing)} that its out-of-distribution gate needs; "
            "fit the gate again for this model."
        )
    odd = [name for name in layers if any(side % 2 for side in model.get_layer(name).output.shape[1:3])]
    if odd:
        raise ModelFileError(
            f"The layer(s) {', '.join(odd)} have an odd height or width, which the gate's 2 x 2 summary "
            "cannot split; fit the gate on other layers."
        )


class ActivationSummaries:
    """Logits and per-layer activation summaries of a model in one forward pass.

    Args:
        model: the Keras model (not changed; a second view of its layers is built).
        layers: names of 4-D layers (batch, h, w, c) with even h and w.
        batch_size: images per forward pass.

    Raises:
        ModelFileError: a layer is missing from the model.
    """

    def __init__(self, model, layers: tuple[str, ...], batch_size: int = 32):
        import keras
        import tensorflow as tf

        check_summary_layers(model, layers)
        network = keras.Model(model.inputs, [model.outputs[0], *[model.get_layer(name).output for name in layers]])
        size = model.inputs[0].shape[1]
        self.layers = tuple(layers)
        self.batch_size = batch_size

        def summarise(images):
            logit, *maps = network(images, training=False)
            return logit, [summarise_activation(activation) for activation in maps]

        self._run = tf.function(summarise, input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32)])

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(n, size, size, 1) inputs -> (n,) float64 logits and one (n, 5c) array per layer."""
        import tensorflow as tf

        floats = _planes(images)[..., np.newaxis]
        if len(floats) == 0:
            raise ValueError("no images to summarise")
        logits, parts = [], []
        for start in range(0, len(floats), self.batch_size):
            logit, summaries = self._run(tf.constant(floats[start : start + self.batch_size]))
            logits.append(logit.numpy().reshape(-1))
            parts.append([summary.numpy() for summary in summaries])
        per_layer = [np.concatenate([part[index] for part in parts]) for index in range(len(parts[0]))]
        return np.concatenate(logits).astype(np.float64), per_layer


@dataclass(frozen=True)
class Gaussian:
    """A mean and a precision matrix (inverse covariance)."""

    mean: np.ndarray
    precision: np.ndarray

    def distance(self, vectors: np.ndarray) -> np.ndarray:
        offset = np.asarray(vectors, dtype=np.float64) - self.mean  # (n, d)
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", offset, self.precision, offset), 0.0))

    @classmethod
    def fit(cls, vectors: np.ndarray) -> "Gaussian":
        from sklearn.covariance import LedoitWolf

        estimate = LedoitWolf().fit(np.asarray(vectors, dtype=np.float64))
        return cls(estimate.location_, estimate.precision_)


@dataclass(frozen=True)
class OodGate:
    """A fitted gate (see the module's docstring).

    Attributes:
        model_sha256: the model whose activations the gate was fitted on.
        layers: the summarised layers, in order (one ``activations:<layer>`` detector each).
        activations: one Gaussian per layer.
        layout: the Gaussian of normalised thumbnails.
        thumbnail: the thumbnail's side.
        sharpness_mean, sharpness_std: log sharpness of the training X-rays.
        scales: per-detector divisor, in ``detectors`` order.
        threshold: the largest scaled value above which an image is out of distribution.
        facts: how it was fitted (counts, validation pass rates, config).
        grades: the grade cut-offs from the side file beside the gate, None without one.
    """

    model_sha256: str
    layers: tuple[str, ...]
    activations: tuple[Gaussian, ...]
    layout: Gaussian
    thumbnail: int
    sharpness_mean: float
    sharpness_std: float
    scales: np.ndarray
    threshold: float
    facts: dict = field(default_factory=dict)
    grades: OodGrades | None = None

    def grade(self, score: float | None) -> str | None:
        """The score's grade (``OOD_GRADES``): by the fitted cut-offs, or the single cut at 1 without them."""
        return single_cut_grade(score) if self.grades is None else self.grades.grade(score)

    @property
    def detectors(self) -> tuple[str, ...]:
        return tuple(f"activations:{name}" for name in self.layers) + FIXED_DETECTORS

    def detector_values(self, images: np.ndarray, summaries: list[np.ndarray], colour_spread: np.ndarray) -> np.ndarray:
        """Raw detector values, (n, len(detectors)).

        Args:
            images: (n, size, size, 1) model inputs (float in [0, 1] or uint8).
            summaries: the ``ActivationSummaries`` of the same images, one array per layer.
            colour_spread: (n,) ``ImageInfo.colour_spread`` (0 for arrays that had no file).
        """
        columns = [gaussian.distance(summary) for gaussian, summary in zip(self.activations, summaries)]
        columns.append(self.layout.distance(layout_vectors(images, self.thumbnail)))
        columns.append(np.abs(log_sharpness(images) - self.sharpness_mean) / self.sharpness_std)
        columns.append(np.asarray(colour_spread, dtype=np.float64).reshape(-1))
        return np.stack(columns, axis=1)

    def scores_from_values(self, values: np.ndarray) -> np.ndarray:
        """``ood_score`` from detector values: above 1 means out of distribution."""
        return np.max(values / self.scales, axis=1) / self.threshold

    def scores(self, images: np.ndarray, summaries: list[np.ndarray], colour_spread: np.ndarray) -> np.ndarray:
        """(n,) ``ood_score``; an image is out of distribution when its score is above 1."""
        return self.scores_from_values(self.detector_values(images, summaries, colour_spread))

    def save(self, path: Path) -> None:
        arrays = {"scales": self.scales, "layout_mean": self.layout.mean, "layout_precision": self.layout.precision}
        for index, gaussian in enumerate(self.activations):
            arrays[f"activations{index}_mean"] = gaussian.mean
            arrays[f"activations{index}_precision"] = gaussian.precision
        header = {
            "schema_version": GATE_SCHEMA_VERSION,
            "model_sha256": self.model_sha256,
            "layers": list(self.layers),
            "thumbnail": self.thumbnail,
            "sharpness_mean": self.sharpness_mean,
            "sharpness_std": self.sharpness_std,
            "threshold": self.threshold,
            "facts": self.facts,
        }
        with open(path, "wb") as handle:
            np.savez_compressed(
                handle, header=np.array(json.dumps(header, sort_keys=True)), **{k: np.asarray(v, np.float32) for k, v in arrays.items()}
            )

    @classmethod
    def load(cls, path: Path) -> "OodGate":
        """Reads a gate written by ``save`` (no pickle), with its grade cut-offs when the side
        file ``<model>.ood_grades.json`` is beside it.

        Raises:
            ModelFileError: the file is missing, damaged or of another version, or the grade
                cut-offs beside it are damaged or were fixed for another gate.
        """
        gate = cls._load_gate(path)
        beside = Path(path).with_name(Path(path).name.removesuffix(GATE.suffix) + GRADES.suffix)
        if Path(path).name.endswith(GATE.suffix) and beside.is_file():
            gate = dataclasses.replace(gate, grades=OodGrades.load(beside, Path(path)))
        return gate

    @classmethod
    def _load_gate(cls, path: Path) -> "OodGate":
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {name: data[name].astype(np.float64) for name in data.files if name != "header"}
            if header.get("schema_version") != GATE_SCHEMA_VERSION:
                raise ModelFileError(f"The out-of-distribution gate {path} is of another version; fit it again.")
            layers = tuple(header["layers"])
            return cls(
                model_sha256=header["model_sha256"],
                layers=layers,
                activations=tuple(
                    Gaussian(arrays[f"activations{i}_mean"], arrays[f"activations{i}_precision"]) for i in range(len(layers))
                ),
                layout=Gaussian(arrays["layout_mean"], arrays["layout_precision"]),
                thumbnail=int(header["thumbnail"]),
                sharpness_mean=float(header["sharpness_mean"]),
                sharpness_std=float(header["sharpness_std"]),
                scales=arrays["scales"],
                threshold=float(header["threshold"]),
                facts=header.get("facts", {}),
            )
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
            raise ModelFileError(
                f"The out-of-distribution gate {path} cannot be read ({error}). Fit it again with "
                "`python -m pneumo_model ood fit`."
            ) from None


def grade_shares(grader, scores) -> dict:
    """``{grade: share}`` of ``ood_score`` values read by ``grader`` (an ``OodGrades`` or ``OodGate``), and
    their count (``images``); shares are None when there are no scores."""
    graded = [grader.grade(float(score)) for score in scores]
    return {grade: (graded.count(grade) / len(graded) if graded else None) for grade in OOD_GRADES} | {"images": len(graded)}


def single_cut_grade(score: float | None) -> str | None:
    """The grade without fitted grade cut-offs: the gate's own cut at 1 (a NaN score is ``outside``)."""
    if score is None:
        return None
    return IN_DISTRIBUTION if score <= 1.0 else OUTSIDE


def known_grade(grade: str | None, score: float | None) -> str | None:
    """``grade`` when one was given, else the single cut's grade of ``score`` (a prediction made
    without grades, or read back from a record that kept only the score)."""
    return grade if grade is not None else single_cut_grade(score)


@dataclass(frozen=True)
class OodGrades:
    """Where the gate's score is read as in distribution, unusual or outside (see the module's docstring).

    Attributes:
        gate_sha256: SHA-256 of the ``.ood.npz`` file these cut-offs were fixed for.
        unusual_from: scores above this (and below ``outside_from``) are ``unusual``; at most 1.
        outside_from: scores from this up are ``outside`` (the call hidden); at least 1.
        facts: the rule and the validation and corpus figures that fixed the cut-offs.
    """

    gate_sha256: str
    unusual_from: float
    outside_from: float
    facts: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (0.0 < self.unusual_from <= 1.0 <= self.outside_from and math.isfinite(self.outside_from)):
            raise ValueError(
                f"grade cut-offs must satisfy 0 < unusual_from <= 1 <= outside_from, got {self.unusual_from}, {self.outside_from}"
            )

    def grade(self, score: float | None) -> str | None:
        """``in_distribution``, ``unusual`` or ``outside`` for an ``ood_score`` (None without one;
        a NaN score, which the gate flags, is ``outside``)."""
        if score is None:
            return None
        if score <= self.unusual_from:
            return IN_DISTRIBUTION
        if score < self.outside_from:
            return UNUSUAL
        return OUTSIDE

    def save(self, path: Path) -> None:
        record = {
            "schema_version": GRADES_SCHEMA_VERSION,
            "gate_sha256": self.gate_sha256,
            "unusual_from": self.unusual_from,
            "outside_from": self.outside_from,
            "facts": self.facts,
        }
        Path(path).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path, gate_file: Path) -> "OodGrades":
        """Reads the cut-offs and checks that they were fixed for the gate in ``gate_file``.

        Raises:
            ModelFileError: the file is damaged, of another version, or fixed for another gate.
        """
        record = read_side_json(path, GRADES, schemas={GRADES_SCHEMA_VERSION}, model_sha256=None)  # tied to the gate
        try:
            grades = cls(
                gate_sha256=str(record["gate_sha256"]),
                unusual_from=float(record["unusual_from"]),
                outside_from=float(record["outside_from"]),
                facts=record.get("facts", {}),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelFileError(
                f"The gate's grade cut-offs {path} cannot be read ({error}). Fix them again with `{GRADES.command}`."
            ) from None
        if grades.gate_sha256 != file_sha256(gate_file):
            raise ModelFileError(
                f"The gate's grade cut-offs {path} were fixed for another gate than {gate_file} (refitted since?). "
                "Fix them again with `python -m pneumo_model ood grades`, or delete the file to use the single cut at 1."
            )
        return grades
