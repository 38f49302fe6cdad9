"""The shipped model on ONNX Runtime: what the app and the run-time commands score with.

TensorFlow and Keras train and evaluate the model (the lab side); importing them costs about
5 s and 0.5 GB, against a few milliseconds for the forward pass. The lab exports the saved model
to one ONNX graph (``lab.onnx_export``, ``python -m pneumo_model export-onnx``) written beside
it as ``<model>.onnx`` with its record ``<model>.onnx.json``; this module serves that graph with
ONNX Runtime and never imports TensorFlow or Keras.

The graph's outputs (``lab.onnx_export`` says how each is made): ``logit``, ``features`` (the last
feature layer), ``cam`` (Grad-CAM's weighted sum over that layer, exact for the model's head of
global average pooling, dropout and one dense unit) and ``summary_<layer>`` (the
out-of-distribution gate's summary of each layer it reads).

The record carries the model's SHA-256 and the graph's own: a missing graph, an altered one, or
one made for another model is refused with a message naming the command that makes it, never
replaced by another engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .bundle import ONNX, ONNX_RECORD, onnx_path, onnx_record_path, read_side_json
from .errors import ModelFileError
from .paths import file_sha256

ONNX_SCHEMA_VERSION = 1
EXPORT_COMMAND = ONNX.command
LOGIT, FEATURES, CAM = "logit", "features", "cam"
INPUT = "image"


def summary_output(layer: str) -> str:
    """The graph output holding the gate's summary of ``layer``."""
    return f"summary_{layer}"


