"""Grad-CAM and LIME: output contracts, faithfulness on a task with a known answer, reproducibility,
input checks, overlays at the original image's size, the fixed heat-map scale (a stronger map is
drawn brighter, a weak one is called weak, a scale for another model is refused), the legends, the
Explain page, and that the shared model is never changed."""

import json

import numpy as np
import pytest

import keras
from keras import layers
from matplotlib import colormaps

from pneumo_model.artifacts import DEFAULT_MODEL_PATH, REPO_ROOT
from pneumo_model.data import DEFAULT_DATA_DIR, model_split
from pneumo_model.errors import ModelFileError
from pneumo_model.explain import (
    BLUE,
    GRADCAM_BAR_WORDS,
    VERMILLION,
    GradCam,
    HeatmapScale,
    LimeConfig,
    LimeExplanation,
    explain_lime,
    gradcam_colour_bar,
    heatmap_scale_path,
    lime_colour_bar,
    overlay_heatmap,
    slic_segments,
    with_legend,
)
from pneumo_model.lab.cam_scale import CamScaleRule, fit_scale, measure_model
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
    cam = GradCam(predictor.model, predictor.metadata.gradcam_layer)
    heatmap = cam(model_input)
    assert heatmap.shape == model_input.shape[:2] and heatmap.dtype == np.float32
    assert np.all(np.isfinite(heatmap))
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)
    raw = cam.raw(model_input)  # the same map, not divided by its maximum
    assert raw.shape == heatmap.shape and raw.dtype == np.float32 and raw.min() >= 0.0
    np.testing.assert_allclose(raw / raw.max(), heatmap, atol=1e-6)


@pytest.mark.shipped_model
def test_gradcam_leaves_the_shared_model_unchanged():
    predictor = Predictor.from_file(DEFAULT_MODEL_PATH, runtime="keras")  # the Keras model: weights to compare
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
    np.testing.assert_allclose(rgb[10, 10], hot, atol=1)
    assert rgb[290, 190].tolist() == [128, 128, 128]  # no heat: the film as it is (faded)
    cold = np.rint(np.array(colormaps["cividis"](0.0)[:3]) * 255)
    flat = overlay_heatmap(original, heatmap, alpha=1.0, colormap="cividis", fade=False)
    np.testing.assert_allclose(flat[290, 190], cold, atol=1)  # without fading, the colour map's 0


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


def test_lime_overlay_fills_each_side_in_its_colour_at_the_original_size():
    original = np.full((300, 200), 100, np.uint8)
    rgb = make_quadrant_explanation().overlay(original, alpha=1.0, line_width=2)  # weights 0.3 / -0.2
    assert rgb.shape == (300, 200, 3) and rgb.dtype == np.uint8
    # On its own scale (±0.3) the strongest weight is full colour; -0.2 is two thirds of the way to blue.
    assert rgb[75, 50].tolist() == list(VERMILLION)  # top-left quadrant
    np.testing.assert_allclose(rgb[225, 150], np.rint(100 / 3 + 2 / 3 * np.array(BLUE)), atol=1)  # bottom-right
    assert rgb[75, 150].tolist() == [100, 100, 100]  # weight 0: the film as it is
    positive = np.all(rgb == VERMILLION, axis=2)
    rows, cols = np.nonzero(positive)
    assert rows.max() < 150 and cols.max() < 100  # vermillion in the top-left quadrant only


def test_lime_weights_share_one_symmetric_scale():
    segments = np.zeros((8, 8), np.int32)
    segments[:, 4:] = 1
    explanation = LimeExplanation(
        segments=segments, weights=np.array([0.05, -0.05]), positive=(0,), negative=(1,), score=0.9,
        intercept=0.1, local_prediction=0.2,
    )
    grey = np.full((80, 80), 0.5, np.float32)
    for half_width, strength in ((0.05, 1.0), (0.2, 0.25)):  # its own scale, then a fixed wider one
        rgb = explanation.overlay(grey, half_width=half_width, alpha=0.8, line_width=1).astype(float)
        towards = rgb[40, 20] - 127.5  # inside each half, away from the outlines
        away = rgb[40, 60] - 127.5
        np.testing.assert_allclose(towards, 0.8 * strength * (np.array(VERMILLION) - 127.5), atol=1.5)
        np.testing.assert_allclose(away, 0.8 * strength * (np.array(BLUE) - 127.5), atol=1.5)
    # The fixed-scale half-width never shrinks below the small cut, and follows the largest weight above it.
    scale = make_scale(lime_small_below=0.2)
    assert scale.lime_half_width(explanation) == 0.2
    assert make_scale(lime_small_below=0.01).lime_half_width(explanation) == pytest.approx(0.05)


