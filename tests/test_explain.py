"""Grad-CAM and LIME: output contracts, faithfulness on a task with a known answer, reproducibility,
input checks, overlays at the original image's size, and that the shared model is never changed."""

import numpy as np
import pytest

import keras
from keras import layers
from matplotlib import colormaps

from pneumo_model.artifacts import DEFAULT_MODEL_PATH, REPO_ROOT
from pneumo_model.explain import (
    BLUE,
    VERMILLION,
    GradCam,
    LimeConfig,
    LimeExplanation,
    explain_lime,
    overlay_heatmap,
    slic_segments,
)
from pneumo_model.lab.models import average_logits
from pneumo_model.prediction import Predictor
from pneumo_model.preprocessing import load_image, preprocess

SAMPLE = REPO_ROOT / "assets" / "samples" / "person100_bacteria_475.jpeg"

# The synthetic task: a bright blob at a fixed place means "pneumonia".
TASK_SIZE = 32
BLOB_CENTRE = (9, 22)  # (row, column)
BLOB_BOX = (slice(3, 16), slice(16, 29))  # 13 x 13 pixels around the blob, 16.5 % of the image


def blob_images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32, 1) float32 images in [0, 1] and (n,) labels alternating 0, 1.

    Every image has uniform noise and a faint square at a random place (the distractor); the
    positives also have a bright Gaussian blob at ``BLOB_CENTRE``.
    """
    y, x = np.mgrid[0:TASK_SIZE, 0:TASK_SIZE]
    labels = np.arange(n) % 2
    images = 0.2 + 0.2 * rng.random((n, TASK_SIZE, TASK_SIZE))
    for image in images:
        top, left = rng.integers(0, TASK_SIZE - 6, 2)
        image[top : top + 6, left : left + 6] += 0.15
    blob = np.exp(-((y - BLOB_CENTRE[0]) ** 2 + (x - BLOB_CENTRE[1]) ** 2) / (2 * 2.5**2))
    images += 0.6 * labels[:, None, None] * blob
    return np.clip(images, 0, 1).astype(np.float32)[..., np.newaxis], labels.astype(np.float32)


def build_task_cnn() -> keras.Model:
    inputs = keras.Input((TASK_SIZE, TASK_SIZE, 1))
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)  # (batch, 16, 16, 16)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="target")(x)  # (batch, 16, 16, 32)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(1)(x))


@pytest.fixture(scope="module")
def blob_task():
    """A small CNN trained for about 3 s on the blob task, and positive test images."""
    keras.utils.set_random_seed(0)
    images, labels = blob_images(np.random.default_rng(0), 384)
    model = build_task_cnn()
    model.compile(keras.optimizers.Adam(5e-3), keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(images, labels, epochs=6, batch_size=32, verbose=0)
    test_images, test_labels = blob_images(np.random.default_rng(100), 64)
    return model, test_images, test_labels


def blob_share(maps: np.ndarray) -> np.ndarray:
    """(n,) share of each heat map's total that lies in the blob box."""
    return maps[:, BLOB_BOX[0], BLOB_BOX[1]].sum(axis=(1, 2)) / np.maximum(maps.sum(axis=(1, 2)), 1e-12)


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_file(DEFAULT_MODEL_PATH)


def top_left_stub(images: np.ndarray) -> np.ndarray:
    """A 'classifier' that looks only at the top-left quadrant: its mean brightness."""
    half = images.shape[1] // 2
    return images[:, :half, :half, 0].mean(axis=(1, 2)).astype(np.float64)


