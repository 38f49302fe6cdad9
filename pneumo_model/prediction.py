"""Scoring images with a trained model: logits, calibrated probabilities, the call and the grey zone."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .artifacts import DEFAULT_MODEL_PATH, ModelMetadata, check_model_file, load_model
from .errors import ConfigError, ModelFileError, SiteProfileError
from .onnx_model import OnnxModel
from .operating_point import OperatingPoint
from .ood import OodGate, gate_path
from .crop import (
    CropLimits,
    DiaphragmResult,
    MarkerResult,
    MarkerSettings,
    RescoreResult,
    RescoreRule,
    check_rescore,
    edit_pixels,
    find_diaphragm,
    find_markers,
    validate_box,
)
from .pipeline import DecodedImage
from .preprocessing import ImageInfo, ImageLimits, preprocess
from .schema import PREDICTION_SCHEMA_VERSION
from .subtype import SubtypeModel

if TYPE_CHECKING:
    import keras

# Images per forward pass. On the 2-core CPU, pneumonet at 128 px ran at about 930 images/s in
# batches of 32 against 420 in batches of 256 (the activations of a small batch stay in cache).
DEFAULT_BATCH_SIZE = 32
# What scores: the exported graph on ONNX Runtime (the app and the run-time commands, no
# TensorFlow), or the Keras model on TensorFlow (the lab: training, evaluation, comparison).
RUNTIMES = ("onnx", "keras")


@dataclass(frozen=True)
class Prediction:
    """The model's output for one image.

    Attributes:
        probability: calibrated probability of pneumonia.
        label: "pneumonia" if probability >= threshold, else "normal".
        grey_zone: True when the probability falls in the band that needs a careful read.
        threshold: the operating threshold used.
        model_sha: SHA-256 of the model file.
        operating_point: the id of the operating point that made the call (``OperatingPoint.id``).
        logit: the model's raw logit, before any calibration (what a site profile is fitted on).
        info: facts about the decoded image, including its warnings.
        ood: True when the out-of-distribution gate says the image does not look like the
            training X-rays (the call is then not meaningful); None when no gate is loaded.
        ood_score: the gate's score (above 1: out of distribution); None without a gate.
        ood_grade: the score read in words (``ood.OOD_GRADES``): "in_distribution", "unusual"
            (near the cut on either side: the call is shown with a note) or "outside" (the call
            is hidden); None without a gate.
        subtype: the radiographic pattern ("bacterial-like", "viral-like", "undetermined";
            ``subtype.PATTERNS``), only for a film called pneumonia that the gate does not flag;
            None when not applicable, when the pattern is off, or the model has no subtype network.
        subtype_probability: calibrated probability of the viral pattern; None with ``subtype``.
        subtype_logit: the subtype network's raw logit; None with ``subtype``.
    """

    probability: float
    label: str
    grey_zone: bool
    threshold: float
    model_sha: str
    info: ImageInfo
    operating_point: str
    logit: float
    ood: bool | None = None
    ood_score: float | None = None
    ood_grade: str | None = None
    subtype: str | None = None
    subtype_probability: float | None = None
    subtype_logit: float | None = None

    @property
    def subtype_applies(self) -> bool:
        """Whether the film is one the pattern is for: called pneumonia, not flagged by the gate."""
        return self.label == "pneumonia" and self.ood is not True

    def to_record(self, file: str) -> dict:
        """The ``predict`` command's JSON object (``PREDICTION_SCHEMA_VERSION``)."""
        return {
            "schema_version": PREDICTION_SCHEMA_VERSION,
            "file": file,
            "probability": round(self.probability, 6),
            "label": self.label,
            "grey_zone": self.grey_zone,
            "threshold": round(self.threshold, 6),
            "operating_point": self.operating_point,
            "model_sha": self.model_sha,
            "warnings": list(self.info.warnings),
            "ood": self.ood,
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
            "ood_grade": self.ood_grade,
            "age_years": self.info.age_years,
            "subtype": self.subtype,
            "subtype_probability": None if self.subtype_probability is None else round(self.subtype_probability, 6),
        }