def test_lime_legend_runs_from_blue_through_the_film_to_orange():
    legend = lime_colour_bar(0.3, 0.1, alpha=1.0, width=640)
    assert legend.dtype == np.uint8 and legend.shape[1] == 640
    row = bar_row(legend)
    left, middle, right = legend[row, 45], legend[row, 320], legend[row, 595]
    np.testing.assert_allclose(left, BLUE, atol=12)  # -0.3: away from pneumonia, full colour at alpha 1
    np.testing.assert_allclose(right, VERMILLION, atol=12)  # +0.3: towards
    np.testing.assert_allclose(middle, [128, 128, 128], atol=6)  # 0: the film as it is
    with pytest.raises(ValueError, match="positive half-width"):
        lime_colour_bar(0.0, None)


def test_lime_all_small_is_judged_only_at_the_fitted_settings():
    explanation = make_quadrant_explanation()  # largest weight 0.3
    scale = make_scale(lime_small_below=0.5, lime_num_samples=1000, lime_n_segments=50)
    assert scale.lime_all_small(explanation, LimeConfig()) is True
    assert make_scale(lime_small_below=0.2).lime_all_small(explanation, LimeConfig()) is False
    assert scale.lime_all_small(explanation, LimeConfig(num_samples=200)) is None
    assert scale.lime_all_small(explanation, LimeConfig(n_segments=80)) is None