@dataclass(frozen=True)
class OnnxRecord:
    """What ``<model>.onnx.json`` says about the graph beside a model.

    Attributes:
        model_sha256: the ``.keras`` file the graph was exported from.
        onnx_sha256: SHA-256 of the ``.onnx`` file as written (an altered graph is refused).
        opset: the ONNX opset it was converted to.
        summary_layers: the layers whose gate summaries it outputs, in order.
        gradcam_layer: the layer(s) its ``features`` and ``cam`` come from (the metadata's).
        parameters: the Keras model's parameter count (the model card shows it).
        exporter: the converter and library versions that wrote it.
        max_logit_difference: the largest |logit difference| against Keras on the export's check images.
        cam_refusal: why the graph has no ``cam`` and ``features`` outputs (the model's head makes
            the class activation map differ from Grad-CAM); None when it has them.
    """

    model_sha256: str
    onnx_sha256: str
    opset: int
    summary_layers: tuple[str, ...]
    gradcam_layer: str | tuple[str, ...] | None
    parameters: int
    exporter: str
    max_logit_difference: float
    cam_refusal: str | None = None
    schema_version: int = ONNX_SCHEMA_VERSION

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["summary_layers"] = list(self.summary_layers)
        if isinstance(self.gradcam_layer, tuple):
            data["gradcam_layer"] = list(self.gradcam_layer)
        return data

    @classmethod
    def load(cls, path: Path, model_sha256: str | None = None) -> "OnnxRecord":
        """Reads a record written by the export.

        Args:
            model_sha256: the model the graph must have been exported from; None accepts any.

        Raises:
            ModelFileError: the file is missing, unreadable, of another version, or made for
                another model.
        """
        path = Path(path)
        data = read_side_json(path, ONNX_RECORD, schemas={ONNX_SCHEMA_VERSION}, model_sha256=model_sha256)
        try:
            layer = data["gradcam_layer"]
            return cls(
                model_sha256=str(data["model_sha256"]),
                onnx_sha256=str(data["onnx_sha256"]),
                opset=int(data["opset"]),
                summary_layers=tuple(str(name) for name in data["summary_layers"]),
                gradcam_layer=tuple(layer) if isinstance(layer, list) else layer,
                parameters=int(data["parameters"]),
                exporter=str(data["exporter"]),
                max_logit_difference=float(data["max_logit_difference"]),
                cam_refusal=data.get("cam_refusal"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelFileError(
                f"The ONNX graph's record '{path}' cannot be read ({error}). Export the model again with `{EXPORT_COMMAND}`."
            ) from None


class OnnxModel:
    """A model's exported graph in an ONNX Runtime session; read-only, safe to share between threads.

    Build it with ``load``. ``Predictor`` takes it in place of a Keras model; ``GradCam`` takes it
    to read the ``cam`` output instead of taking gradients.

    Args:
        session: the ``onnxruntime.InferenceSession`` of the graph.
        record: the graph's record.
        input_size: side of the square input, in pixels.
    """

    def __init__(self, session, record: OnnxRecord, input_size: int):
        self.session = session
        self.record = record
        self.input_size = input_size
        self.output_names = tuple(output.name for output in session.get_outputs())

    @classmethod
    def load(cls, model_path: Path, metadata, threads: int | None = None) -> "OnnxModel":
        """Opens ``<model>.onnx`` after checking it against its record and the model's metadata.

        Args:
            model_path: the ``.keras`` model the graph was exported from (it need not be read).
            metadata: the model's ``ModelMetadata``.
            threads: ONNX Runtime's threads per forward pass; None for its default (the cores).

        Raises:
            ModelFileError: the graph or its record is missing, unreadable, altered, or was
                exported from another model.
        """
        import onnxruntime

        path = onnx_path(model_path)
        again = f"Export it again with `{EXPORT_COMMAND}` (it needs TensorFlow: requirements.txt)."
        if not path.is_file():
            raise ModelFileError(
                f"The ONNX graph '{path}' that the app and the run-time commands score with is missing. "
                f"Export the model with `{EXPORT_COMMAND}` (it needs TensorFlow: requirements.txt)."
            )
        record = OnnxRecord.load(onnx_record_path(model_path), metadata.model_sha256)
        actual = file_sha256(path)
        if actual != record.onnx_sha256:
            raise ModelFileError(
                f"The ONNX graph '{path.name}' does not match its record (SHA-256 {actual[:12]} instead of "
                f"{record.onnx_sha256[:12]}): it was changed or replaced. {again}"
            )
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
        # Idle threads sleep instead of spinning: on 2 shared cores a spinning pool starved the
        # decoding threads and halved the forward passes' own rate (92 against 189 images/s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types for a damaged graph; one message
            raise ModelFileError(f"The ONNX graph '{path.name}' cannot be loaded ({error}). {again}") from None
        stamped = session.get_modelmeta().custom_metadata_map.get("model_sha256")
        if stamped != metadata.model_sha256:
            raise ModelFileError(
                f"The ONNX graph '{path.name}' says it was exported from model {str(stamped)[:12]}, not from the model "
                f"in use ({metadata.model_sha256[:12]}). {again}"
            )
        model = cls(session, record, metadata.input_size)
        expected = (LOGIT, *map(summary_output, record.summary_layers), *((CAM, FEATURES) if record.cam_refusal is None else ()))
        missing = [name for name in expected if name not in model.output_names]
        if missing:
            raise ModelFileError(f"The ONNX graph '{path.name}' lacks the output(s) {', '.join(missing)}. {again}")
        return model

    def count_params(self) -> int:
        """The Keras model's parameter count, as the export recorded it."""
        return self.record.parameters

    def run(self, images: np.ndarray, outputs: Sequence[str], batch_size: int = 32) -> list[np.ndarray]:
        """The named outputs for a batch of model inputs, in passes of ``batch_size``.

        Args:
            images: (n, size, size, 1) float32 in [0, 1], or uint8 (divided by 255).
            outputs: output names (``LOGIT``, ``CAM``, ``FEATURES``, ``summary_output(layer)``).

        Returns:
            One array per name, each with n rows.
        """
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (self.input_size, self.input_size, 1):
            raise ValueError(f"expected model inputs of shape (n, {self.input_size}, {self.input_size}, 1); got {images.shape}")
        names = list(outputs)
        if len(images) == 0:
            shapes = {output.name: output.shape for output in self.session.get_outputs()}
            return [np.empty((0, *[d for d in shapes[name][1:]]), dtype=np.float32) for name in names]
        parts = [self.session.run(names, {INPUT: images[start : start + batch_size]}) for start in range(0, len(images), batch_size)]
        return [np.concatenate([part[index] for part in parts]) for index in range(len(names))]

    def logits(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(n,) float64 logits."""
        if len(images) == 0:
            return np.empty(0, dtype=np.float64)
        (logit,) = self.run(images, [LOGIT], batch_size)
        return logit.reshape(-1).astype(np.float64)

    def check_summaries(self, layers: Sequence[str]) -> None:
        """Refuses gate layers the graph has no summary of.

        Raises:
            ModelFileError: the gate was refitted on other layers after the export.
        """
        missing = [layer for layer in layers if summary_output(layer) not in self.output_names]
        if missing:
            raise ModelFileError(
                f"The ONNX graph has no summary of layer(s) {', '.join(missing)} that the out-of-distribution gate "
                f"reads (the gate was fitted after the export). Export the model again with `{EXPORT_COMMAND}`."
            )

    def logits_and_summaries(
        self, images: np.ndarray, layers: Sequence[str], batch_size: int = 32
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(n,) float64 logits and one (n, 5c) gate summary per layer, in one pass (``ood.ActivationSummaries``'s output).

        Raises:
            ModelFileError: the graph has no summary of a layer the gate reads (the gate was
                refitted on other layers after the export).
        """
        self.check_summaries(layers)
        if len(images) == 0:
            raise ValueError("no images to summarise")
        logit, *summaries = self.run(images, [LOGIT, *map(summary_output, layers)], batch_size)
        return logit.reshape(-1).astype(np.float64), summaries

    def cam(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(n, h, w) float32: Grad-CAM's weighted sum of the last feature layer, before its ReLU."""
        (cells,) = self.run(images, [CAM], batch_size)
        return cells
