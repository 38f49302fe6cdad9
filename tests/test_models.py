"""Architecture registry and augmentation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pneumo_model.lab.augmentation import AugmentConfig, augment_batch
from pneumo_model.errors import ConfigError
from pneumo_model.lab.models import ARCHITECTURES, average_logits, get_architecture, member_layer_name

PUBLISHED_FAMILIES = {"dense", "dense_dropout", "cnn_small", "cnn_deep", "pneumonet"}


def test_registry_holds_the_published_families_and_ours():
    assert PUBLISHED_FAMILIES <= set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_maps_images_to_one_logit(name):
    architecture = get_architecture(name)
    model = architecture.build(64)
    out = model(np.random.default_rng(0).random((3, 64, 64, 1), dtype=np.float32), training=False)
    assert tuple(out.shape) == (3, 1)
    if architecture.gradcam_layer:
        assert len(model.get_layer(architecture.gradcam_layer).output.shape) == 4  # (batch, h, w, c)


def test_production_network_is_small_with_an_8x8_gradcam_map_at_128px():
    model = get_architecture("pneumonet").build(128)
    assert model.count_params() < 300_000
    assert tuple(model.get_layer("features").output.shape[1:3]) == (8, 8)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ConfigError, match="pneumonet"):
        get_architecture("resnet9000")


def _identity_config(**changes):
    base = dict(
        max_rotation_deg=0.0, zoom=(1.0, 1.0), max_shift=0.0, lower_crop_probability=0.0,
        brightness=(0.0, 0.0), contrast=(1.0, 1.0), gamma=(1.0, 1.0), max_aspect=1.0,
        blur_probability=0.0,
    )
    base.update(changes)
    return AugmentConfig(**base)


def test_augmentation_keeps_shape_and_range():
    images = tf.random.uniform((6, 32, 32, 1))
    out = augment_batch(images).numpy()
    assert out.shape == (6, 32, 32, 1) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_augmentation_with_no_ranges_is_the_identity():
    images = tf.random.uniform((4, 32, 32, 1))
    np.testing.assert_allclose(augment_batch(images, _identity_config()).numpy(), images.numpy(), atol=1e-4)


def test_lower_crop_keeps_the_top_and_stretches_it_to_full_height():
    images = np.zeros((2, 40, 40, 1), np.float32)
    images[:, :20] = 1.0  # top half bright, bottom half dark
    config = _identity_config(lower_crop_probability=1.0, lower_crop_keep=(0.5, 0.5))
    out = augment_batch(tf.constant(images), config).numpy()
    # Keeping the top half means the whole output comes from the bright part.
    assert out[:, :38].min() > 0.95


def test_aspect_change_narrows_or_widens_a_centred_bar_and_keeps_its_height():
    images = np.zeros((64, 41, 41, 1), np.float32)
    images[:, 5:36, 15:26] = 1.0  # a vertical bar 11 px wide, 31 px tall, centred
    config = _identity_config(max_aspect=1.5)
    out = augment_batch(tf.constant(images), config).numpy()
    widths = (out[:, 20, :, 0] > 0.5).sum(axis=1)
    heights = (out[:, :, 20, 0] > 0.5).sum(axis=1)
    # Horizontal / vertical scale ratio in [1/1.5, 1.5]: the bar's width changes in both
    # directions across the batch, its height by at most sqrt(1.5).
    assert widths.min() < 10 and widths.max() > 12
    assert np.all(widths >= 11 / 1.5 - 1) and np.all(widths <= 11 * 1.5 + 1)
    assert np.all(heights >= 31 / 1.5**0.5 - 1) and np.all(heights <= 31 * 1.5**0.5 + 1)


def test_lower_resolution_blurs_edges_of_chosen_images_only():
    images = np.zeros((2, 32, 32, 1), np.float32)
    images[:, :, ::2] = 1.0  # one-pixel stripes: gone at half resolution
    blurred = augment_batch(tf.constant(images), _identity_config(blur_probability=1.0)).numpy()
    assert np.abs(blurred - images).mean() > 0.2
    kept = augment_batch(tf.constant(images), _identity_config(blur_probability=0.0)).numpy()
    np.testing.assert_allclose(kept, images, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Deep ensemble


def _trained_like(name: str, seed: int) -> keras.Model:
    """A registered network with its own random weights (biases and BN statistics perturbed too)."""
    keras.utils.set_random_seed(seed)
    model = get_architecture(name).build(32)
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.05 * rng.standard_normal(w.shape).astype(np.float32) * (w != 1.0) for w in model.get_weights()])
    return model


def test_ensemble_is_one_flat_graph_whose_logit_is_the_members_mean(tmp_path):
    networks = [_trained_like("cnn_small", seed) for seed in (1, 2, 3)]
    before = [[w.copy() for w in n.get_weights()] for n in networks]
    names_before = [[layer.name for layer in n.layers] for n in networks]
    ensemble = average_logits(networks)

    images = np.random.default_rng(0).random((5, 32, 32, 1), dtype=np.float32)
    members = np.stack([n(images, training=False).numpy() for n in networks])  # (3, 5, 1)
    assert np.ptp(members, axis=0).max() > 1e-3  # the members really differ
    np.testing.assert_allclose(ensemble(images, training=False).numpy(), members.mean(axis=0), rtol=1e-5, atol=1e-5)
    # Flat: no nested model; member 0 keeps its names, the others are prefixed.
    assert not any(isinstance(layer, keras.Model) for layer in ensemble.layers)
    names = {layer.name for layer in ensemble.layers}
    assert {"conv2", "m1_conv2", "m2_conv2", "ensemble_logit"} <= names
    assert member_layer_name("conv2", 0) == "conv2" and member_layer_name("conv2", 2) == "m2_conv2"
    # The networks passed in are unchanged.
    for network, weights, layer_names in zip(networks, before, names_before):
        assert all(np.array_equal(a, b) for a, b in zip(network.get_weights(), weights, strict=True))
        assert [layer.name for layer in network.layers] == layer_names
    # It survives a save and a safe-mode load.
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras", safe_mode=True)
    np.testing.assert_allclose(loaded(images, training=False).numpy(), members.mean(axis=0), rtol=1e-5, atol=1e-5)


def test_ensemble_refuses_one_network_and_mismatched_inputs():
    with pytest.raises(ValueError, match="at least two"):
        average_logits([_trained_like("cnn_small", 1)])
    other = get_architecture("cnn_small").build(48)
    with pytest.raises(ValueError, match="input shape"):
        average_logits([_trained_like("cnn_small", 1), other])


def test_class_aspect_widens_pneumonia_and_narrows_normal_anatomy():
    images = np.zeros((8, 41, 41, 1), np.float32)
    images[:, 5:36, 15:26] = 1.0  # a vertical bar 11 px wide, centred
    labels = tf.constant([0, 1] * 4, tf.float32)
    config = _identity_config(class_aspect=1.5)
    out = augment_batch(tf.constant(images), config, labels).numpy()
    widths = (out[:, 20, :, 0] > 0.5).sum(axis=1)
    # Normals narrowed by sqrt(1.5) (11 -> 9 px), pneumonias widened by it (11 -> 13.5 px), give
    # or take the one pixel the sampling grid decides.
    assert set(widths[0::2]) <= {9, 10} and set(widths[1::2]) <= {13, 14}
    # Without labels (or with the default ratio 1) nothing changes.
    np.testing.assert_allclose(augment_batch(tf.constant(images), config).numpy(), images, atol=1e-4)
    np.testing.assert_allclose(augment_batch(tf.constant(images), _identity_config(), labels).numpy(), images, atol=1e-4)
