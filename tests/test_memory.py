"""Memory bounded by design: the decoding byte budget, checked from the header, and the reduction
of images over the working size, as early as each format allows.

Small limits (``ImageLimits(max_working_pixels=..., max_decoded_bytes=...)``) make small files
exercise the same code as the issue's 7740 x 7740 PNG; that file itself is decoded once. Every
reduced path is compared with a plain full-size decode followed by a block mean; every image
under the working size must come back exactly as a plain Pillow / pydicom decode gives it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from pneumo_model import dicom, preprocessing
from pneumo_model.lab import bench
from test_inputs import dicom_dataset, png_with_header
from pneumo_model.errors import InvalidImageError
from pneumo_model.preprocessing import ImageLimits, load_image, reduction_factor

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "assets" / "samples" / "person153_bacteria_726.jpeg"
# A 301 x 257 picture (odd sides: partial blocks at the right and bottom edges) and working caps
# that reduce it 2, 3 and 4 times.
WIDTH, HEIGHT = 301, 257
CAP_FOR = {2: 20_000, 3: 9_000, 4: 5_000}
BUDGET_MESSAGE = "allowed for one image"


def _picture(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    grey = np.asarray(Image.open(SAMPLE).convert("L"))  # (224, 224) uint8
    return cv2.resize(grey, (width, height), interpolation=cv2.INTER_LINEAR)  # (height, width) uint8


PICTURE = _picture()
PICTURE_16 = PICTURE.astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 257, PICTURE.shape, dtype=np.uint16)


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def limits_for(factor: int, **more) -> ImageLimits:
    return ImageLimits(max_working_pixels=CAP_FOR[factor], **more)


def block_mean(values: np.ndarray, k: int) -> np.ndarray:
    """Rounded (half up) means of the k x k blocks, partial blocks at the edges included: the
    reference every reduced path is held to, computed from strided sums, not as the package does."""
    height, width = values.shape[:2]
    sums = np.zeros((-(-height // k), -(-width // k), *values.shape[2:]), dtype=np.int64)
    counts = np.zeros(sums.shape[:2], dtype=np.int64)
    for dy in range(k):
        for dx in range(k):
            part = values[dy::k, dx::k]
            sums[: part.shape[0], : part.shape[1]] += part
            counts[: part.shape[0], : part.shape[1]] += 1
    counts = counts.reshape(*counts.shape, *([1] * (values.ndim - 2)))
    return ((sums + counts // 2) // counts).astype(values.dtype)


def dicom_bytes(ds: Dataset, syntax=ExplicitVRLittleEndian) -> bytes:
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax  # pydicom deflates on writing
    elif syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)  # pydicom's RLE encoder, pylibjpeg-openjpeg for JPEG 2000
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


TWELVE_BIT = 300 + PICTURE.astype(np.uint16) * 12  # 300..3360 in 12 bits
WINDOW = {"WindowCenter": 1830.5, "WindowWidth": 3061}


def windowed_reference(stored: np.ndarray) -> np.ndarray:
    """What the window of ``dicom_dataset(stored, bits_stored=12, **WINDOW)`` gives, applied to the
    whole array at once as pydicom documents it: output range 0..4095 mapped onto 0..65535."""
    ds = dicom_dataset(stored, bits_stored=12, **WINDOW)
    values = apply_voi_lut(apply_modality_lut(stored, ds), ds, index=0)
    return np.rint(np.clip(values / 4095.0, 0.0, 1.0) * 65535.0).astype(np.uint16)


@pytest.fixture
def small_strips(monkeypatch):
    """Strips of a few rows, so every strip-wise path is cut many times, partial blocks included."""
    monkeypatch.setattr(preprocessing, "_STRIP_PIXELS", 3 * WIDTH)
    monkeypatch.setattr(dicom, "_STRIP_PIXELS", 3 * WIDTH)


# --- the byte budget, from the header --------------------------------------------------------


@pytest.fixture
def no_pillow_decoding(monkeypatch):
    """Counts the pixel decodes Pillow starts (``ImageFile.load`` is where every format decodes)."""
    calls = []
    original = ImageFile.ImageFile.load

    def counting_load(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return calls


def test_a_colour_png_over_the_budget_is_refused_from_its_header_without_decoding(no_pillow_decoding):
    data = png_with_header(7000, 7000, colour_type=2)  # RGB: Pillow would hold 4 bytes a pixel, 187 MB
    with pytest.raises(InvalidImageError) as refused:
        load_image(data)
    message = str(refused.value)
    assert "7000 x 7000 pixels and would take 187 MB to decode, more than the 160 MB " + BUDGET_MESSAGE in message
    assert "Export it at a lower resolution, or as 8- or 16-bit grey." in message
    assert no_pillow_decoding == []


def test_16_bit_grey_at_the_pixel_limit_is_within_the_budget(no_pillow_decoding):
    # 7745 x 7745 at 2 bytes a pixel is 114 MB: past the budget check, Pillow starts decoding the
    # (junk) pixel data and finds it damaged.
    with pytest.raises(InvalidImageError) as refused:
        load_image(png_with_header(7745, 7745, colour_type=0, bit_depth=16))
    assert BUDGET_MESSAGE not in str(refused.value) and "damaged or incomplete" in str(refused.value)
    assert no_pillow_decoding == [(7745, 7745)]


@pytest.mark.parametrize(
    ("mode", "pixel_bytes"), [("L", 1), ("P", 1), ("I;16", 2), ("RGB", 4), ("RGBA", 4)]
)
def test_the_budget_is_what_pillow_holds_for_the_mode_to_the_byte(mode, pixel_bytes):
    image = Image.fromarray(PICTURE_16 if mode == "I;16" else PICTURE)
    data = encoded(image if image.mode == mode else image.convert(mode), "PNG")
    needed = WIDTH * HEIGHT * pixel_bytes
    pixels, _ = load_image(data, ImageLimits(max_decoded_bytes=needed))
    assert pixels.shape == (HEIGHT, WIDTH)
    with pytest.raises(InvalidImageError, match=BUDGET_MESSAGE):
        load_image(data, ImageLimits(max_decoded_bytes=needed - 1))


def test_a_progressive_jpeg_counts_its_full_size_coefficients():
    baseline = encoded(Image.fromarray(PICTURE), "JPEG", quality=90)
    progressive = encoded(Image.fromarray(PICTURE), "JPEG", quality=90, progressive=True)
    blocks = -(-WIDTH // 8) * -(-HEIGHT // 8)
    limits = ImageLimits(max_decoded_bytes=WIDTH * HEIGHT + blocks * 64 * 2 - 1)
    assert load_image(baseline, limits)[0].shape == (HEIGHT, WIDTH)
    with pytest.raises(InvalidImageError, match=BUDGET_MESSAGE):
        load_image(progressive, limits)


def test_a_jpeg_over_the_working_size_is_budgeted_at_its_reduced_decoding_size():
    data = encoded(Image.fromarray(PICTURE).convert("RGB"), "JPEG", quality=90)
    full_size = WIDTH * HEIGHT * 4
    with pytest.raises(InvalidImageError, match=BUDGET_MESSAGE):
        load_image(data, ImageLimits(max_decoded_bytes=full_size - 1))
    pixels, info = load_image(data, limits_for(2, max_decoded_bytes=full_size // 3))  # decoded at 1/2: a quarter
    assert info.reduction == 2 and pixels.shape == (-(-HEIGHT // 2), -(-WIDTH // 2))


@pytest.mark.parametrize(
    ("syntax", "pixel_bytes"),
    [(ExplicitVRLittleEndian, 4), (DeflatedExplicitVRLittleEndian, 4), (RLELossless, 4), (JPEG2000Lossless, 6)],
)
def test_a_dicom_over_the_budget_is_refused_before_its_pixels_are_decoded(syntax, pixel_bytes, monkeypatch):
    data = dicom_bytes(dicom_dataset(TWELVE_BIT, bits_stored=12, **WINDOW), syntax)
    needed = WIDTH * HEIGHT * pixel_bytes
    pixels, _ = load_image(data, ImageLimits(max_decoded_bytes=needed))
    np.testing.assert_array_equal(pixels, windowed_reference(TWELVE_BIT))

    decoded = []
    monkeypatch.setattr("pydicom.pixels.pixel_array", lambda *args, **kwargs: decoded.append(args))
    with pytest.raises(InvalidImageError) as refused:
        load_image(data, ImageLimits(max_decoded_bytes=needed - 1))
    assert f"{WIDTH} x {HEIGHT} pixels and would take" in str(refused.value) and BUDGET_MESSAGE in str(refused.value)
    assert decoded == []


def test_a_deflated_dicom_may_unpack_to_half_the_budget():
    stored = np.tile(TWELVE_BIT, (4, 4))  # 2.4 MB: more than the megabyte allowed for the header
    data = dicom_bytes(dicom_dataset(stored, bits_stored=12, **WINDOW), DeflatedExplicitVRLittleEndian)
    assert load_image(data, ImageLimits(max_decoded_bytes=2 * stored.nbytes))[0].shape == stored.shape
    with pytest.raises(InvalidImageError, match="unpacks to more than"):
        load_image(data, ImageLimits(max_decoded_bytes=2 * (stored.nbytes - 2**20)))  # the header's megabyte, no more


# --- reduction to the working size -------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "cap", "factor"),
    [((7740, 7740), 16_000_000, 2), ((4000, 4000), 16_000_000, 1), ((4001, 4000), 16_000_000, 2),
     ((7745, 7745), 16_000_000, 2), ((WIDTH, HEIGHT), CAP_FOR[3], 3), ((WIDTH, HEIGHT), CAP_FOR[4], 4)],
)
def test_the_reduction_factor_is_the_smallest_that_fits(size, cap, factor):
    width, height = size
    assert reduction_factor(width, height, cap) == factor
    assert -(-width // factor) * -(-height // factor) <= cap
    assert factor == 1 or -(-width // (factor - 1)) * -(-height // (factor - 1)) > cap


def test_the_issues_file_comes_back_reduced():
    data = encoded(Image.new("I;16", (7740, 7740)), "PNG")  # 16-bit zeros: about 116 kB on disk
    assert len(data) < 200_000
    pixels, info = load_image(data)
    assert pixels.shape == (3870, 3870) and pixels.dtype == np.uint16 and not pixels.any()
    assert (info.width, info.height, info.bit_depth, info.reduction) == (7740, 7740, 16, 2)
    assert info.warnings == ("The image is 7740 x 7740 pixels; it was reduced to 3870 x 3870 for processing.",)
    assert info.to_dict()["reduction"] == 2


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_16_bit_grey_is_reduced_in_strips_to_what_reducing_the_whole_image_gives(factor, small_strips):
    data = encoded(Image.fromarray(PICTURE_16), "PNG")
    pixels, info = load_image(data, limits_for(factor))
    whole = np.asarray(Image.open(io.BytesIO(data)).convert("I").reduce(factor)).astype(np.uint16)
    assert pixels.dtype == np.uint16 and info.bit_depth == 16 and info.reduction == factor
    np.testing.assert_array_equal(pixels, whole)
    assert np.abs(pixels.astype(np.int64) - block_mean(PICTURE_16, factor)).max() <= 1
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    expected = f"The image is {WIDTH} x {HEIGHT} pixels; it was reduced to {pixels.shape[1]} x {pixels.shape[0]} for processing."
    assert info.warnings == (expected,)


@pytest.mark.parametrize(
    ("name", "image", "to_rgb"),
    [
        ("RGB", Image.fromarray(np.dstack([PICTURE, PICTURE // 2, 255 - PICTURE])), None),
        ("palette", Image.fromarray(PICTURE).convert("P"), "RGB"),
        ("1-bit", Image.fromarray(PICTURE).convert("1"), "L"),
        ("8-bit grey", Image.fromarray(PICTURE), None),
    ],
)
def test_other_modes_are_reduced_like_their_full_decode(name, image, to_rgb, small_strips):
    data = encoded(image, "PNG")
    pixels, info = load_image(data, limits_for(2))
    full = Image.open(io.BytesIO(data))
    full = full.convert(to_rgb) if to_rgb else full
    np.testing.assert_array_equal(pixels, np.asarray(full.reduce(2).convert("L")), err_msg=name)
    grey = np.asarray(full.convert("L"))
    assert np.abs(pixels.astype(int) - block_mean(grey, 2)).max() <= 2, name  # the grey of means, not the mean of greys
    assert info.reduction == 2 and pixels.dtype == np.uint8


def test_part_transparent_rgba_is_reduced_in_strips_then_composited_on_black(small_strips):
    image = Image.fromarray(np.dstack([PICTURE] * 3 + [np.tile(np.arange(WIDTH) % 256, (HEIGHT, 1)).astype(np.uint8)]))
    data = encoded(image, "PNG")
    pixels, info = load_image(data, limits_for(2))
    whole = Image.open(io.BytesIO(data)).reduce(2)  # Pillow's own, premultiplied, whole image at once
    expected = Image.alpha_composite(Image.new("RGBA", whole.size, (0, 0, 0, 255)), whole).convert("L")
    np.testing.assert_array_equal(pixels, np.asarray(expected))
    assert "The image had transparency; transparent parts were filled with black." in info.warnings
    assert info.reduction == 2


def test_a_pa_image_is_reduced_through_its_colours_not_its_palette_indices():
    indices = (np.arange(WIDTH * HEIGHT).reshape(HEIGHT, WIDTH) % 2).astype(np.uint8)  # alternating black, white
    image = Image.frombytes("P", (WIDTH, HEIGHT), indices.tobytes())
    image.putpalette([0, 0, 0, 255, 255, 255])
    image = image.convert("PA")
    reduced = preprocessing._reduce(image, 2)
    assert reduced.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(reduced), np.asarray(image.convert("RGBA").reduce(2)))
    assert np.abs(np.asarray(reduced)[:-1, :-1, 0].astype(int) - 128).max() <= 1  # grey, not black or white


@pytest.mark.parametrize(("factor", "draft"), [(2, 2), (4, 4)])
def test_a_large_jpeg_is_decoded_at_reduced_scale_in_the_dct_domain(factor, draft, monkeypatch):
    data = encoded(Image.fromarray(PICTURE), "JPEG", quality=95)
    handed_on = []
    reduce = preprocessing._reduce
    monkeypatch.setattr(preprocessing, "_reduce", lambda image, k: handed_on.append(image.size) or reduce(image, k))
    pixels, info = load_image(data, limits_for(factor))
    assert handed_on == [(-(-WIDTH // draft), -(-HEIGHT // draft))]  # never a full-size decode
    assert info.reduction == factor and pixels.shape == (-(-HEIGHT // factor), -(-WIDTH // factor))
    full_then_mean = block_mean(np.asarray(Image.open(io.BytesIO(data))), factor)
    difference = np.abs(pixels.astype(int) - full_then_mean)
    assert difference.mean() < 1.0 and difference.max() <= 12


def test_a_jpeg_between_two_scales_is_drafted_then_reduced_the_rest():
    data = encoded(Image.fromarray(PICTURE), "JPEG", quality=95)
    pixels, info = load_image(data, limits_for(3))  # 1/3 is not a DCT scale: 1/2, then 2 more
    assert info.reduction == 4 and pixels.shape == (-(-HEIGHT // 4), -(-WIDTH // 4))
    assert pixels.shape[0] * pixels.shape[1] <= CAP_FOR[3]


def test_an_exif_rotated_jpeg_is_reduced_and_turned_upright_with_its_upright_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # display turned 90 degrees clockwise
    data = encoded(Image.fromarray(np.rot90(PICTURE).copy()), "JPEG", quality=95, exif=exif)  # stored HEIGHT wide
    pixels, info = load_image(data, limits_for(2))
    assert (info.width, info.height, info.reduction) == (WIDTH, HEIGHT, 2)
    # Reduced as stored, then turned: the partial blocks of the stored bottom edge end up on the left.
    stored = np.asarray(Image.open(io.BytesIO(data)))  # (WIDTH, HEIGHT)
    assert pixels.shape == (-(-HEIGHT // 2), -(-WIDTH // 2))
    assert np.abs(pixels.astype(int) - np.rot90(block_mean(stored, 2), -1)).mean() < 1.0
    assert f"The image is {WIDTH} x {HEIGHT} pixels; it was reduced to {pixels.shape[1]} x {pixels.shape[0]}" in info.warnings[-1]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
@pytest.mark.parametrize("factor", [2, 3])
def test_a_windowed_dicom_is_mapped_then_block_averaged_in_strips(syntax, factor, small_strips):
    data = dicom_bytes(dicom_dataset(TWELVE_BIT, bits_stored=12, **WINDOW), syntax)
    pixels, info = load_image(data, limits_for(factor))
    np.testing.assert_array_equal(pixels, block_mean(windowed_reference(TWELVE_BIT), factor))
    assert (info.width, info.height, info.reduction, info.format) == (WIDTH, HEIGHT, factor, "DICOM")
    assert info.warnings[-1].startswith(f"The image is {WIDTH} x {HEIGHT} pixels; it was reduced to")


def test_a_rescaled_dicom_without_a_window_is_stretched_by_the_whole_images_range(small_strips):
    stored = (PICTURE.astype(np.int16) * 40 - 5000).astype(np.int16)
    data = dicom_bytes(dicom_dataset(stored, RescaleSlope=2, RescaleIntercept=-100))
    full, _ = load_image(data)
    assert full.min() == 0 and full.max() == 65535  # the range of the whole image, not of a strip
    reduced, info = load_image(data, limits_for(2))
    np.testing.assert_array_equal(reduced, block_mean(full, 2))
    assert info.reduction == 2


def test_a_plain_8_bit_monochrome1_dicom_is_reduced_then_inverted(small_strips):
    data = dicom_bytes(dicom_dataset(PICTURE, photometric="MONOCHROME1"))
    pixels, info = load_image(data, limits_for(2))
    assert pixels.dtype == np.uint8 and info.reduction == 2
    np.testing.assert_array_equal(pixels, 255 - block_mean(PICTURE, 2))


# --- images under the working size: exactly today's pixels ---------------------------------------


def _pillow_reference(data: bytes) -> np.ndarray:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode == "I;16":
        return np.asarray(image, dtype=np.uint16)
    if image.mode in ("RGBA", "P") and (image.mode == "RGBA" or "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), rgba)
    return np.asarray(image.convert("RGB").convert("L") if image.mode != "L" else image)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.fromarray(np.rot90(PICTURE).copy()), "JPEG", quality=95, exif=exif)


UNDER_THE_CAP = {
    "png 8-bit": lambda: encoded(Image.fromarray(PICTURE), "PNG"),
    "png 16-bit": lambda: encoded(Image.fromarray(PICTURE_16), "PNG"),
    "tiff 16-bit": lambda: encoded(Image.fromarray(PICTURE_16), "TIFF"),
    "bmp": lambda: encoded(Image.fromarray(PICTURE), "BMP"),
    "jpeg grey": lambda: encoded(Image.fromarray(PICTURE), "JPEG", quality=90),
    "jpeg colour": lambda: encoded(Image.fromarray(np.dstack([PICTURE, PICTURE // 2, 255 - PICTURE])), "JPEG"),
    "jpeg exif-rotated": _exif_rotated,
    "png palette": lambda: encoded(Image.fromarray(PICTURE).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "png rgba": lambda: encoded(
        Image.fromarray(np.dstack([PICTURE] * 3 + [np.tile(np.arange(WIDTH) % 256, (HEIGHT, 1)).astype(np.uint8)])), "PNG"
    ),
}


@pytest.mark.parametrize("name", sorted(UNDER_THE_CAP))
def test_an_image_at_the_working_size_gets_exactly_a_plain_pillow_decode(name, small_strips):
    data = UNDER_THE_CAP[name]()
    limits = ImageLimits(max_working_pixels=WIDTH * HEIGHT)  # exactly at the cap: not reduced
    pixels, info = load_image(data, limits)
    expected = _pillow_reference(data)
    assert pixels.dtype == expected.dtype and pixels.shape == expected.shape
    np.testing.assert_array_equal(pixels, expected)
    assert info.reduction == 1 and (info.height, info.width) == pixels.shape
    assert not any("reduced" in warning for warning in info.warnings)
    reduced, reduced_info = load_image(data, ImageLimits(max_working_pixels=WIDTH * HEIGHT - 1))  # one pixel fewer
    assert reduced_info.reduction == 2 and reduced_info.warnings[-1].endswith("for processing.")
    assert reduced_info.warnings[:-1] == info.warnings


def test_a_dicom_at_the_working_size_gets_exactly_the_whole_array_mapping(small_strips):
    data = dicom_bytes(dicom_dataset(TWELVE_BIT, bits_stored=12, **WINDOW))
    pixels, info = load_image(data, ImageLimits(max_working_pixels=WIDTH * HEIGHT))
    np.testing.assert_array_equal(pixels, windowed_reference(TWELVE_BIT))
    assert info.reduction == 1 and info.warnings == ()


# --- the benchmark ---------------------------------------------------------------------------------


# The defaults' proportions: 0.9 bytes of file and 3 bytes of budget a pixel, a quarter of the pixel limit to work at.
SMALL_LIMITS = ImageLimits(max_bytes=900_000, max_pixels=1_000_000, max_working_pixels=250_000, max_decoded_bytes=3 * 2**20)


def test_every_memory_candidate_is_an_accepted_file(tmp_path):
    files = bench.write_memory_candidates(tmp_path, None, SMALL_LIMITS)
    assert len(files) >= 15 and "png 16-bit zeros (the issue's file)" in files
    for name, path in files.items():
        pixels, info = load_image(path, SMALL_LIMITS)  # a refused candidate would measure nothing
        assert pixels.size <= SMALL_LIMITS.max_working_pixels, name
        assert (info.reduction > 1) == (info.width * info.height > SMALL_LIMITS.max_working_pixels), name
    reduced = [name for name, path in files.items() if load_image(path, SMALL_LIMITS)[1].reduction > 1]
    assert len(reduced) >= 10  # most candidates test a reduced path


def test_the_memory_bench_keeps_the_speed_figures_and_reports_the_worst_accepted_file(tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "bench.json").write_text(json.dumps({"results": {"gradcam": {"median_s": 0.1}}, "targets": {"x": 1}}))
    files = {"small": tmp_path / "a.png", "big": tmp_path / "b.png", "refused": tmp_path / "c.png"}
    for path in files.values():
        path.write_bytes(b"x")
    peaks = {"a.png": (120.0, True), "b.png": (250.0, True), "c.png": (900.0, False)}

    def fake_request(path, model_path, limits=None):
        peak, accepted = peaks[Path(path).name]
        return {"peak_mb": peak, "accepted": accepted, "method": "fake"} | (
            {"shape": [10, 10], "warnings": []} if accepted else {"error": "refused"}
        )

    monkeypatch.setattr(bench, "write_memory_candidates", lambda folder, fullres, limits: files)
    monkeypatch.setattr(bench, "measure_request", fake_request)
    lines = []
    bench.run_bench(Path("model.keras"), None, None, reports, bench.BenchConfig(parts=("memory",)), log=lines.append)
    report = json.loads((reports / "bench.json").read_text())
    assert report["results"] == {"gradcam": {"median_s": 0.1}} and report["targets"] == {"x": 1}
    assert report["memory"]["worst"] == {"file": "big", "peak_mb": 250.0} and report["memory"]["met"] is True
    assert set(report["memory"]["candidates"]) == set(files)
    assert lines[-1] == (
        "memory, peak of one request for the worst accepted file (big): 250 MB above the idle process (bound 300 MB) met"
    )
    peaks["b.png"] = (301.0, True)
    bench.run_bench(Path("model.keras"), None, None, reports, bench.BenchConfig(parts=("memory",)), log=lines.append)
    assert json.loads((reports / "bench.json").read_text())["memory"]["met"] is False and lines[-1].endswith("MISSED")