def test_lime_overlay_fill_and_bad_inputs():
    explanation = make_quadrant_explanation()
    original = np.full((120, 160), 0.5, np.float32)
    filled = explanation.overlay(original, alpha=0.5)
    assert filled[30, 40].tolist() != [128, 128, 128]  # inside the positive superpixel
    assert filled[30, 120].tolist() == [128, 128, 128]  # superpixel 1 has weight 0
    assert explanation.overlay(original, alpha=0.0)[30, 40].tolist() == [128, 128, 128]  # outlines only
    with pytest.raises(ValueError, match="2-D grey"):
        explanation.overlay(np.zeros((120, 160, 3), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        explanation.overlay(original, alpha=-0.5)
    with pytest.raises(ValueError, match="positive half-width"):
        explanation.overlay(original, half_width=-1.0)


def test_lime_writes_no_progress_bar(capfd):
    explain_lime(quadrant_image(), top_left_stub, LimeConfig(num_samples=300))
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # lime's own tqdm bar once filled the server's log


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
    rgb = explanation.overlay(original, alpha=0.3)
    assert rgb.shape == (224, 180, 3) and rgb.dtype == np.uint8


# --------------------------------------------------------------------------------------------
# One fixed scale for every map


def make_scale(**changes) -> HeatmapScale:
    numbers = {
        "model_sha256": "a" * 64, "gradcam_scale": 0.2, "gradcam_weak_below": 0.08, "lime_small_below": 0.3,
        "lime_num_samples": 1000, "lime_n_segments": 50, "facts": {"n_pneumonia": 3},
    }
    return HeatmapScale(**(numbers | changes))


def bar_row(legend: np.ndarray) -> int:
    """The picture row through the middle of a legend's bar (its axes span 45-67 % of the height from the bottom)."""
    return round(legend.shape[0] * (1 - 0.56))


def test_a_map_twice_as_strong_is_drawn_twice_as_bright_not_both_at_full(blob_task):
    model, images, labels = blob_task
    doubled = keras.models.clone_model(model)
    doubled.set_weights(model.get_weights())
    head = doubled.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([2 * kernel, bias])  # the same network with every logit contribution doubled
    image = images[labels == 1][0]
    cam, cam_doubled = GradCam(model, "target"), GradCam(doubled, "target")
    raw, raw_doubled = cam.raw(image), cam_doubled.raw(image)
    assert raw.max() > 0
    np.testing.assert_allclose(raw_doubled, 2 * raw, rtol=1e-4, atol=1e-7)
    # Each divided by its own maximum, as the maps once were drawn, both look the same: full colour.
    np.testing.assert_allclose(cam(image), cam_doubled(image), atol=1e-5)

    scale = make_scale(gradcam_scale=4 * float(raw.max()), gradcam_weak_below=0.0)
    unit, unit_doubled = scale.unit(raw), scale.unit(raw_doubled)
    assert unit.max() == pytest.approx(0.25, rel=1e-4) and unit_doubled.max() == pytest.approx(0.5, rel=1e-4)
    assert scale.peak(raw_doubled) == pytest.approx(2 * scale.peak(raw), rel=1e-4)
    film = np.full(raw.shape, 0.5, np.float32)  # the map's own size: no resizing in between
    hot = np.unravel_index(np.argmax(raw), raw.shape)
    departure = np.linalg.norm(overlay_heatmap(film, unit, alpha=1.0)[hot].astype(float) - 127.5)
    departure_doubled = np.linalg.norm(overlay_heatmap(film, unit_doubled, alpha=1.0)[hot].astype(float) - 127.5)
    assert departure_doubled > 1.8 * departure > 0  # drawn about twice as far from the film
    assert scale.unit(10 * raw).max() == 1.0  # beyond the scale it saturates


def test_a_flat_or_weak_map_is_called_weak_and_leaves_the_film_as_it_is():
    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="target")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    flat_model = keras.Model(inputs, layers.Dense(1, kernel_initializer="zeros", bias_initializer="ones")(x))
    raw = GradCam(flat_model, "target").raw(np.random.default_rng(0).random((16, 16, 1), dtype=np.float32))
    scale = make_scale(gradcam_scale=0.2, gradcam_weak_below=0.08)
    assert np.all(raw == 0) and scale.is_weak(raw) and scale.peak(raw) == 0.0
    film = np.random.default_rng(1).integers(0, 256, (40, 30), dtype=np.uint8)
    np.testing.assert_array_equal(overlay_heatmap(film, scale.unit(raw), alpha=0.9), np.repeat(film[..., None], 3, axis=2))

    weak = np.full((16, 16), 0.5 * 0.08, np.float32)
    weak[3, 3] = 0.079  # its strongest speck is still below the cut
    assert scale.is_weak(weak)
    assert scale.unit(weak).max() == pytest.approx(0.079 / 0.2)  # drawn faint, never stretched to full colour
    strong = weak.copy()
    strong[3, 3] = 0.081
    assert not scale.is_weak(strong)
    assert scale.weak_fraction == pytest.approx(0.4)
    with pytest.raises(ValueError, match=">= 0"):
        scale.unit(-weak)


def test_the_scale_draws_full_opacity_from_the_weak_cut_and_fades_below_it():
    scale = make_scale(gradcam_scale=0.2, gradcam_weak_below=0.08)  # the cut at 0.4 of the scale
    film = np.full((1, 4), 0.5, np.float32)
    raw = np.array([[0.0, 0.04, 0.08, 0.2]], np.float32)  # 0, half the cut, the cut, the scale's top
    drawn = scale.overlay(film, raw, alpha=0.6).astype(float)[0]
    colours = colormaps["viridis"](np.array([0.0, 0.2, 0.4, 1.0]))[:, :3] * 255
    opacity = np.array([0.0, 0.3, 0.6, 0.6])  # 0.6 from the cut on, half of it at half the cut
    np.testing.assert_allclose(drawn, (1 - opacity[:, None]) * 127.5 + opacity[:, None] * colours, atol=1)
    with pytest.raises(ValueError, match="fade_until"):
        overlay_heatmap(film, raw, fade_until=0.0)


def test_the_scale_file_is_refused_for_another_model_and_when_unusable(tmp_path):
    assert heatmap_scale_path(tmp_path / "m.keras") == tmp_path / "m.cam.json"
    path = heatmap_scale_path(tmp_path / "m.keras")
    with pytest.raises(ModelFileError, match=r"heat-map scale \(m.cam.json\) is missing: it goes beside the model.*heatmap-scale"):
        HeatmapScale.load(path, "a" * 64)
    scale = make_scale()
    scale.save(path)
    loaded = HeatmapScale.load(path, "a" * 64)
    assert loaded == scale and loaded.facts == scale.facts and loaded.id == scale.id
    assert json.loads(path.read_text())["rule"] == "docs/heatmap_scale.md"
    with pytest.raises(ModelFileError, match=r"made for model aaaaaaaaaaaa, not for the model in use \(bbbbbbbbbbbb\)"):
        HeatmapScale.load(path, "b" * 64)
    for text, message in (
        ("{", "cannot be read"),
        (json.dumps({**scale.to_dict(), "schema_version": 99}), "another version"),
        (json.dumps({k: v for k, v in scale.to_dict().items() if k != "gradcam_scale"}), "cannot be read"),
        (json.dumps({**scale.to_dict(), "gradcam_scale": 0.0}), "positive Grad-CAM scale"),
        (json.dumps({**scale.to_dict(), "lime_small_below": float("nan")}), "positive Grad-CAM scale"),
    ):
        path.write_text(text)
        with pytest.raises(ModelFileError, match=message):
            HeatmapScale.load(path, "a" * 64)


def test_another_scale_has_another_id_for_the_caches():
    assert make_scale().id == make_scale(facts={"other": 1}).id  # facts do not draw
    assert make_scale().id != make_scale(gradcam_scale=0.21).id
    assert make_scale().id != make_scale(lime_small_below=0.31).id


def test_gradcam_colour_bar_runs_from_the_film_to_full_colour():
    legend = gradcam_colour_bar(make_scale(), alpha=1.0, peak=0.3, width=640)
    assert legend.dtype == np.uint8 and legend.shape[1] == 640
    row = bar_row(legend)
    np.testing.assert_allclose(legend[row, 45], [128, 128, 128], atol=8)  # 0: the film as it is
    top = np.rint(np.array(colormaps["viridis"](1.0)[:3]) * 255)
    np.testing.assert_allclose(legend[row, 595], top, atol=12)  # 1: the colour map's top
    faint = gradcam_colour_bar(make_scale(), alpha=0.4, width=640)
    assert np.linalg.norm(faint[row, 595].astype(float) - 128) < np.linalg.norm(legend[row, 595].astype(float) - 128)
    with pytest.raises(ValueError, match="alpha"):
        gradcam_colour_bar(make_scale(), alpha=2.0)


def test_with_legend_puts_the_legend_under_the_picture():
    picture = np.zeros((50, 100, 3), np.uint8)
    legend = np.full((20, 300, 3), 7, np.uint8)
    both = with_legend(picture, legend)
    assert both.shape == (70, 300, 3)
    assert np.all(both[:50, 100:200] == 0) and np.all(both[:50, :100] == 255)  # centred on white
    assert np.all(both[50:] == 7)


def test_fit_scale_follows_the_written_rule(tiny_model, synthetic_data):
    from pneumo_model.lab.cam_scale import lime_draw
    from pneumo_model.pipeline import DecodedImage

    predictor = Predictor.from_file(tiny_model, runtime="keras")  # the lab fits the scale on TensorFlow
    validation = model_split(predictor.metadata, synthetic_data).validation
    rule = CamScaleRule(lime_per_class=3, lime=LimeConfig(num_samples=60, batch_size=60, n_segments=20))
    scale = fit_scale(predictor, validation, rule)

    inputs = np.stack([DecodedImage.decode(sample.path).model_input(predictor.input_size) for sample in validation])
    raw = GradCam(predictor.model, predictor.metadata.gradcam_layer).raw_heatmaps(inputs)
    labels = np.array([sample.label for sample in validation])
    assert scale.model_sha256 == predictor.metadata.model_sha256
    assert scale.gradcam_scale == pytest.approx(np.quantile(raw[labels == 1], 0.99), rel=1e-5)
    normal_peaks = raw[labels == 0].max(axis=(1, 2))
    assert scale.gradcam_weak_below == pytest.approx(np.quantile(normal_peaks, 0.95), rel=1e-5)
    assert scale.facts["n_pneumonia"] == (labels == 1).sum() and scale.facts["n_normal"] == (labels == 0).sum()
    assert scale.facts["gradcam_weak_share_normal"] == pytest.approx(np.mean(normal_peaks < scale.gradcam_weak_below))
    drawn = lime_draw(validation, 0, 3, 0)
    assert len({sample.path for sample in drawn}) == 3 and {sample.label for sample in drawn} == {0}
    largest = [
        explain_lime(DecodedImage.decode(sample.path).model_input(predictor.input_size), predictor, rule.lime).largest_weight
        for sample in drawn
    ]
    assert scale.lime_small_below == pytest.approx(np.quantile(largest, 0.95), rel=1e-6)
    assert (scale.lime_num_samples, scale.lime_n_segments) == (60, 20)


# --------------------------------------------------------------------------------------------
# The explain command and the Explain page, with the shipped model and its committed scale

NORMAL_DEMO = REPO_ROOT / "assets" / "samples" / "NORMAL2-IM-0012-0001.jpeg"
PNEUMONIA_DEMO = REPO_ROOT / "assets" / "samples" / "person10_virus_35.jpeg"


@pytest.fixture(scope="module")
def shipped_scale(predictor):
    return HeatmapScale.load(heatmap_scale_path(DEFAULT_MODEL_PATH), predictor.metadata.model_sha256)


@pytest.mark.shipped_model
@pytest.mark.parametrize("method", ["gradcam", "lime"])
def test_explain_command_draws_on_the_fixed_scale_with_its_legend(method, predictor, shipped_scale, tmp_path, capsys):
    from PIL import Image

    from pneumo_model.cli import main
    from pneumo_model.pipeline import DecodedImage

    out, legend_out = tmp_path / "explained.png", tmp_path / "legend" / "bar.png"
    argv = ["explain", str(PNEUMONIA_DEMO), "--method", method, "--out", str(out), "--legend-out", str(legend_out)]
    assert main(argv + (["--samples", "200"] if method == "lime" else [])) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["heatmap_scale"] == shipped_scale.id and record["legend_out"] == str(legend_out)
    decoded = DecodedImage.decode(PNEUMONIA_DEMO)
    picture, legend = np.asarray(Image.open(out)), np.asarray(Image.open(legend_out))
    # The overlay at the film's own size (to lay over it in a viewer); the colour bar in its own file.
    assert picture.shape == (*decoded.pixels.shape[:2], 3)
    assert legend.shape[1] == 640 and legend.shape[0] < 224
    if method == "gradcam":
        raw = GradCam(predictor.model, predictor.metadata.gradcam_layer).raw(decoded.model_input(predictor.input_size))
        assert record["gradcam_peak"] == round(shipped_scale.peak(raw), 4)
        assert record["gradcam_weak"] is shipped_scale.is_weak(raw)
        assert np.array_equal(picture, shipped_scale.overlay(decoded.pixels, raw, alpha=0.4))
        assert np.array_equal(legend, gradcam_colour_bar(shipped_scale, 0.4, peak=shipped_scale.peak(raw), width=640))
    else:
        assert record["lime_all_small"] is None  # 200 samples: not the settings the cut was fitted with
        assert record["lime_scale"] >= round(shipped_scale.lime_small_below, 4)


@pytest.mark.shipped_model
def test_explain_command_refuses_a_scale_made_for_another_model(tmp_path, capsys):
    import shutil

    from pneumo_model.cli import main
    from pneumo_model.paths import metadata_path, onnx_path, onnx_record_path

    model = tmp_path / "pneumonet.keras"
    shutil.copy(DEFAULT_MODEL_PATH, model)
    shutil.copy(metadata_path(DEFAULT_MODEL_PATH), metadata_path(model))
    for path in (onnx_path, onnx_record_path):  # the graph the command scores with
        shutil.copy(path(DEFAULT_MODEL_PATH), path(model))
    out = tmp_path / "cam.png"
    assert main(["explain", str(NORMAL_DEMO), "--out", str(out), "--model", str(model)]) == 1
    assert "heat-map scale (pneumonet.cam.json) is missing" in capsys.readouterr().err
    make_scale(model_sha256="c" * 64).save(heatmap_scale_path(model))
    assert main(["explain", str(NORMAL_DEMO), "--out", str(out), "--model", str(model)]) == 1
    assert "made for model cccccccccccc" in capsys.readouterr().err
    assert not out.exists()  # no map stretched to its own maximum instead


def explain_page(name: str):
    """The Explain page run as its own script (as a deep link), with the demo image ``name`` picked in its sidebar."""
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(REPO_ROOT / "pages" / "explain.py"), default_timeout=180).run()
    app.button(key=f"sample-{name}").click().run()
    assert not app.exception, app.exception
    return app