def quadrant_image(size: int = 64) -> np.ndarray:
    """(size, size, 1) float32 in [0, 1]: smooth texture, brighter in the top-left quadrant."""
    rng = np.random.default_rng(7)
    image = 0.3 + 0.1 * rng.random((size, size))
    image[: size // 2, : size // 2] += 0.4
    return image.astype(np.float32)[..., np.newaxis]


# --------------------------------------------------------------------------------------------
# Grad-CAM


def test_gradcam_heat_lies_on_the_deciding_blob(blob_task):
    model, images, labels = blob_task
    assert np.mean((model(images).numpy()[:, 0] > 0) == labels) >= 0.95  # the task was learnt
    maps = GradCam(model, "target").heatmaps(images[labels == 1])
    share = blob_share(maps)
    assert share.mean() >= 0.6, f"mean share of heat on the blob {share.mean():.2f}"
    assert share.min() >= 0.5


def test_gradcam_changes_when_the_weights_are_randomised(blob_task):
    model, images, labels = blob_task
    positives = images[labels == 1]
    trained = GradCam(model, "target").heatmaps(positives)
    keras.utils.set_random_seed(1000)
    randomised = keras.models.clone_model(model)  # same graph, freshly initialised weights
    assert not np.allclose(randomised.get_layer("target").get_weights()[0], model.get_layer("target").get_weights()[0])
    random_maps = GradCam(randomised, "target").heatmaps(positives)
    correlations = [
        np.corrcoef(a.ravel(), b.ravel())[0, 1] if b.std() > 0 else 0.0 for a, b in zip(trained, random_maps)
    ]
    assert np.mean(correlations) < 0.6, f"mean correlation {np.mean(correlations):.2f}"
    assert blob_share(random_maps).mean() < 0.5 < blob_share(trained).mean()


def test_gradcam_gives_zeros_when_the_gradients_are_zero():
    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="target")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    # A zero kernel: the logit is the bias whatever the image, so every gradient is zero.
    model = keras.Model(inputs, layers.Dense(1, kernel_initializer="zeros", bias_initializer="ones")(x))
    image = np.random.default_rng(0).random((16, 16, 1), dtype=np.float32)
    heatmap = GradCam(model, "target")(image)
    assert heatmap.shape == (16, 16) and heatmap.dtype == np.float32
    assert np.all(np.isfinite(heatmap))
    assert np.all(heatmap == 0.0)


def test_gradcam_refuses_bad_layers_and_inputs(blob_task):
    model, images, _ = blob_task
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        GradCam(model, "nope")
    with pytest.raises(ValueError, match="spatial"):
        GradCam(model, model.layers[-2].name)  # global pooling: (batch, channels)
    cam = GradCam(model, "target")
    with pytest.raises(ValueError, match="shape"):
        cam(np.zeros((16, 16, 1), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cam(images[0] * 3.0)
    with pytest.raises(ValueError, match="shape"):
        cam.heatmaps(images[0])


def test_gradcam_of_an_ensemble_combines_its_members(blob_task):
    model, images, labels = blob_task
    positives = images[labels == 1]
    own = GradCam(model, "target").heatmaps(positives)
    # Two copies of one network: each gets half the gradient, the sum is the network's own map.
    twice = average_logits([model, model])
    np.testing.assert_allclose(GradCam(twice, ("target", "m1_target")).heatmaps(positives), own, atol=1e-5)
    # A second member that reads the same features with the opposite sign cancels the first: the
    # ensemble's logit is constant, so its map is zero. Averaging the members' own maps would
    # show heat on the blob; summing their weighted features before the ReLU does not.
    opposite = keras.models.clone_model(model)
    opposite.set_weights(model.get_weights())
    head = opposite.layers[-1]
    head.set_weights([-w for w in head.get_weights()])
    cancelled = GradCam(average_logits([model, opposite]), ("target", "m1_target")).heatmaps(positives)
    assert np.all(cancelled == 0.0)


def test_gradcam_refuses_target_layers_of_different_sizes(blob_task):
    model, _, _ = blob_task
    early = next(layer.name for layer in model.layers if isinstance(layer, layers.Conv2D) and layer.name != "target")
    with pytest.raises(ValueError, match="differ in height and width"):
        GradCam(model, (early, "target"))
    with pytest.raises(ValueError, match="at least one"):
        GradCam(model, ())


@pytest.mark.shipped_model
def test_gradcam_on_the_shipped_model_is_a_unit_map_at_input_size(predictor):
    model_input = preprocess(load_image(SAMPLE)[0], predictor.input_size)
    heatmap = GradCam(predictor.model, predictor.metadata.gradcam_layer)(model_input)
    assert heatmap.shape == model_input.shape[:2] and heatmap.dtype == np.float32
    assert np.all(np.isfinite(heatmap))
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)


@pytest.mark.shipped_model
def test_gradcam_leaves_the_shared_model_unchanged(predictor):
    model = predictor.model
    model_input = preprocess(load_image(SAMPLE)[0], predictor.input_size)
    config = model.get_config()
    weights = [w.copy() for w in model.get_weights()]
    layer_names = [layer.name for layer in model.layers]
    logit = predictor.logits(model_input[np.newaxis])

    cam = GradCam(model, predictor.metadata.gradcam_layer)
    cam(model_input)
    cam.heatmaps(np.stack([model_input, model_input]))

    assert model.get_config() == config
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))
    assert [layer.name for layer in model.layers] == layer_names
    assert len(model.outputs) == 1
    np.testing.assert_array_equal(predictor.logits(model_input[np.newaxis]), logit)


# --------------------------------------------------------------------------------------------
# Grad-CAM overlay


