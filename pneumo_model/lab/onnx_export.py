"""Exports a saved Keras model to the ONNX graph the run-time side serves (``onnx_model``).

TensorFlow and Keras train, evaluate and own the model; the app and the run-time commands score
with ONNX Runtime, which starts in a fraction of TensorFlow's time and memory. The export writes
``<model>.onnx`` and its record ``<model>.onnx.json`` beside the ``.keras`` file; the weights, the
model's SHA-256 and its metadata are not touched.

One graph, every output the run time needs, so that no Keras code is needed to score, gate or
explain an image:

* ``logit`` (batch, 1): the network's logit.
* ``features`` (batch, h, w, c): the last feature layer (the Grad-CAM target).
* ``cam`` (batch, h, w): the class activation map, the feature maps weighted by the dense
  head's weights over ``h * w``. For a head of global average pooling, dropout and one dense
  unit this is exactly Grad-CAM's weighted sum before its ReLU (the logit's gradient with
  respect to each feature cell is the dense weight over ``h * w``, whatever the image), so the
  run time needs no gradients. A model whose head is anything else is refused.
* ``summary_<layer>`` (batch, 5c): the out-of-distribution gate's summary of each layer it
  reads (``ood.summarise_activation``, the same TensorFlow ops as the Keras path).

Converted by tf2onnx from a traced ``tf.function`` with an explicit input signature (Keras 3's
``model.export(format="onnx")`` refuses a loaded model that has not been called).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from ..artifacts import ModelMetadata, load_model
from ..errors import ModelFileError
from ..onnx_model import (
    CAM,
    FEATURES,
    LOGIT,
    OnnxModel,
    OnnxRecord,
    onnx_path,
    onnx_record_path,
    summary_output,
)
from ..ood import OodConfig, OodGate, check_summary_layers, gate_path, summarise_activation
from ..paths import file_sha256

OPSET = 17
# The exported graph must give the Keras model's logits to this (float32 round-off of a
# different kernel order); the export is refused otherwise.
LOGIT_TOLERANCE = 1e-5


def cam_channel_weights(model: keras.Model, layer_names: Sequence[str]) -> list[np.ndarray]:
    """Grad-CAM's channel weights of each target layer, read from the dense head.

    Each target layer must feed global average pooling, then (optionally) dropout, then one
    linear dense unit whose output is the model's logit, or one of the logits an
    ``ensemble_logit`` Average layer takes the mean of. Then the logit's gradient with respect to
    feature cell (i, j, c) is ``w_c / (h * w)`` (over the number of members for an ensemble):
    the same for every image, so Grad-CAM equals the class activation map built from these.

    Returns:
        One (c,) float32 array per layer.

    Raises:
        ModelFileError: a head is anything else (Grad-CAM would then need gradients at run time).
    """
    consumers: dict[str, list] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                consumers.setdefault(tensor._keras_history[0].name, []).append(layer)
    output_layer = model.outputs[0]._keras_history[0]
    members = len(layer_names)

    def refuse(name: str, why: str) -> ModelFileError:
        return ModelFileError(
            f"The model's head after '{name}' is not global average pooling, dropout and one dense unit ({why}), "
            "so its Grad-CAM is not the class activation map the ONNX run time computes. Serve this model with "
            "TensorFlow (the lab side) or change its head."
        )

    weights = []
    for name in layer_names:
        chain = [name]
        current = model.get_layer(name)
        following = []
        while current is not output_layer:
            after = consumers.get(current.name, [])
            if len(after) != 1:
                raise refuse(name, f"'{current.name}' feeds {len(after)} layers")
            current = after[0]
            following.append(current)
            chain.append(current.name)
        kinds = [type(layer) for layer in following]
        if members > 1:
            if not (isinstance(following[-1], layers.Average) and len(following[-1]._inbound_nodes[0].input_tensors) == members):
                raise refuse(name, "the members' logits are not averaged")
            kinds = kinds[:-1]
        if kinds not in ([layers.GlobalAveragePooling2D, layers.Dense], [layers.GlobalAveragePooling2D, layers.Dropout, layers.Dense]):
            raise refuse(name, " -> ".join(chain))
        dense = following[len(kinds) - 1]
        activation = keras.activations.serialize(dense.activation)
        activation = activation if isinstance(activation, str) else activation.get("config", {}).get("name", activation)
        if dense.units != 1 or activation != "linear":
            raise refuse(name, f"the dense layer '{dense.name}' has {dense.units} units and activation {activation}")
        kernel = np.asarray(dense.get_weights()[0], dtype=np.float64).reshape(-1)  # (c,)
        h, w = model.get_layer(name).output.shape[1:3]
        weights.append((kernel / (h * w * members)).astype(np.float32))
    return weights


def serving_function(model: keras.Model, metadata: ModelMetadata, summary_layers: Sequence[str]):
    """The traced function the export converts: one image batch -> every run-time output.

    Returns:
        The ``tf.function``, its input signature, and why the graph has no ``cam`` and
        ``features`` outputs (None when it has them: the head makes the map exact).
    """
    names = (metadata.gradcam_layer,) if isinstance(metadata.gradcam_layer, str) else tuple(metadata.gradcam_layer or ())
    check_summary_layers(model, tuple(summary_layers))
    cam_refusal = None
    channel_weights = []
    if not names:
        cam_refusal = "The model names no Grad-CAM layer in its metadata."
    else:
        try:
            channel_weights = cam_channel_weights(model, names)  # numpy: constants of the traced graph
        except ModelFileError as error:
            cam_refusal = str(error)
    if cam_refusal is not None:
        names = ()
    targets = [model.get_layer(name).output for name in names]
    summarised = [model.get_layer(name).output for name in summary_layers]
    network = keras.Model(model.inputs, [model.outputs[0], *targets, *summarised])
    size = metadata.input_size

    def serve(image):
        logit, *maps = tf.nest.flatten(network(image, training=False))  # a one-output model gives a tensor, not a list
        features, summaries = maps[: len(names)], maps[len(names) :]
        # Grad-CAM's weighted sum before its ReLU: sum over members of einsum(F_k, w_k), (batch, h, w).
        outputs = {LOGIT: logit}
        if features:
            cam = tf.add_n([tf.einsum("bhwc,c->bhw", f, tf.constant(w)) for f, w in zip(features, channel_weights)])
            outputs.update({CAM: cam, FEATURES: tf.concat(features, axis=3)})
        for layer, activation in zip(summary_layers, summaries):
            outputs[summary_output(layer)] = summarise_activation(activation)
        return outputs

    signature = [tf.TensorSpec((None, size, size, 1), tf.float32, name="image")]
    return tf.function(serve, input_signature=signature), signature, cam_refusal


def summary_layers_for(model: keras.Model, model_path: Path) -> tuple[str, ...]:
    """The layers the gate beside the model reads; without a gate, those of the default gate's
    layers that the model has (a gate fitted later reads them)."""
    path = gate_path(model_path)
    if path.is_file():
        return OodGate.load(path).layers
    known = {layer.name for layer in model.layers}
    return tuple(name for name in OodConfig().layers if name in known)


def export_onnx(model_path: Path, check_images: np.ndarray | None = None) -> OnnxRecord:
    """Writes ``<model>.onnx`` and its record beside a saved model, and checks the graph against it.

    Args:
        model_path: the ``.keras`` file (with its metadata JSON beside it).
        check_images: (n, size, size, 1) float32 in [0, 1] to compare both engines on; None uses
            16 seeded random images.

    Returns:
        The record written to ``<model>.onnx.json``.

    Raises:
        ModelFileError: the model cannot be loaded, or the exported graph's logits differ from
            Keras' by more than ``LOGIT_TOLERANCE``. A model whose head makes the class
            activation map differ from Grad-CAM is exported without ``cam`` and ``features``
            (the record says why, and ``GradCam`` on the graph refuses with that reason).
    """
    import onnx
    import tf2onnx

    model_path = Path(model_path)
    model, metadata = load_model(model_path)
    summary_layers = summary_layers_for(model, model_path)
    function, signature, cam_refusal = serving_function(model, metadata, summary_layers)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET)
    proto.producer_name = "pneumo_model"
    proto.doc_string = f"{metadata.description} {metadata.short_sha}, exported for ONNX Runtime"
    for key, value in {"model_sha256": metadata.model_sha256, "architecture": metadata.architecture}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    out = onnx_path(model_path)
    out.write_bytes(proto.SerializeToString())

    size = metadata.input_size
    if check_images is None:
        check_images = np.random.default_rng(0).random((16, size, size, 1), dtype=np.float32)
    expected = model(tf.constant(check_images), training=False).numpy().reshape(-1)
    record = OnnxRecord(
        model_sha256=metadata.model_sha256,
        onnx_sha256=file_sha256(out),
        opset=OPSET,
        summary_layers=tuple(summary_layers),
        gradcam_layer=metadata.gradcam_layer,
        parameters=int(model.count_params()),
        exporter=f"tf2onnx {tf2onnx.__version__}, onnx {onnx.__version__}, tensorflow {tf.__version__}, keras {keras.__version__}",
        max_logit_difference=0.0,
        cam_refusal=cam_refusal,
    )
    onnx_record_path(model_path).write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
    exported = OnnxModel.load(model_path, metadata)
    difference = float(np.max(np.abs(exported.logits(check_images) - expected)))
    if not difference <= LOGIT_TOLERANCE:
        out.unlink()
        onnx_record_path(model_path).unlink()
        raise ModelFileError(
            f"The exported ONNX graph's logits differ from the Keras model's by {difference:.3g} "
            f"(more than {LOGIT_TOLERANCE:g}); the export was removed. Check the tf2onnx and onnxruntime versions."
        )
    record = OnnxRecord(**{**record.__dict__, "max_logit_difference": float(f"{difference:.3g}")})
    onnx_record_path(model_path).write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
    return record


def parity(model_path: Path, paths: Sequence[Path], with_cam: bool = True) -> dict:
    """Both engines on the same films: how far the exported graph's answers are from Keras'.

    Every film goes through the one pipeline (``evaluation.call_files``: decoded once, called
    with the gate and the shipped operating point) once per runtime.

    Returns:
        ``films``; the largest differences in logit, probability, gate score (relative) and raw
        Grad-CAM map (in logit units, and over the heat-map scale's full colour ``S``); and the
        counts of films whose call, grey-zone flag, gate flag or gate grade differ.
    """
    from ..explain import GradCam, HeatmapScale, heatmap_scale_path
    from ..prediction import Predictor
    from .evaluation import call_files

    onnx = Predictor.from_file(Path(model_path), runtime="onnx")
    tensorflow = Predictor.from_file(Path(model_path), runtime="keras")
    served, inputs = call_files(onnx, paths)
    reference, _ = call_files(tensorflow, paths)

    def largest(values) -> float:
        return float(np.max(values)) if len(values) else 0.0

    scores = [(a.ood_score, b.ood_score) for a, b in zip(served, reference) if a.ood_score is not None]
    result = {
        "films": len(paths),
        "max_abs_logit_difference": largest([abs(a.logit - b.logit) for a, b in zip(served, reference)]),
        "max_abs_probability_difference": largest([abs(a.probability - b.probability) for a, b in zip(served, reference)]),
        "max_rel_gate_score_difference": largest([abs(a - b) / max(abs(b), 1e-12) for a, b in scores]),
        "changed_calls": sum(a.label != b.label for a, b in zip(served, reference)),
        "changed_grey_zone_flags": sum(a.grey_zone != b.grey_zone for a, b in zip(served, reference)),
        "changed_gate_flags": sum(a.ood != b.ood for a, b in zip(served, reference)),
        "changed_gate_grades": sum(a.ood_grade != b.ood_grade for a, b in zip(served, reference)),
    }
    if with_cam:
        onnx_cam = GradCam(onnx.model, onnx.metadata.gradcam_layer)
        tensorflow_cam = GradCam(tensorflow.model, tensorflow.metadata.gradcam_layer)
        difference = 0.0
        for start in range(0, len(inputs), 64):
            chunk = inputs[start : start + 64]
            difference = max(difference, largest(np.abs(onnx_cam.raw_heatmaps(chunk) - tensorflow_cam.raw_heatmaps(chunk)).reshape(-1)))
        scale = HeatmapScale.load(heatmap_scale_path(model_path), onnx.metadata.model_sha256)
        result["max_abs_cam_difference"] = difference
        result["max_cam_difference_over_scale"] = difference / scale.gradcam_scale
    return result