@pytest.mark.shipped_model
def test_explain_page_calls_a_confident_normal_films_map_weak_and_draws_the_colour_bar(predictor, shipped_scale):
    from test_app import image_captions, shows, texts

    from pneumo_model.pipeline import DecodedImage

    raw = GradCam(predictor.model, predictor.metadata.gradcam_layer).raw(
        DecodedImage.decode(NORMAL_DEMO).model_input(predictor.input_size)
    )
    app = explain_page(NORMAL_DEMO.name)
    weak = shipped_scale.is_weak(raw)  # by the committed rule, not forced here
    assert ("no region raised the pneumonia score much" in texts(app.info)) == weak
    assert any(GRADCAM_BAR_WORDS in caption for caption in image_captions(app))  # the colour bar and its words
    if weak:
        assert f"Peak {shipped_scale.peak(raw):.2f}, below the {shipped_scale.weak_fraction:.2f}" in texts(app.info)
        assert not shows(app, "Grad-CAM: shows where")  # no map: not even its strongest speck
        [show_anyway] = [box for box in app.checkbox if box.label == "Show the weak map anyway"]
        show_anyway.check().run()
        assert not app.exception
    assert shows(app, f"Grad-CAM: {'shows where the model looked'}")
    assert any(f"this image's peak {shipped_scale.peak(raw):.2f}" in caption for caption in image_captions(app))