def test_heatmap_overlay_is_at_the_original_size_and_orientation():
    original = np.full((300, 200), 128, np.uint8)  # taller than wide, unlike the square heat map
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[:4, :4] = 1.0  # hot top-left
    rgb = overlay_heatmap(original, heatmap, alpha=1.0, colormap="cividis")
    assert rgb.shape == (300, 200, 3) and rgb.dtype == np.uint8
    hot = np.rint(np.array(colormaps["cividis"](1.0)[:3]) * 255)
    cold = np.rint(np.array(colormaps["cividis"](0.0)[:3]) * 255)
    np.testing.assert_allclose(rgb[10, 10], hot, atol=1)
    np.testing.assert_allclose(rgb[290, 190], cold, atol=1)


def test_heatmap_overlay_with_alpha_zero_is_the_grey_image():
    original = np.random.default_rng(0).integers(0, 256, (90, 120), dtype=np.uint8)
    rgb = overlay_heatmap(original, np.ones((8, 8), np.float32), alpha=0.0)
    np.testing.assert_array_equal(rgb, np.repeat(original[:, :, np.newaxis], 3, axis=2))


@pytest.mark.parametrize(
    ("image", "heatmap", "options", "message"),
    [
        (np.zeros((64, 64, 3), np.uint8), np.zeros((8, 8)), {}, "2-D grey"),
        (np.zeros((64, 64)), np.full((8, 8), 1.5), {}, r"heat map must lie in \[0, 1\]"),
        (np.zeros((64, 64)), np.full((8, 8), np.nan), {}, "NaN"),
        (np.zeros((64, 64)), np.zeros((8, 8, 1)), {}, "heat map must be 2-D"),
        (np.full((64, 64), 2.0), np.zeros((8, 8)), {}, r"image must lie in \[0, 1\]"),
        (np.zeros((64, 64)), np.zeros((8, 8)), {"alpha": 1.2}, "alpha"),
        (np.zeros((64, 64)), np.zeros((8, 8)), {"colormap": "jet"}, "colour-blind-safe"),
    ],
)
def test_heatmap_overlay_refuses_bad_inputs(image, heatmap, options, message):
    with pytest.raises(ValueError, match=message):
        overlay_heatmap(image, heatmap, **options)


# --------------------------------------------------------------------------------------------
# LIME


def test_lime_highlights_the_only_region_the_classifier_looks_at():
    image = quadrant_image()
    explanation = explain_lime(image, top_left_stub, LimeConfig(num_samples=400, n_segments=40, top_k=4))
    assert len(explanation.positive) == 4
    half = image.shape[0] // 2
    for segment in explanation.positive:
        rows, cols = np.nonzero(explanation.segments == segment)
        # Most of it: SLIC's smoothing can move a superpixel's edge a pixel past the quadrant's.
        assert np.mean((rows < half) & (cols < half)) > 0.5, f"superpixel {segment} lies outside the quadrant"
    # Superpixels wholly outside the quadrant do not matter to the stub.
    outside = [s for s in range(len(explanation.weights)) if np.all(np.nonzero(explanation.segments == s)[0] >= half)]
    assert outside
    assert np.abs(explanation.weights[outside]).max() < 0.1 * explanation.weights[list(explanation.positive)].min()
    assert explanation.score > 0.9


def test_lime_is_reproducible_with_a_seed():
    image = quadrant_image()
    first = explain_lime(image, top_left_stub, LimeConfig(num_samples=300, seed=3))
    again = explain_lime(image, top_left_stub, LimeConfig(num_samples=300, seed=3))
    other = explain_lime(image, top_left_stub, LimeConfig(num_samples=300, seed=4))
    np.testing.assert_array_equal(first.segments, again.segments)
    np.testing.assert_array_equal(first.weights, again.weights)
    assert (first.positive, first.negative, first.score) == (again.positive, again.negative, again.score)
    assert not np.array_equal(first.weights, other.weights)


def test_lime_reports_progress_after_each_batch():
    calls = []
    explain_lime(
        quadrant_image(),
        top_left_stub,
        LimeConfig(num_samples=600, batch_size=256),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(256, 600), (512, 600), (600, 600)]


def test_lime_does_not_modify_its_input():
    image = quadrant_image()
    before = image.copy()
    explain_lime(image, top_left_stub, LimeConfig(num_samples=100))
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((64, 64, 3), np.float32), "shape"),
        (np.zeros((4, 64, 64, 1), np.float32), "shape"),
        (np.full((64, 64, 1), 1.5, np.float32), r"\[0, 1\]"),
        (np.full((64, 64, 1), -0.1, np.float32), r"\[0, 1\]"),
        (np.full((64, 64, 1), np.nan, np.float32), "NaN"),
        (np.zeros((64, 64, 1), np.uint8), "float"),
    ],
)
def test_lime_refuses_bad_images(image, message):
    with pytest.raises(ValueError, match=message):
        explain_lime(image, top_left_stub, LimeConfig(num_samples=50))


