"""Speed benchmark of the product's steps on this machine, printed and written to ``reports/bench.json``.

Every step is timed per image with ``time.perf_counter`` after a warm-up call (tracing, first
allocations); nothing is cached between repeats. In the same run it times LIME the way a
notebook user would run it (the ``lime`` defaults: quickshift segmentation, ``batch_size=10``,
``model.predict``) on the same images, model, input size and sample count, and prints the ratio:
absolute times move with the machine's load, the ratio much less.
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


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure.

    Attributes:
        lime_images: test images explained with LIME (our way).
        naive_images: of those, how many are also explained the naive way.
        lime_samples: LIME perturbation samples, both ways.
        repeats: timed repeats per image for the fast steps.
        seed: which images are drawn.
    """

    lime_images: int = 20
    naive_images: int = 3
    lime_samples: int = 1000
    repeats: int = 5
    seed: int = 0


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
    data_dir: Path,
    fullres_dir: Path,
    reports_dir: Path,
    config: BenchConfig = BenchConfig(),
    log: Callable[[str], None] = print,
) -> dict:
    """Times every step and writes ``reports_dir / "bench.json"``; returns the report."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # lime's own progress bar
    from .crop import find_diaphragm
    from .data import scan_split
    from .explain import GradCam, LimeConfig, explain_lime
    from .preprocessing import load_and_preprocess, load_image
    from .prediction import Predictor

    predictor = Predictor.from_file(model_path)
    size = predictor.input_size
    rng = np.random.default_rng(config.seed)
    test = scan_split(Path(data_dir), "test")
    fullres = sorted(Path(fullres_dir).glob("*/*/*.jpeg")) if Path(fullres_dir).is_dir() else []
    chosen = [test[i] for i in rng.choice(len(test), config.lime_images, replace=False)]
    inputs = [load_and_preprocess(s.path, size)[0] for s in chosen]  # (size, size, 1) each
    results: dict[str, dict] = {}

    uploads = fullres or [s.path for s in chosen]
    load_and_preprocess(uploads[0], size)
    results["decode_preprocess_fullres"] = _summary([_timed(lambda p=p: load_and_preprocess(p, size)) for p in uploads])
    results["decode_preprocess_fullres"]["files"] = "full-size originals" if fullres else "224 px test files"
    log(f"decode + preprocess ({results['decode_preprocess_fullres']['files']}): {results['decode_preprocess_fullres']}")

    _, info = load_image(chosen[0].path)
    predictor.predict_input(inputs[0], info)
    results["predict_one"] = _summary(
        [_timed(lambda x=x: predictor.predict_input(x, info)) for x in inputs for _ in range(config.repeats)]
    )
    log(f"one prediction: {results['predict_one']}")
    if predictor.gate is not None:
        # The same images in the same run without the out-of-distribution gate: what the gate costs.
        ungated = Predictor(predictor.model, predictor.metadata, predictor.batch_size, gate=None)
        ungated.predict_input(inputs[0], info)
        results["predict_one_without_gate"] = _summary(
            [_timed(lambda x=x: ungated.predict_input(x, info)) for x in inputs for _ in range(config.repeats)]
        )
        results["predict_one"]["gate_overhead_ratio"] = (
            results["predict_one"]["median_s"] / results["predict_one_without_gate"]["median_s"]
        )
        log(f"one prediction without the gate: {results['predict_one_without_gate']}")

    gradcam = GradCam(predictor.model, predictor.metadata.gradcam_layer)
    gradcam(inputs[0])
    results["gradcam"] = _summary([_timed(lambda x=x: gradcam(x)) for x in inputs for _ in range(config.repeats)])
    log(f"Grad-CAM: {results['gradcam']}")

    detection_images = [load_image(p)[0] for p in uploads] + [load_image(s.path)[0] for s in chosen]
    find_diaphragm(detection_images[0])
    results["diaphragm"] = _summary([_timed(lambda p=p: find_diaphragm(p)) for p in detection_images])
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
    batch = np.stack([load_and_preprocess(p, size)[0] for p in paths])
    predictor.probabilities(batch)
    elapsed = time.perf_counter() - start
    results["batch_scoring"] = {"images": len(paths), "seconds": elapsed, "images_per_s": len(paths) / elapsed}
    log(f"batch scoring from 224 px files (decode + preprocess + predict): {results['batch_scoring']['images_per_s']:.0f} images/s")

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
    report = {
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model_sha256": predictor.metadata.model_sha256,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "config": asdict(config),
        "results": results,
        "targets": verdicts,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    for key, verdict in verdicts.items():
        log(f"{key}: {verdict['measured']:.4g} (target {verdict['target']:g}) {'met' if verdict['met'] else 'MISSED'}")
    return report