class Predictor:
    """A loaded model with its metadata; read-only, safe to share between users.

    Args:
        model: the model's exported graph (``onnx_model.OnnxModel``: ONNX Runtime, no TensorFlow),
            or a Keras model mapping (batch, size, size, 1) images to (batch, 1) logits (TensorFlow).
        metadata: the model's metadata (input size, temperature, threshold, grey zone).
        batch_size: images per forward pass.
        gate: the model's out-of-distribution gate, or None to score without one.
        operating_point: how logits become calls; None for the one shipped in the metadata.
        subtype: the subtype pattern's network, asked about every film called pneumonia that the
            gate does not flag; None for no pattern (the fields stay null).

    Raises:
        ModelFileError: the gate was fitted for another model.
        SiteProfileError: the operating point was fitted for another model.
    """

    def __init__(
        self,
        model: OnnxModel | keras.Model,
        metadata: ModelMetadata,
        batch_size: int = DEFAULT_BATCH_SIZE,
        gate: OodGate | None = None,
        operating_point: OperatingPoint | None = None,
        subtype: SubtypeModel | None = None,
    ):
        if subtype is not None and subtype.input_size != metadata.input_size:
            raise ModelFileError(
                f"The subtype pattern's model takes {subtype.input_size} px inputs, the model {metadata.input_size} px: "
                "train it for this model with `python -m pneumo_model train-subtype`."
            )
        self.subtype = subtype
        if gate is not None and gate.model_sha256 != metadata.model_sha256:
            raise ModelFileError(
                f"The out-of-distribution gate was fitted for model {gate.model_sha256[:12]}, not for "
                f"{metadata.model_sha256[:12]}. Fit it again with `python -m pneumo_model ood fit`."
            )
        self.model = model
        self.metadata = metadata
        self.batch_size = batch_size
        self.gate = gate
        # Every probability, label and grey-zone flag comes from the operating point, never from the
        # metadata directly, so a site profile replaces all three at once.
        self.operating_point = OperatingPoint.shipped(metadata) if operating_point is None else operating_point
        if self.operating_point.model_sha256 != metadata.model_sha256:
            raise SiteProfileError(
                f"The site profile {self.operating_point.short_id} was fitted for model "
                f"{self.operating_point.model_sha256[:12]}, not for the model in use ({metadata.model_sha256[:12]}). "
                "Fit a new profile for this model with `python -m pneumo_model site fit`."
            )
        layers = None if gate is None else gate.layers
        if isinstance(model, OnnxModel):
            self._forward = _OnnxForward(model, batch_size, layers)
        else:
            self._forward = _KerasForward(model, metadata.input_size, batch_size, layers)

    @classmethod
    def from_file(
        cls,
        model_path: Path = DEFAULT_MODEL_PATH,
        batch_size: int = DEFAULT_BATCH_SIZE,
        site: Path | None = None,
        runtime: str = "onnx",
        threads: int | None = None,
        subtype: bool | None = None,
    ) -> "Predictor":
        """Loads the model, its metadata and, when ``<model>.ood.npz`` is beside it, its gate.

        Args:
            site: a site profile JSON (``site.SiteProfile``) whose operating point replaces the
                shipped one; None for the shipped one.
            runtime: "onnx" scores with the exported graph ``<model>.onnx`` on ONNX Runtime, without
                importing TensorFlow (the app and the run-time commands); "keras" loads the
                ``.keras`` file on TensorFlow (the lab). Never one in place of the other.
            threads: ONNX Runtime's threads per pass (None: its default, the cores); "keras" ignores it.
            subtype: load the subtype pattern's network beside the model (``<model>.subtype.keras``);
                None follows ``PNEUMO_SUBTYPE`` and its default (``SubtypeModel.beside``).

        Raises:
            ModelFileError: the model files (or, for "onnx", its exported graph) are missing or altered.
            SiteProfileError: the profile is unreadable, altered or made for another model.
            ConfigError: an unknown runtime.
        """
        if runtime not in RUNTIMES:
            raise ConfigError(f"Unknown runtime '{runtime}'. Choose one of: {', '.join(RUNTIMES)}.")
        if runtime == "onnx":
            metadata = check_model_file(model_path)
            model = OnnxModel.load(model_path, metadata, threads)
        else:
            model, metadata = load_model(model_path)
        path = gate_path(model_path)
        gate = OodGate.load(path) if path.is_file() else None
        operating_point = None
        if site is not None:
            from .site import SiteProfile

            operating_point = SiteProfile.load(site).operating_point()
        return cls(model, metadata, batch_size, gate, operating_point, SubtypeModel.beside(model_path, runtime, threads, subtype))

    def with_operating_point(self, operating_point: OperatingPoint | None) -> "Predictor":
        """The same model and gate (shared, not copied) with another operating point (None: the shipped one).

        Raises:
            SiteProfileError: the operating point was fitted for another model.
        """
        return Predictor(self.model, self.metadata, self.batch_size, self.gate, operating_point, self.subtype)

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    @property
    def runtime(self) -> str:
        """What scores: "onnx" (the exported graph on ONNX Runtime) or "keras" (TensorFlow)."""
        return "onnx" if isinstance(self.model, OnnxModel) else "keras"

    @property
    def threshold(self) -> float:
        return self.operating_point.threshold

    @property
    def grey_zone(self):
        return self.operating_point.grey_zone

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Raw logits for a batch of model inputs.

        Args:
            images: (n, size, size, 1) float32 in [0, 1] (as ``preprocess`` returns) or uint8.

        Returns:
            (n,) float64 logits.
        """
        return self._forward.logits(images)  # (n,)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of pneumonia at the operating point, shape (n,)."""
        return self.operating_point.probabilities(self.logits(images))

    def label_for(self, probability: float) -> str:
        return self.operating_point.label(probability)

    def predict_inputs(self, model_inputs: np.ndarray, infos: list[ImageInfo]) -> list[Prediction]:
        """Scores a batch of preprocessed images (n, size, size, 1), and asks the gate about each.

        Args:
            model_inputs: as ``preprocess`` returns them, stacked.
            infos: the ``ImageInfo`` of each (its colour spread feeds the gate).
        """
        if len(model_inputs) != len(infos):
            raise ValueError(f"{len(model_inputs)} images but {len(infos)} infos")
        if len(infos) == 0:
            return []
        ood_scores = [None] * len(infos)
        if self.gate is None:
            logits = self.logits(model_inputs)
        else:
            logits, summaries = self._forward.logits_and_summaries(model_inputs)
            colour = np.array([info.colour_spread for info in infos])
            ood_scores = [float(score) for score in self.gate.scores(model_inputs, summaries, colour)]
        point = self.operating_point
        probabilities = point.probabilities(logits)  # (n,)
        predictions = [
            Prediction(
                probability=float(probability),
                label=point.label(float(probability)),
                grey_zone=point.in_grey_zone(float(probability)),
                threshold=point.threshold,
                model_sha=self.metadata.model_sha256,
                info=info,
                operating_point=point.id,
                logit=float(logit),
                ood=None if score is None else not score <= 1.0,  # a NaN score is flagged
                ood_score=score,
                ood_grade=None if score is None else self.gate.grade(score),
            )
            for probability, logit, info, score in zip(probabilities, logits, infos, ood_scores)
        ]
        return self._with_subtype(model_inputs, predictions)

    def _with_subtype(self, model_inputs: np.ndarray, predictions: list[Prediction]) -> list[Prediction]:
        """The predictions, each film the pattern applies to with its pattern (one batched pass)."""
        rows = [index for index, prediction in enumerate(predictions) if prediction.subtype_applies]
        if self.subtype is None or not rows:
            return predictions
        predictions = list(predictions)
        for index, call in zip(rows, self.subtype.calls(model_inputs[rows])):
            predictions[index] = dataclasses.replace(
                predictions[index], subtype=call.pattern, subtype_probability=call.probability, subtype_logit=call.logit
            )
        return predictions

    def predict_input(self, model_input: np.ndarray, info: ImageInfo) -> Prediction:
        """Scores one preprocessed image (size, size, 1), and asks the gate whether it is in distribution."""
        return self.predict_inputs(model_input[np.newaxis], [info])[0]

    def call(self, image: DecodedImage) -> Prediction:
        """The model's call on a decoded image, with the out-of-distribution gate."""
        return self.predict_input(image.model_input(self.input_size), image.info)

    def calls(self, images: list[DecodedImage]) -> list[Prediction]:
        """``call`` on many images, in batched forward passes (as one by one, up to float32 round-off: 1e-6)."""
        if not images:
            return []
        inputs = np.stack([image.model_input(self.input_size) for image in images])  # (n, size, size, 1)
        return self.predict_inputs(inputs, [image.info for image in images])

    def call_on_crop(self, image: DecodedImage, box, limits: CropLimits = CropLimits()) -> Prediction:
        """The call, with the gate, on the image cropped to ``box`` (``crop.apply_crop``'s coordinates).

        The rescore rule is not applied here: ``rescore`` applies it, and the Crop page asks
        ``rescore_refusal`` before it calls this.

        Raises:
            ConfigError: the box does not fit the image or keeps too little of it.
        """
        return self._call_edited(image, box, None, limits)

    def call_masked(
        self,
        image: DecodedImage,
        markers: MarkerResult | None = None,
        box=None,
        limits: CropLimits = CropLimits(),
        settings: MarkerSettings = MarkerSettings(),
    ) -> Prediction:
        """The call, with the gate, on the image with its burned-in markers painted out, and
        cropped to ``box`` when one is given (``crop.edit_pixels``).

        Args:
            image: the decoded image (not modified).
            markers: ``crop.find_markers(image.pixels)`` when already made (the app keeps it);
                None finds them here with ``settings``.
            box: a crop box, or None for the whole image.

        Raises:
            ConfigError: the box does not fit the image or keeps too little of it, or
                ``markers`` were found on another image.
        """
        if markers is None:
            markers = find_markers(image.pixels, settings)
        return self._call_edited(image, box, markers, limits)

    def calls_on_crops(self, jobs, limits: CropLimits = CropLimits()) -> list[Prediction]:
        """``call_on_crop`` on many ``(image, box)`` pairs, in batched forward passes (as one by one,
        up to float32 round-off). The rescore rule is not applied here (``rescore`` applies it).

        Raises:
            ConfigError: a box does not fit its image or keeps too little of it.
        """
        jobs = list(jobs)
        if not jobs:
            return []
        inputs = np.stack([preprocess(edit_pixels(image.pixels, box, None, limits), self.input_size) for image, box in jobs])
        return self.predict_inputs(inputs, [image.info for image, _ in jobs])

    def _call_edited(self, image: DecodedImage, box, markers: MarkerResult | None, limits: CropLimits) -> Prediction:
        # The one path of every edited call: edit the decoded pixels, preprocess, call with the
        # gate and the active operating point (the decoded image's facts feed the gate).
        return self.predict_input(preprocess(edit_pixels(image.pixels, box, markers, limits), self.input_size), image.info)

    @staticmethod
    def rescore_refusal(
        image: DecodedImage,
        box,
        lungs: DiaphragmResult | None = None,
        rule: RescoreRule = RescoreRule(),
        limits: CropLimits = CropLimits(),
    ) -> str | None:
        """Why ``box`` may not be rescored on ``image`` (``crop.check_rescore``, docs/crop_rule.md), or
        None when it may: the one rule of the Crop page and the ``crop`` command.

        Args:
            lungs: ``crop.find_diaphragm(image.pixels)`` when already made (the app keeps it);
                None looks for the lungs here.

        Raises:
            ConfigError: the box does not fit the image or keeps too little of it.
        """
        if box is None:
            return None
        height, width = image.pixels.shape[:2]
        box = validate_box(box, width, height, limits)
        if lungs is None:
            lungs = find_diaphragm(image.pixels)
        return check_rescore(box, width, height, lungs, rule)

    def rescore(
        self,
        image: DecodedImage,
        box=None,
        limits: CropLimits = CropLimits(),
        markers: MarkerResult | None = None,
        *,
        lungs: DiaphragmResult | None = None,
        rule: RescoreRule = RescoreRule(),
    ) -> RescoreResult:
        """The whole image and its edit (a crop, the markers painted out, or both), both called
        with the gate, side by side; or, for a crop that breaks the rescore rule
        (``rescore_refusal``), the whole image's call and the refusal, with no call after.

        Args:
            box: a crop box, or None for no crop.
            markers: ``crop.find_markers(image.pixels)`` to paint them out, or None.
            lungs: the whole image's ``find_diaphragm``, when already made.
            rule: when a crop may be rescored.

        Raises:
            ConfigError: neither a box nor markers are given (nothing to compare), the box does
                not fit the image or keeps too little of it, or the markers are another image's.
        """
        if box is None and markers is None:
            raise ConfigError("Nothing to rescore: give a crop box, the markers to paint out, or both.")
        reason = self.rescore_refusal(image, box, lungs, rule, limits)
        if reason is not None:
            return RescoreResult.refusal(self.call(image), box, reason, markers)
        after = self._call_edited(image, box, markers, limits)
        return RescoreResult.from_calls(self.call(image), after, box, markers)

    def predict_source(self, source: str | Path | bytes, limits: ImageLimits = ImageLimits()) -> Prediction:
        """Decodes a file or its bytes (``DecodedImage.decode``) and calls it.

        Raises:
            InvalidImageError: the image cannot be used (see ``load_image``).
        """
        return self.call(DecodedImage.decode(source, limits))