def test_lime_refuses_a_classifier_that_does_not_return_probabilities():
    image = quadrant_image()
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        explain_lime(image, lambda images: top_left_stub(images) * 10 - 5, LimeConfig(num_samples=50))
    with pytest.raises(ValueError, match="one probability per image"):
        explain_lime(image, lambda images: np.zeros((len(images), 2)), LimeConfig(num_samples=50))


def test_lime_config_refuses_impossible_settings():
    with pytest.raises(ValueError, match="num_samples"):
        LimeConfig(num_samples=1)
    with pytest.raises(ValueError, match="hide_value"):
        LimeConfig(hide_value=2.0)


def test_slic_segments_are_numbered_without_gaps():
    segments = slic_segments(quadrant_image(), LimeConfig(n_segments=30))
    assert segments.shape == (64, 64) and segments.dtype == np.int32
    np.testing.assert_array_equal(np.unique(segments), np.arange(segments.max() + 1))
    assert 10 <= segments.max() + 1 <= 40


def make_quadrant_explanation() -> LimeExplanation:
    segments = np.zeros((8, 8), np.int32)  # ids 0 1 / 2 3 by quadrant
    segments[:4, 4:] = 1
    segments[4:, :4] = 2
    segments[4:, 4:] = 3
    return LimeExplanation(
        segments=segments,
        weights=np.array([0.3, 0.0, 0.0, -0.2]),
        positive=(0,),
        negative=(3,),
        score=0.9,
        intercept=0.1,
        local_prediction=0.5,
    )


def test_lime_overlay_outlines_each_side_in_its_colour_at_the_original_size():
    original = np.full((300, 200), 100, np.uint8)
    rgb = make_quadrant_explanation().overlay(original, line_width=2)
    assert rgb.shape == (300, 200, 3) and rgb.dtype == np.uint8
    positive = np.all(rgb == VERMILLION, axis=2)
    negative = np.all(rgb == BLUE, axis=2)
    rows, cols = np.nonzero(positive)
    assert positive.any() and rows.max() < 150 and cols.max() < 100  # top-left quadrant only
    rows, cols = np.nonzero(negative)
    assert negative.any() and rows.min() >= 150 and cols.min() >= 100  # bottom-right only
    assert rgb[75, 50].tolist() == [100, 100, 100]  # outlines only, no fill by default


def test_lime_overlay_fill_and_bad_inputs():
    explanation = make_quadrant_explanation()
    original = np.full((120, 160), 0.5, np.float32)
    filled = explanation.overlay(original, fill_alpha=0.5)
    assert filled[30, 40].tolist() != [128, 128, 128]  # inside the positive superpixel
    assert filled[30, 120].tolist() == [128, 128, 128]  # superpixel 1 is neither side
    with pytest.raises(ValueError, match="2-D grey"):
        explanation.overlay(np.zeros((120, 160, 3), np.uint8))
    with pytest.raises(ValueError, match="fill_alpha"):
        explanation.overlay(original, fill_alpha=-0.5)


def test_lime_explanation_arrays_are_read_only():
    explanation = explain_lime(quadrant_image(), top_left_stub, LimeConfig(num_samples=100))
    with pytest.raises(ValueError):
        explanation.weights[0] = 1.0
    with pytest.raises(ValueError):
        explanation.segments[0, 0] = 1


@pytest.mark.shipped_model
def test_lime_on_the_shipped_model_with_a_predictor(predictor):
    original = load_image(SAMPLE)[0][:, 20:200]  # (224, 180): not square
    model_input = preprocess(original, predictor.input_size)
    calls = []
    explanation = explain_lime(
        model_input, predictor, LimeConfig(num_samples=256), progress=lambda done, total: calls.append(done)
    )
    assert explanation.segments.shape == (predictor.input_size, predictor.input_size)
    assert explanation.weights.shape == (explanation.segments.max() + 1,)
    assert np.all(np.isfinite(explanation.weights))
    assert 0 < len(explanation.positive) <= 5 and all(explanation.weights[s] > 0 for s in explanation.positive)
    assert all(explanation.weights[s] < 0 for s in explanation.negative)
    assert calls == [256]
    rgb = explanation.overlay(original, fill_alpha=0.3)
    assert rgb.shape == (224, 180, 3) and rgb.dtype == np.uint8