@pytest.mark.shipped_model
def test_explain_page_draws_a_pneumonia_map_and_lime_on_their_scales(shipped_scale):
    from test_app import image_captions, run_lime, shows, texts

    from ui import resources, state

    app = explain_page(PNEUMONIA_DEMO.name)
    assert "no region raised the pneumonia score much" not in texts(app.info)
    assert shows(app, "Grad-CAM: shows where the model looked")
    run_lime(app, samples=200, segments=20)
    assert shows(app, "LIME (200 samples, 20 superpixels)")
    assert any("these settings are not judged" in caption for caption in image_captions(app))
    run_lime(app, samples=shipped_scale.lime_num_samples, segments=shipped_scale.lime_n_segments)
    chosen = state.ChosenImage(PNEUMONIA_DEMO.name, PNEUMONIA_DEMO.read_bytes(), "sample")
    explanation = resources.lime_explanation(chosen, shipped_scale.lime_num_samples, shipped_scale.lime_n_segments)
    small = explanation.largest_weight < shipped_scale.lime_small_below
    assert ("All LIME weights are small" in texts(app.caption)) == small
    assert any("Dashed: 95 % of normal validation films" in caption for caption in image_captions(app))


@pytest.mark.shipped_model
def test_explain_page_draws_no_heat_map_without_a_usable_scale(monkeypatch):
    from test_app import shows, texts

    from ui import resources

    def refused():
        raise ModelFileError("The heat-map scale pneumonet.cam.json was fitted for model cccccccccccc.")

    monkeypatch.setattr(resources, "heatmap_scale", refused)
    app = explain_page(PNEUMONIA_DEMO.name)
    assert "fitted for model cccccccccccc" in texts(app.error)
    assert not shows(app, "Grad-CAM")


@pytest.mark.data
@pytest.mark.shipped_model
def test_the_committed_scale_is_what_the_rule_gives_on_validation(shipped_scale):
    measured = measure_model(DEFAULT_MODEL_PATH, DEFAULT_DATA_DIR)
    assert measured.model_sha256 == shipped_scale.model_sha256
    for name in ("gradcam_scale", "gradcam_weak_below", "lime_small_below"):
        assert getattr(measured, name) == pytest.approx(getattr(shipped_scale, name), rel=1e-5), name
    assert (measured.lime_num_samples, measured.lime_n_segments) == (shipped_scale.lime_num_samples, shipped_scale.lime_n_segments)
    assert measured.facts.keys() == shipped_scale.facts.keys()
    for key, value in measured.facts.items():
        assert value == (pytest.approx(shipped_scale.facts[key], rel=1e-5) if isinstance(value, float) else shipped_scale.facts[key]), key
