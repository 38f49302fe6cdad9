"""Speed and memory benchmark of the product's steps on this machine, printed and written to
``reports/bench.json``.

Speed: every step is timed per image with ``time.perf_counter`` after a warm-up call (tracing,
first allocations); nothing is cached between repeats. In the same run it times LIME the way a
notebook user would run it (the ``lime`` defaults: quickshift segmentation, ``batch_size=10``,
``model.predict``) on the same images, model, input size and sample count, and prints the ratio:
absolute times move with the machine's load, the ratio much less.

Memory: the peak of one upload (decode, preprocess, predict with the gate, Grad-CAM, diaphragm,
screen copy) above the idle process, each in a fresh interpreter, for the accepted files most
likely to be the worst (``write_memory_candidates``), against ``MEMORY_BOUND_MB``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..paths import REPO_ROOT

# Targets of the explanation issue, in seconds (or images/s for throughput).
TARGETS = {
    "decode_preprocess_fullres_s": None,
    "predict_one_s": 0.050,
    "gradcam_s": 0.200,
    "lime_s": 5.0,
    "diaphragm_s": 0.200,
    "batch_images_per_s": 50.0,
    "lime_speedup_vs_naive": 3.0,
}
BENCH_PARTS = ("speed", "memory", "draft", "batch", "pacs", "onnx")


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure.

    Attributes:
        lime_images: test images explained with LIME (our way).
        naive_images: of those, how many are also explained the naive way.
        lime_samples: LIME perturbation samples, both ways.
        repeats: timed repeats per image for the fast steps.
        seed: which images are drawn.
        parts: what to measure, of ``BENCH_PARTS`` ("speed", "memory", "draft": the JPEG draft
            decode against the whole decode, "batch": ``batch`` on full-size films and at scale,
            ``lab.batch_bench``, "onnx": ONNX Runtime against TensorFlow, ``lab.onnx_bench``); a run
            of some parts keeps the other parts' figures in ``bench.json``.
        scale_files: distinct files of the batch part's scale run.
    """

    lime_images: int = 20
    naive_images: int = 3
    lime_samples: int = 1000
    repeats: int = 5
    seed: int = 0
    parts: tuple[str, ...] = BENCH_PARTS
    scale_files: int = 10_000


def _summary(seconds: list[float]) -> dict:
    values = np.asarray(seconds)
    return {"n": int(values.size), "median_s": float(np.median(values)), "p95_s": float(np.percentile(values, 95))}


def _timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def naive_lime(image: np.ndarray, model, num_samples: int, seed: int):
    """LIME as a notebook runs it: defaults everywhere, ``model.predict`` on batches of 10.

    Args:
        image: one model input (H, W, 1) float32 in [0, 1].
        model: the Keras model (logit output; a sigmoid is applied as the notebook would).
    """
    from lime import lime_image

    def classifier_fn(batch):  # (n, H, W, 3) float64
        logits = model.predict(batch[..., :1].astype(np.float32), verbose=0).reshape(-1)
        positive = 1.0 / (1.0 + np.exp(-logits))
        return np.stack([1.0 - positive, positive], axis=1)

    explainer = lime_image.LimeImageExplainer(random_state=seed)
    rgb = np.repeat(image.astype(np.float64), 3, axis=2)  # (H, W, 3)
    return explainer.explain_instance(rgb, classifier_fn, top_labels=1, num_samples=num_samples, random_seed=seed)