class _KerasForward:
    """The TensorFlow path (the lab's): one traced graph for every batch size, far faster than
    ``model.predict`` on small batches, and the gate's ``ActivationSummaries``."""

    def __init__(self, model, size: int, batch_size: int, gate_layers: tuple[str, ...] | None):
        import tensorflow as tf

        from .ood import ActivationSummaries

        self._tf = tf
        self.batch_size = batch_size
        self._graph = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32)],
        )
        # Single images go through one pass that also returns what the gate needs.
        self._summaries = None if gate_layers is None else ActivationSummaries(model, gate_layers, batch_size)

    def logits(self, images: np.ndarray) -> np.ndarray:
        tf = self._tf
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        outputs = [
            self._graph(tf.constant(images[start : start + self.batch_size], dtype=tf.float32)).numpy()
            for start in range(0, len(images), self.batch_size)
        ]
        if not outputs:
            return np.empty(0, dtype=np.float64)
        return np.concatenate(outputs).reshape(-1).astype(np.float64)  # (n,)

    def logits_and_summaries(self, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        return self._summaries(images)


class _OnnxForward:
    """The ONNX Runtime path: logits, and the gate's summaries from the same graph's outputs."""

    def __init__(self, model: OnnxModel, batch_size: int, gate_layers: tuple[str, ...] | None):
        self.model = model
        self.batch_size = batch_size
        self.gate_layers = gate_layers
        model.check_summaries(gate_layers or ())  # refused when loading, as the Keras path refuses a missing layer

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.model.logits(images, self.batch_size)

    def logits_and_summaries(self, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        return self.model.logits_and_summaries(images, self.gate_layers, self.batch_size)


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
