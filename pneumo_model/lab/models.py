"""Registry of network architectures.

Every network takes a (size, size, 1) float image in [0, 1] and returns one logit for
pneumonia; temperature and sigmoid are applied by the package (``calibration``), not by the
network. All are flat functional graphs built from stock Keras layers, so they load in Keras
safe mode and Grad-CAM can reach any named layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
from keras import layers

from ..errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    """One registered network.

    Attributes:
        name: registry key, stored in the model's metadata.
        build: function ``(input_size) -> keras.Model`` returning an uncompiled model.
        gradcam_layer: name of the last spatial layer, the Grad-CAM target (None for
            networks without a spatial feature map).
        description: one line for reports.
    """

    name: str
    build: Callable[[int], keras.Model]
    gradcam_layer: str | None
    description: str


def _input(size: int) -> keras.KerasTensor:
    return keras.Input(shape=(size, size, 1), name="image")


def _centre(x):
    # Inputs are in [0, 1]; centring helps the dense baselines and costs nothing.
    return layers.Rescaling(2.0, offset=-1.0, name="centre")(x)


def build_dense(size: int, dropout: float = 0.0) -> keras.Model:
    """Dense baseline: flattened pixels, two hidden layers."""
    inputs = _input(size)
    x = layers.Flatten(name="flatten")(_centre(inputs))  # (batch, size*size)
    x = layers.Dense(128, activation="relu", name="dense1")(x)
    if dropout:
        x = layers.Dropout(dropout, name="drop1")(x)
    x = layers.Dense(64, activation="relu", name="dense2")(x)
    if dropout:
        x = layers.Dropout(dropout, name="drop2")(x)
    logit = layers.Dense(1, name="logit")(x)  # (batch, 1)
    return keras.Model(inputs, logit, name="dense_dropout" if dropout else "dense")


def build_cnn_small(size: int) -> keras.Model:
    """Small CNN: two conv blocks and one dense layer."""
    inputs = _input(size)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(_centre(inputs))
    x = layers.MaxPooling2D(2, name="pool1")(x)  # (batch, size/2, size/2, 32)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)  # (batch, size/4, size/4, 64)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense1")(x)
    logit = layers.Dense(1, name="logit")(x)
    return keras.Model(inputs, logit, name="cnn_small")


def build_cnn_deep(size: int) -> keras.Model:
    """Deeper CNN of the published notebooks: 3 double-conv blocks (32/64/128), dense 1024/512/128, dropout 0.3."""
    inputs = _input(size)
    x = _centre(inputs)
    for index, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{index}_conv1")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{index}_conv2")(x)
        x = layers.MaxPooling2D(2, name=f"block{index}_pool")(x)
    # (batch, size/8, size/8, 128)
    x = layers.Flatten(name="flatten")(x)
    for units in (1024, 512, 128):
        x = layers.Dense(units, activation="relu", name=f"dense{units}")(x)
        x = layers.Dropout(0.3, name=f"drop{units}")(x)
    logit = layers.Dense(1, name="logit")(x)
    return keras.Model(inputs, logit, name="cnn_deep")


PNEUMONET_WIDTHS = (48, 96, 160)


def build_pneumonet(size: int, widths: tuple[int, ...] = PNEUMONET_WIDTHS, dropout: float = 0.3) -> keras.Model:
    """Production network for a 2-core CPU: strided stem, separable conv blocks, global pooling.

    At 128 px: a strided stem and one plain convolution at 64 px, pooled to 32 px, then one
    separable double-conv block per width with max pooling between blocks, so the last block
    (the Grad-CAM target ``features``) is 8 x 8. About 70 k parameters; measured here at about
    400 images/s forward and 90 images/s training on 2 cores (architecture sweep in docs/model.md).
    """
    inputs = _input(size)
    x = _centre(inputs)
    x = layers.Conv2D(24, 3, strides=2, padding="same", use_bias=False, name="stem_conv1")(x)
    x = layers.BatchNormalization(name="stem_bn1")(x)
    x = layers.ReLU(name="stem_relu1")(x)  # (batch, size/2, size/2, 24)
    x = layers.Conv2D(24, 3, padding="same", use_bias=False, name="stem_conv2")(x)
    x = layers.BatchNormalization(name="stem_bn2")(x)
    x = layers.ReLU(name="stem_relu2")(x)
    x = layers.MaxPooling2D(2, name="stem_pool")(x)  # (batch, size/4, size/4, 24)
    last = len(widths) - 1
    for index, filters in enumerate(widths):
        for part in (1, 2):
            x = layers.SeparableConv2D(
                filters, 3, padding="same", use_bias=False, name=f"block{index}_sep{part}"
            )(x)
            x = layers.BatchNormalization(name=f"block{index}_bn{part}")(x)
            name = "features" if (index == last and part == 2) else f"block{index}_relu{part}"
            x = layers.ReLU(name=name)(x)
        if index < last:
            x = layers.MaxPooling2D(2, name=f"block{index}_pool")(x)
    # (batch, size/16, size/16, widths[-1])
    x = layers.GlobalAveragePooling2D(name="pool")(x)  # (batch, widths[-1])
    x = layers.Dropout(dropout, name="dropout")(x)
    logit = layers.Dense(1, name="logit")(x)  # (batch, 1)
    return keras.Model(inputs, logit, name="pneumonet")


def member_layer_name(name: str, member: int) -> str:
    """The name of a member network's layer inside an ensemble: the first keeps its names."""
    return f"m{member}_{name}" if member else name