def run_bench(
    model_path: Path,
    data_dir: Path | None,
    fullres_dir: Path | None,
    reports_dir: Path,
    config: BenchConfig = BenchConfig(),
    log: Callable[[str], None] = print,
) -> dict:
    """Measures ``config.parts`` and writes ``reports_dir / "bench.json"``; returns the report.

    ``data_dir`` is needed for the speed part only; ``fullres_dir`` (full-size originals) may be
    None or missing.
    """
    unknown = set(config.parts) - set(BENCH_PARTS)
    if unknown or not config.parts:
        raise ValueError(f"bench parts must be some of {BENCH_PARTS}, not {sorted(unknown) or 'none'}")
    path = Path(reports_dir) / "bench.json"
    report = json.loads(path.read_text()) if path.is_file() and set(config.parts) != set(BENCH_PARTS) else {}
    if "speed" in config.parts:
        report |= {
            "created_utc": _now(),
            "machine": _machine(),
            "config": asdict(config),
            **_speed(model_path, Path(data_dir), fullres_dir, config, log),
            "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        }
    if "memory" in config.parts:
        report["memory"] = {"created_utc": _now(), "machine": _machine(), **run_memory_bench(model_path, fullres_dir, log=log)}
    if "draft" in config.parts:
        from .draft_check import measure_agreement, write_report

        report["draft"] = {"created_utc": _now(), **measure_agreement(Path(fullres_dir), model_path)}
        write_report(report["draft"], reports_dir)
        log(f"draft decode on {report['draft']['files']} full-size originals: median |dlogit| "
            f"{report['draft']['median_abs_delta_logit']:.4f}, max {report['draft']['max_abs_delta_logit']:.4f}, "
            f"gate flags changed {report['draft']['ood_flags_changed']} ({'met' if report['draft']['met'] else 'MISSED'})")
    if "batch" in config.parts:
        from .batch_bench import run_batch_bench

        report["batch"] = {"created_utc": _now(), "machine": _machine(),
                           **run_batch_bench(model_path, Path(data_dir), Path(fullres_dir), config.scale_files, log=log)}
        for key, verdict in report["batch"]["targets"].items():
            log(f"{key}: {verdict['measured']:.4g} (target {verdict['target']:g}) {'met' if verdict['met'] else 'MISSED'}")
    if "pacs" in config.parts:
        from .pacs_bench import run_pacs_bench

        from ..paths import REPO_ROOT
        from .pacs_bench import markdown, write_readme_block

        report["pacs"] = {"created_utc": _now(), "machine": _machine(), **run_pacs_bench(model_path, Path(fullres_dir), log=log)}
        write_readme_block(REPO_ROOT / "docs" / "pacs.md", markdown(report["pacs"], report["pacs"]["machine"]))
    if "onnx" in config.parts:
        from .onnx_bench import run_onnx_bench

        report["onnx"] = {"created_utc": _now(), "machine": _machine(),
                          "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                          **run_onnx_bench(model_path, Path(data_dir), Path(fullres_dir), log=log)}
        for key, verdict in report["onnx"]["targets"].items():
            log(f"{key}: {verdict['measured']:.4g} (target {verdict['target']:g}) {'met' if verdict['met'] else 'MISSED'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    if "speed" in config.parts:
        for key, verdict in report["targets"].items():
            log(f"{key}: {verdict['measured']:.4g} (target {verdict['target']:g}) {'met' if verdict['met'] else 'MISSED'}")
    return report


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def _speed(model_path: Path, data_dir: Path, fullres_dir: Path | None, config: BenchConfig, log: Callable[[str], None]) -> dict:
    """The speed part: ``results`` per step and ``targets`` verdicts, and the model's SHA."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # lime's own progress bar
    from ..crop import find_diaphragm
    from ..data import scan_split
    from .evaluation import call_files
    from ..explain import GradCam, LimeConfig, explain_lime
    from ..pipeline import DecodedImage
    from ..prediction import Predictor

    predictor = Predictor.from_file(model_path, runtime="keras")
    size = predictor.input_size
    rng = np.random.default_rng(config.seed)
    test = scan_split(Path(data_dir), "test")
    fullres = sorted(Path(fullres_dir).glob("*/*/*.jpeg")) if fullres_dir and Path(fullres_dir).is_dir() else []
    chosen = [test[i] for i in rng.choice(len(test), config.lime_images, replace=False)]
    decoded = [DecodedImage.decode(s.path) for s in chosen]  # 224 px files: small
    inputs = [image.model_input(size) for image in decoded]  # (size, size, 1) each
    results: dict[str, dict] = {}

    uploads = fullres or [s.path for s in chosen]

    def decode_and_preprocess(path):  # what an upload costs before the call: decode, SHA-256, model input
        DecodedImage.decode(path).model_input(size)

    decode_and_preprocess(uploads[0])
    results["decode_preprocess_fullres"] = _summary([_timed(lambda p=p: decode_and_preprocess(p)) for p in uploads])
    results["decode_preprocess_fullres"]["files"] = "full-size originals" if fullres else "224 px test files"
    log(f"decode + preprocess ({results['decode_preprocess_fullres']['files']}): {results['decode_preprocess_fullres']}")

    # Predictor.call on decoded images whose model input is already made: the scoring alone.
    predictor.call(decoded[0])
    results["predict_one"] = _summary(
        [_timed(lambda image=image: predictor.call(image)) for image in decoded for _ in range(config.repeats)]
    )
    log(f"one prediction: {results['predict_one']}")
    if predictor.gate is not None:
        # The same images in the same run without the out-of-distribution gate: what the gate costs.
        ungated = Predictor(predictor.model, predictor.metadata, predictor.batch_size, gate=None)
        ungated.call(decoded[0])
        results["predict_one_without_gate"] = _summary(
            [_timed(lambda image=image: ungated.call(image)) for image in decoded for _ in range(config.repeats)]
        )
        results["predict_one"]["gate_overhead_ratio"] = (
            results["predict_one"]["median_s"] / results["predict_one_without_gate"]["median_s"]
        )
        log(f"one prediction without the gate: {results['predict_one_without_gate']}")

    gradcam = GradCam(predictor.model, predictor.metadata.gradcam_layer)
    gradcam(inputs[0])
    results["gradcam"] = _summary([_timed(lambda x=x: gradcam(x)) for x in inputs for _ in range(config.repeats)])
    log(f"Grad-CAM: {results['gradcam']}")

    # One full-size image decoded at a time, never all of them at once.
    find_diaphragm(decoded[0].pixels)
    diaphragm_seconds = []
    for path in list(uploads) + [s.path for s in chosen]:
        pixels = DecodedImage.decode(path).pixels
        diaphragm_seconds.append(_timed(lambda: find_diaphragm(pixels)))
    results["diaphragm"] = _summary(diaphragm_seconds)
    log(f"diaphragm detection: {results['diaphragm']}")

    lime_config = LimeConfig(num_samples=config.lime_samples)
    explain_lime(inputs[0], predictor, LimeConfig(num_samples=64))
    ours = [_timed(lambda x=x: explain_lime(x, predictor, lime_config)) for x in inputs]
    results["lime"] = _summary(ours) | {"samples": config.lime_samples}
    log(f"LIME, ours ({config.lime_samples} samples, {len(inputs)} images): {results['lime']}")

    naive_lime(inputs[0], predictor.model, 20, config.seed)  # warm-up of model.predict
    naive = [_timed(lambda x=x: naive_lime(x, predictor.model, config.lime_samples, config.seed)) for x in inputs[: config.naive_images]]
    results["lime_naive"] = _summary(naive) | {"samples": config.lime_samples, "how": "lime defaults: quickshift, batch_size=10, model.predict"}
    same_images = np.asarray(ours[: config.naive_images])
    speedup = float(np.median(np.asarray(naive) / same_images))
    results["lime_speedup_vs_naive"] = {"median_ratio_same_images": speedup}
    log(f"LIME, naive way ({len(naive)} images): {results['lime_naive']}; ours is {speedup:.1f}x faster on the same images")

    paths = [s.path for s in test]
    start = time.perf_counter()
    call_files(predictor, paths)  # as evaluation scores: decoded once, Predictor.calls in batches, with the gate
    elapsed = time.perf_counter() - start
    results["batch_scoring"] = {"images": len(paths), "seconds": elapsed, "images_per_s": len(paths) / elapsed}
    log(f"batch scoring from 224 px files (decode + preprocess + call with the gate): {results['batch_scoring']['images_per_s']:.0f} images/s")

    measured = {
        "decode_preprocess_fullres_s": results["decode_preprocess_fullres"]["median_s"],
        "predict_one_s": results["predict_one"]["median_s"],
        "gradcam_s": results["gradcam"]["median_s"],
        "lime_s": results["lime"]["median_s"],
        "diaphragm_s": results["diaphragm"]["median_s"],
        "batch_images_per_s": results["batch_scoring"]["images_per_s"],
        "lime_speedup_vs_naive": speedup,
    }
    verdicts = {}
    for key, target in TARGETS.items():
        if target is None:
            continue
        higher_is_better = key in ("batch_images_per_s", "lime_speedup_vs_naive")
        verdicts[key] = {"measured": measured[key], "target": target, "met": measured[key] >= target if higher_is_better else measured[key] <= target}
    return {"model_sha256": predictor.metadata.model_sha256, "results": results, "targets": verdicts}


# --- memory: the peak of one upload --------------------------------------------------------

# The issue's bound: one request may raise the process's memory by at most this much above idle.
MEMORY_BOUND_MB = 300.0  # MB of 2**20 bytes, the package's unit
_REQUEST_SAMPLE = REPO_ROOT / "assets" / "samples" / "person153_bacteria_726.jpeg"


def _film(side_x: int, side_y: int, *, nearest: bool = False) -> np.ndarray:
    """A real 224 px test film stretched to (side_y, side_x), uint8: realistic content that compresses
    the way radiographs do (``nearest``: blocky, for run-length coding)."""
    import cv2
    from PIL import Image

    grey = np.asarray(Image.open(_REQUEST_SAMPLE).convert("L"))  # (224, 224) uint8
    return cv2.resize(grey, (side_x, side_y), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def _save_pillow(path: Path, pixels: np.ndarray, fmt: str, mode: str | None = None, **save_args) -> Path:
    from PIL import Image

    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(path, format=fmt, **save_args)
    return path


def _dicom_dataset(sop_class: str, syntax):
    """An empty data set of ``sop_class`` with its file meta, a new instance UID, in ``syntax``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    return ds


def _save_dicom(path: Path, pixels: np.ndarray, syntax, windowed: bool = True) -> Path:
    """A 12-bit-in-16 DX image with a window (the float VOI chain); ``syntax`` any pydicom can write."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    ds = _dicom_dataset("1.2.840.10008.5.1.4.1.1.1.1", ExplicitVRLittleEndian)  # DX image storage
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "AP"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if windowed:
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)
    return path


def _save_colour_jpeg_dicom(path: Path, grey: np.ndarray) -> Path:
    """An 8-bit colour (YBR_FULL_422) JPEG baseline secondary capture of a grey picture."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    jpeg = io.BytesIO()
    Image.fromarray(grey).convert("RGB").save(jpeg, format="JPEG", quality=90)
    ds = _dicom_dataset("1.2.840.10008.5.1.4.1.1.7", JPEGBaseline8Bit)  # secondary capture
    ds.Modality = "OT"
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_memory_candidates(folder: Path, fullres_dir: Path | None = None, limits=None) -> dict[str, Path]:
    """Writes the accepted uploads most likely to need the most memory, each at the limit it tests.

    The issue's file (7740 x 7740 16-bit zeros); at the pixel limit: 16-bit noise, JPEGs (grey,
    progressive, colour), a 16-bit deflated TIFF and a palette PNG; at the byte budget (the
    largest ``max_decoded_bytes`` admits): a part-transparent RGBA PNG and 16-bit DICOM deflated,
    RLE and JPEG 2000, and a colour JPEG DICOM; at the file-size limit: uncompressed 16-bit DICOM
    and TIFF and an 8-bit BMP; just under the working size (not reduced): a 16-bit DICOM (a
    4300 x 3500 detector's), a 16-bit PNG and a part-transparent RGBA PNG; and the largest real
    full-size film in ``fullres_dir``. Sides follow ``limits``, so small limits give small files.

    Returns:
        ``{name: path}`` in a stable order.
    """
    from math import isqrt

    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless
    from PIL import Image

    from ..preprocessing import ImageLimits

    limits = limits or ImageLimits()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    at_cap = isqrt(limits.max_pixels)  # 7745 x 7745 by default
    working = isqrt(limits.max_working_pixels)
    budget = limits.max_decoded_bytes
    issue = min(7740, at_cap)
    files: dict[str, Path] = {}

    files["png 16-bit zeros (the issue's file)"] = _save_pillow(folder / "zeros16.png", np.zeros((issue, issue), np.uint16), "PNG")
    for bits in (5, 4, 3, 2, 1):  # noise, as many bits as the file-size limit allows
        path = _save_pillow(folder / "noise16.png", rng.integers(0, 2**bits, (at_cap, at_cap), dtype=np.uint16), "PNG")
        if path.stat().st_size <= limits.max_bytes:
            break
    files[f"png 16-bit noise ({bits} bits) at the pixel limit"] = path
    film = _film(at_cap, at_cap)
    files["jpeg 8-bit grey at the pixel limit"] = _save_pillow(folder / "grey.jpeg", film, "JPEG", quality=90)
    files["jpeg 8-bit grey progressive at the pixel limit"] = _save_pillow(
        folder / "progressive.jpeg", film, "JPEG", quality=90, progressive=True
    )
    files["jpeg colour at the pixel limit"] = _save_pillow(folder / "colour.jpeg", film, "JPEG", "RGB", quality=90)
    # Pillow holds RGB and RGBA in 4 bytes a pixel; part transparent, it is composited on black too.
    rgba_side = min(at_cap, isqrt(budget // 4))
    ramp = np.broadcast_to((np.arange(rgba_side) % 256).astype(np.uint8), (rgba_side, rgba_side))  # every alpha level
    files["png RGBA, part transparent, at the byte budget"] = _save_pillow(
        folder / "rgba_budget.png", np.dstack([_film(rgba_side, rgba_side)] * 3 + [ramp]), "PNG"
    )
    del ramp
    # 16-bit DICOM as large as the budget lets each decoder go (dicom.decoded_bytes: 4 bytes a pixel
    # uncompressed, deflated or RLE; 6 for JPEG 2000), and colour JPEG DICOM (YBR: 27 bytes a pixel).
    for name, syntax, pixel_bytes in (
        ("deflated", DeflatedExplicitVRLittleEndian, 4),
        ("RLE", RLELossless, 4),
        ("JPEG 2000", JPEG2000Lossless, 6),
    ):
        side = min(at_cap, isqrt(budget // pixel_bytes))
        twelve = _film(side, side, nearest=True).astype(np.uint16) * 16  # (side, side) 12-bit values
        files[f"dicom 16-bit {name} at the byte budget"] = _save_dicom(folder / f"{name.replace(' ', '')}.dcm", twelve, syntax)
    del twelve
    side = min(at_cap, isqrt(budget // 27))
    files["dicom colour JPEG (YBR) at the byte budget"] = _save_colour_jpeg_dicom(folder / "colour_jpeg.dcm", _film(side, side))
    native = isqrt((limits.max_bytes - 8192) // 2)
    files["dicom 16-bit uncompressed at the file-size limit"] = _save_dicom(
        folder / "native.dcm", _film(native, native).astype(np.uint16) * 16, ExplicitVRLittleEndian
    )
    rows, columns = (4300, 3500) if 4300 * 3500 <= limits.max_working_pixels else (working, working)
    files[f"dicom 16-bit uncompressed just under the working size ({columns} x {rows}, a detector's)"] = _save_dicom(
        folder / "detector.dcm", _film(columns, rows).astype(np.uint16) * 16, ExplicitVRLittleEndian
    )
    bmp = isqrt(limits.max_bytes - 2048) // 4 * 4
    files["bmp 8-bit grey at the file-size limit"] = _save_pillow(folder / "grey.bmp", _film(bmp, bmp), "BMP")
    files["tiff 16-bit uncompressed at the file-size limit"] = _save_pillow(
        folder / "native16.tiff", _film(native, native).astype(np.uint16) * 257, "TIFF"
    )
    files["tiff 16-bit deflate at the pixel limit"] = _save_pillow(
        folder / "deflate16.tiff", film.astype(np.uint16) * 257, "TIFF", compression="tiff_adobe_deflate"
    )
    noisy = _film(working, working).astype(np.uint16) * 257 + rng.integers(0, 256, (working, working), dtype=np.uint16)
    files["png 16-bit just under the working size"] = _save_pillow(folder / "working16.png", noisy, "PNG")
    del noisy
    ramp = np.broadcast_to((np.arange(working) % 256).astype(np.uint8), (working, working))  # every alpha level
    part_transparent = np.dstack([_film(working, working)] * 3 + [ramp])
    files["png RGBA, part transparent, just under the working size"] = _save_pillow(folder / "rgba.png", part_transparent, "PNG")
    del part_transparent
    files["png palette at the pixel limit"] = _save_pillow(folder / "palette.png", film, "PNG", "P")
    del film
    films = sorted(Path(fullres_dir).glob("*/*/*.jpeg")) if fullres_dir and Path(fullres_dir).is_dir() else []
    if films:
        largest = max(films, key=lambda path: np.prod(Image.open(path).size))
        files[f"real full-size film ({'x'.join(map(str, Image.open(largest).size))})"] = largest
    return files


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


class _PeakMeter:
    """The process's peak resident memory from now on: the kernel's high-water mark (VmHWM),
    reset through /proc/self/clear_refs, or else a thread sampling VmRSS every 5 ms."""

    def __init__(self) -> None:
        import threading

        self.baseline_kb = _vm_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "VmRSS sampled every 5 ms"
        self._sampled_kb = self.baseline_kb
        self._stop = threading.Event()
        self._thread = None
        if self.method.startswith("VmRSS"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled_kb = max(self._sampled_kb, _vm_kb("VmRSS"))

    def peak_mb(self) -> float:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak_kb = max(self._sampled_kb, _vm_kb("VmRSS"))
        else:
            peak_kb = _vm_kb("VmHWM")
        return (peak_kb - self.baseline_kb) / 1024


def request_peak(image: Path, model_path: Path, limits: dict | None = None) -> dict:
    """One upload's peak memory in this process, above the idle process, in MB (2**20 bytes).

    Loads the predictor and warms every step up on a small image; then, with the high-water mark
    reset, does what the app does for one upload: ``DecodedImage.decode`` of the bytes (its
    SHA-256, pixels and model input), ``Predictor.call`` (with the gate), Grad-CAM,
    ``find_diaphragm`` and the screen copy (``display.screen_grey``). Run it in a fresh
    interpreter (``measure_request``): earlier work leaves memory behind.

    Returns:
        ``peak_mb``, ``accepted``, the returned pixels' ``shape``, ``warnings`` or ``error``,
        ``seconds`` and how the peak was measured.
    """
    import gc
    import io

    from PIL import Image

    from ..crop import find_diaphragm
    from ..display import screen_grey
    from ..errors import InvalidImageError
    from ..explain import GradCam
    from ..pipeline import DecodedImage
    from ..prediction import Predictor
    from ..preprocessing import ImageLimits

    image_limits = ImageLimits(**(limits or {}))
    predictor = Predictor.from_file(Path(model_path))  # the app's runtime: ONNX Runtime
    gradcam = GradCam(predictor.model, predictor.metadata.gradcam_layer)

    def upload(data: bytes):
        image = DecodedImage.decode(data, image_limits)
        predictor.call(image)
        gradcam(image.model_input(predictor.input_size))  # (size, size, 1)
        find_diaphragm(image.pixels)
        screen_grey(image.pixels)
        return image.pixels, image.info

    warm = io.BytesIO()
    Image.fromarray(_film(300, 300)).save(warm, format="PNG")
    upload(warm.getvalue())
    gc.collect()
    meter = _PeakMeter()
    start = time.perf_counter()
    record: dict = {}
    try:
        pixels, info = upload(Path(image).read_bytes())  # the upload's bytes count: the server holds them too
        record |= {"accepted": True, "shape": list(pixels.shape), "warnings": list(info.warnings)}
        del pixels
    except InvalidImageError as error:
        record |= {"accepted": False, "error": str(error)}
    record["seconds"] = time.perf_counter() - start
    record["peak_mb"] = meter.peak_mb()
    record["method"] = meter.method
    return record


def measure_request(image: Path, model_path: Path, limits: dict | None = None) -> dict:
    """``request_peak`` in a fresh interpreter, importing this copy of the package.

    Raises:
        RuntimeError: the interpreter failed (its last lines of output are in the message).
    """
    import subprocess
    import sys

    root = REPO_ROOT
    request = json.dumps({"image": str(Path(image).resolve()), "model": str(Path(model_path).resolve()), "limits": limits or {}})
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-m", f"{__package__}.bench", request], cwd=root, env=env, capture_output=True, text=True
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the request for {image} failed: {(done.stderr or done.stdout)[-2000:]}")
    return json.loads(lines[-1])


def run_memory_bench(
    model_path: Path, fullres_dir: Path | None, limits=None, log: Callable[[str], None] = print, work_dir: Path | None = None
) -> dict:
    """The peak of one request for every candidate (``write_memory_candidates``), each in a fresh
    interpreter; logs one line each and one for the worst accepted file.

    Returns:
        ``{"bound_mb", "candidates": {name: record}, "worst": {...}, "met"}``.
    """
    import dataclasses
    import tempfile

    from ..preprocessing import ImageLimits

    limits = limits or ImageLimits()
    changed = {
        f.name: getattr(limits, f.name) for f in dataclasses.fields(limits) if getattr(limits, f.name) != f.default
    }
    with tempfile.TemporaryDirectory(dir=work_dir) as folder:
        files = write_memory_candidates(Path(folder), fullres_dir, limits)
        candidates = {}
        for name, path in files.items():
            record = measure_request(path, model_path, changed) | {"file_mb": path.stat().st_size / 2**20}
            candidates[name] = record
            outcome = f"{record['shape'][1]} x {record['shape'][0]} returned" if record["accepted"] else f"refused: {record['error']}"
            log(f"memory, one request, {name} ({record['file_mb']:.1f} MB file): peak {record['peak_mb']:.0f} MB; {outcome}")
    accepted = {name: record for name, record in candidates.items() if record["accepted"]}
    worst_name = max(accepted, key=lambda name: accepted[name]["peak_mb"]) if accepted else None
    worst = {"file": worst_name, "peak_mb": accepted[worst_name]["peak_mb"]} if worst_name else {"file": None, "peak_mb": 0.0}
    met = worst["peak_mb"] <= MEMORY_BOUND_MB
    log(
        f"memory, peak of one request for the worst accepted file ({worst['file']}): {worst['peak_mb']:.0f} MB "
        f"above the idle process (bound {MEMORY_BOUND_MB:.0f} MB) {'met' if met else 'MISSED'}"
    )
    return {"bound_mb": MEMORY_BOUND_MB, "method": next(iter(candidates.values()))["method"] if candidates else None,
            "candidates": candidates, "worst": worst, "met": met}


if __name__ == "__main__":  # one request in a fresh interpreter: measure_request runs this
    import sys

    _request = json.loads(sys.argv[1])
    print(json.dumps(request_peak(Path(_request["image"]), Path(_request["model"]), _request["limits"])))
