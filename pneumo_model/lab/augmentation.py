"""Training-time augmentation, applied to whole batches inside the tf.data pipeline.

It lives here and not in the saved model, so the shipped model is a plain graph. One affine
warp per image does rotation, zoom, a change of aspect ratio, shift and the lower crop (keeping the top part of the
image and stretching it back to full height, exactly what a diaphragm crop followed by
``preprocess`` produces); then brightness, contrast and gamma. No left-right flip: the heart
is on the left and a flipped chest is not a real radiograph.

The aspect-ratio change matters most. The data set's originals were squashed to a square, and
NORMAL originals are wider than PNEUMONIA ones (width/height about 1.22 against 1.47-1.52), so
in a squashed image the anatomy of a pneumonia case looks narrower. A model trained without
this augmentation learns that cue: on validation, narrowing the anatomy by 20 % took the first
shipped model's specificity from 0.99 to 0.46 (``pneumo_model.lab.stress``). Drawing the aspect
change at random makes the cue useless for training. A random loss of resolution does the same
for image size (NORMAL originals are also larger). Edges are filled by reflection, so a change
of framing does not add black bands that real images do not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random changes (uniformly drawn per image).

    Attributes:
        max_rotation_deg: rotation in [-max, +max] degrees.
        zoom: scale factor range; above 1 zooms in.
        max_aspect: horizontal / vertical scale ratio drawn log-uniformly in [1/max, max].
        max_shift: shift as a fraction of the image side, each axis.
        lower_crop_probability: share of images whose lower part is cut off.
        lower_crop_keep: range of the kept top fraction when cropping.
        brightness: added offset range.
        contrast: contrast factor range around the image mean.
        gamma: gamma range.
        blur_probability: share of images whose resolution is lowered.
        blur_scale: range of the intermediate size, as a fraction of the side.
        class_aspect: ratio by which the anatomy of a pneumonia image is made wider than that of
            a normal one on average, on top of the random change (pneumonia widened by its
            square root, normals narrowed by it; 1 changes nothing). Set to the ratio of the
            classes' original width / height (1.52 / 1.22, about 1.25, over 1,566 train
            originals), it cancels the class-correlated squash instead of only blurring it: the
            apparent aspect of the anatomy then has the same distribution in both classes.
    """

    max_rotation_deg: float = 10.0
    zoom: tuple[float, float] = (0.9, 1.15)
    max_aspect: float = 1.35
    max_shift: float = 0.06
    lower_crop_probability: float = 0.3
    lower_crop_keep: tuple[float, float] = (0.7, 0.95)
    brightness: tuple[float, float] = (-0.08, 0.08)
    contrast: tuple[float, float] = (0.8, 1.25)
    gamma: tuple[float, float] = (0.8, 1.25)
    blur_probability: float = 0.3
    blur_scale: tuple[float, float] = (0.45, 0.85)
    class_aspect: float = 1.0


def _uniform(n, bounds):
    return tf.random.uniform((n,), bounds[0], bounds[1])


def _lower_resolution(images: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """Downsamples a random share of the batch to one random size and back (one size per batch)."""
    n = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    scale = tf.random.uniform((), config.blur_scale[0], config.blur_scale[1])
    small_size = tf.maximum(tf.cast(tf.cast(size, tf.float32) * scale, tf.int32), 8)
    degraded = tf.image.resize(tf.image.resize(images, small_size, method="area"), size, method="bilinear")
    chosen = tf.reshape(tf.random.uniform((n,)) < config.blur_probability, (-1, 1, 1, 1))
    return tf.where(chosen, degraded, images)


def augment_batch(images: tf.Tensor, config: AugmentConfig = AugmentConfig(), labels: tf.Tensor | None = None) -> tf.Tensor:
    """Randomly transforms a batch.

    Args:
        images: (batch, size, size, 1) float32 in [0, 1].
        config: augmentation ranges.
        labels: (batch,) or (batch, 1), 0 normal and 1 pneumonia; needed for ``class_aspect``
            only (without labels it is not applied).

    Returns:
        (batch, size, size, 1) float32 in [0, 1].
    """
    n = tf.shape(images)[0]
    size = tf.cast(tf.shape(images)[1], tf.float32)
    centre = size / 2.0
    angle = _uniform(n, (-config.max_rotation_deg, config.max_rotation_deg)) * (math.pi / 180.0)
    inverse_zoom = 1.0 / _uniform(n, config.zoom)
    log_aspect = _uniform(n, (-math.log(config.max_aspect), math.log(config.max_aspect)))
    if labels is not None and config.class_aspect != 1.0:
        # +1/2 log for pneumonia (wider), -1/2 log for normal (narrower).
        log_aspect += (tf.reshape(tf.cast(labels, tf.float32), (-1,)) - 0.5) * math.log(config.class_aspect)
    inverse_zoom_x = inverse_zoom * tf.exp(-0.5 * log_aspect)
    inverse_zoom_y = inverse_zoom * tf.exp(0.5 * log_aspect)
    shift_x = _uniform(n, (-config.max_shift, config.max_shift)) * size
    shift_y = _uniform(n, (-config.max_shift, config.max_shift)) * size
    crop = tf.random.uniform((n,)) < config.lower_crop_probability
    keep = tf.where(crop, _uniform(n, config.lower_crop_keep), tf.ones((n,)))
    # Output pixel (x, y) samples input u = c + R Z (out - c) + shift, with Z = diag(zx, zy);
    # then y is scaled by `keep` so the output's full height covers only the top `keep` share.
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1 = cos * inverse_zoom_x, -sin * inverse_zoom_y
    a2 = centre - a0 * centre - a1 * centre + shift_x
    b0, b1 = sin * inverse_zoom_x, cos * inverse_zoom_y
    b2 = centre - b0 * centre - b1 * centre + shift_y
    transforms = tf.stack(
        [a0, a1, a2, b0 * keep, b1 * keep, b2 * keep, tf.zeros((n,)), tf.zeros((n,))], axis=1
    )  # (batch, 8)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )  # (batch, size, size, 1)
    warped = _lower_resolution(warped, config)
    mean = tf.reduce_mean(warped, axis=[1, 2, 3], keepdims=True)
    contrast = tf.reshape(_uniform(n, config.contrast), (-1, 1, 1, 1))
    brightness = tf.reshape(_uniform(n, config.brightness), (-1, 1, 1, 1))
    adjusted = tf.clip_by_value((warped - mean) * contrast + mean + brightness, 0.0, 1.0)
    gamma = tf.reshape(_uniform(n, config.gamma), (-1, 1, 1, 1))
    return tf.clip_by_value(tf.pow(adjusted + 1e-6, gamma), 0.0, 1.0)