def average_logits(networks: list[keras.Model]) -> keras.Model:
    """One flat functional graph whose logit is the mean of the networks' logits (a deep ensemble).

    Every layer of every network is copied, with its weights, onto one shared input, so the
    result has no nested models (Grad-CAM and the out-of-distribution gate read inner layers by
    name). The first network keeps its layer names; network k's are prefixed ``m{k}_``
    (``member_layer_name``). The networks passed in are not changed.

    Args:
        networks: two or more models with the same input shape, each mapping (batch, H, W, 1)
            to (batch, 1) logits.

    Returns:
        A model mapping (batch, H, W, 1) to (batch, 1) mean logits, output layer ``ensemble_logit``.
    """
    if len(networks) < 2:
        raise ValueError("An ensemble needs at least two networks.")
    shapes = {tuple(network.inputs[0].shape[1:]) for network in networks}
    if len(shapes) != 1:
        raise ValueError(f"The networks of an ensemble must share one input shape; got {sorted(shapes)}.")
    inputs = keras.Input(shape=shapes.pop(), name="image")
    logits = []
    for member, network in enumerate(networks):

        def renamed(layer, member=member):
            return layer.__class__.from_config({**layer.get_config(), "name": member_layer_name(layer.name, member)})

        copy = keras.models.clone_model(network, input_tensors=inputs, clone_function=renamed)
        copy.set_weights(network.get_weights())
        logits.append(copy.outputs[0])
    mean = layers.Average(name="ensemble_logit")(logits)  # (batch, 1)
    return keras.Model(inputs, mean, name=f"ensemble_of_{len(networks)}")


ARCHITECTURES: dict[str, Architecture] = {
    spec.name: spec
    for spec in (
        Architecture("dense", build_dense, None, "Dense baseline: flattened pixels, 2 hidden layers (128, 64)"),
        Architecture(
            "dense_dropout",
            lambda size: build_dense(size, dropout=0.5),
            None,
            "Dense baseline with dropout 0.5",
        ),
        Architecture("cnn_small", build_cnn_small, "conv2", "Small CNN: 2 conv blocks (32, 64) + dense 128"),
        Architecture(
            "cnn_deep",
            build_cnn_deep,
            "block3_conv2",
            "Deeper CNN: 3 double-conv blocks (32/64/128) + dense 1024/512/128, dropout 0.3",
        ),
        Architecture(
            "pneumonet",
            build_pneumonet,
            "features",
            "Production: strided conv stem, 3 separable double-conv blocks (48/96/160), BN, global pooling",
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    """Looks up a registered architecture by name.

    Raises:
        ConfigError: the name is not registered.
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConfigError(f"Unknown architecture '{name}'. Choose one of: {known}.") from None
