"""The ``batch`` section of the bench (``python -m pneumo_model bench --only batch``): printed and
written to ``reports/bench.json`` under ``batch``.

* **Speed on full-size films**, same run, same files, this machine: the 48 full-size originals
  re-encoded ``copies`` times with small changes (every file distinct), scored by ``predict``'s
  loop as it was before the draft decode (one file at a time, decoded whole), by ``predict``'s
  loop now, by ``batch`` with the local engine and by ``batch`` with the Ray engine on a Ray
  started here. Rates count every file (``images_per_s``) and, to set the start-up apart
  (``steady_images_per_s``; on Ray the actors load TensorFlow and the model at each run), the
  rows after the first quarter over the time they took.
* **Scale**: ``scale_files`` distinct files (the 48 originals and the official test split
  re-encoded with small changes: training and test images alike, used for timing only, never
  for a figure of accuracy), scored by ``batch`` in a fresh interpreter for growing prefixes of
  the same shuffled list: seconds per file (linear cost: constant) and the process's peak
  resident memory (bounded: it must not grow with the number of files).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..paths import REPO_ROOT

SCALE_STEPS = (0.1, 0.3, 1.0)  # prefixes of the scale set, as shares of it


def _variant(pixels: np.ndarray, index: int, quality: int) -> bytes:
    """``pixels`` (2-D uint8) with one pixel nudged by ``index``, as a JPEG: a distinct file, the same film."""
    from PIL import Image

    changed = pixels.copy()
    row, column = divmod(index, changed.shape[1])
    changed[row % changed.shape[0], column] ^= 1
    buffer = io.BytesIO()
    Image.fromarray(changed).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _grey(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"))


def write_variants(sources: list[Path], folder: Path, total: int, quality: int = 90) -> list[Path]:
    """``total`` distinct JPEGs made from ``sources`` in turn (each film ``total / len(sources)``
    times, each time with another pixel nudged), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, len(sources)):
        pixels = _grey(sources[start])
        for index in range(start, total, len(sources)):
            path = folder / f"{index:06d}.jpeg"
            path.write_bytes(_variant(pixels, index // len(sources), quality))
            written.append(path)
    return sorted(written)


class _Timed:
    """An engine that notes when each row came (from ``rows``' call on)."""

    def __init__(self, engine):
        self.engine = engine
        self.name, self.model_sha = engine.name, engine.model_sha
        self.operating_point, self.threshold = engine.operating_point, engine.threshold
        self.started, self.arrivals = None, []

    def rows(self, items):
        self.started = time.perf_counter()
        for row in self.engine.rows(items):
            self.arrivals.append(time.perf_counter())
            yield row

    def close(self):
        self.engine.close()

    def rates(self) -> dict:
        """Every file over the whole time, and (steady) the rows after the first quarter over the
        time they took: the start-up (tracing; on Ray the actors' TensorFlow and model) left out."""
        count, quarter = len(self.arrivals), len(self.arrivals) // 4
        seconds = self.arrivals[-1] - self.started
        steady = (count - 1 - quarter) / (self.arrivals[-1] - self.arrivals[quarter])
        return {"files": count, "seconds": seconds, "images_per_s": count / seconds, "steady_images_per_s": steady,
                "first_row_after_s": self.arrivals[0] - self.started}


def _loop_rate(predictor, paths: list[Path], limits) -> dict:
    """``predict``'s loop: each file read, decoded (``DecodedImage.decode`` with ``limits``) and called alone."""
    from ..pipeline import DecodedImage

    start = time.perf_counter()
    for path in paths:
        predictor.call(DecodedImage.decode(path.read_bytes(), limits))
    seconds = time.perf_counter() - start
    return {"files": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds}


def full_size_speed(model_path: Path, fullres_dir: Path, work: Path, copies: int, log: Callable[[str], None]) -> dict:
    """Full-size images/s four ways on the same files (see the module's docstring)."""
    import ray

    from ..batch import BatchSettings, LocalEngine, open_source, run_batch
    from ..batch_ray import RayEngine, RaySettings
    from ..pipeline import DecodedImage
    from ..prediction import Predictor
    from ..preprocessing import ImageLimits

    originals = sorted(Path(fullres_dir).glob("**/*.jpeg"))
    paths = write_variants(originals, work / "fullsize", len(originals) * copies)
    predictor = Predictor.from_file(model_path, runtime="keras")
    predictor.call(DecodedImage.decode(paths[0]))  # warm-up: tracing
    results = {"files": len(paths), "from_originals": len(originals)}
    results["predict_before_draft"] = _loop_rate(predictor, paths, ImageLimits(draft_side=0))
    log(f"batch bench: predict's loop, whole decode (before): {results['predict_before_draft']['images_per_s']:.1f} full-size images/s")
    results["predict_now"] = _loop_rate(predictor, paths, ImageLimits())
    log(f"batch bench: predict's loop now (draft decode): {results['predict_now']['images_per_s']:.1f} full-size images/s")
    items = open_source(work / "fullsize")
    local = _Timed(LocalEngine(predictor, BatchSettings()))
    run_batch(items, local, work / "results_local", progress=False)
    results["batch_local"] = local.rates()
    log(f"batch bench: batch --engine local: {results['batch_local']['images_per_s']:.1f} full-size images/s "
        f"({results['batch_local']['steady_images_per_s']:.1f} after the first quarter)")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _temp_dir=str(work / "ray"))
    try:
        started = time.perf_counter()
        remote = _Timed(RayEngine(model_path, settings=RaySettings()))
        run_batch(items, remote, work / "results_ray", progress=False)
        results["batch_ray"] = remote.rates() | {"seconds_with_engine_start": time.perf_counter() - started}
    finally:
        ray.shutdown()
    log(f"batch bench: batch --engine ray (Ray started here, {os.cpu_count()} CPUs): {results['batch_ray']['images_per_s']:.1f} "
        f"full-size images/s, {results['batch_ray']['steady_images_per_s']:.1f} after the first quarter (first row after "
        f"{results['batch_ray']['first_row_after_s']:.1f} s: the actors' start)")
    import pandas as pd

    local_rows = pd.read_parquet(work / "results_local").sort_values("file")
    ray_rows = pd.read_parquet(work / "results_ray").sort_values("file")
    assert local_rows["file"].tolist() == ray_rows["file"].tolist()
    results["ray_max_abs_probability_difference"] = float(np.max(np.abs(local_rows["probability"].to_numpy() - ray_rows["probability"].to_numpy())))
    before = results["predict_before_draft"]["images_per_s"]
    results["local_vs_predict_before"] = results["batch_local"]["images_per_s"] / before
    results["ray_vs_local"] = results["batch_ray"]["images_per_s"] / results["batch_local"]["images_per_s"]
    results["ray_vs_local_steady"] = results["batch_ray"]["steady_images_per_s"] / results["batch_local"]["steady_images_per_s"]
    return results


def scale_set(data_dir: Path, fullres_dir: Path, folder: Path, total: int, seed: int = 0) -> list[Path]:
    """``total`` distinct JPEGs from the full-size originals and the official test split, in one
    seeded shuffled order (so that every prefix holds the same mix)."""
    from ..data import scan_split

    sources = sorted(Path(fullres_dir).glob("**/*.jpeg")) + [sample.path for sample in scan_split(Path(data_dir), "test")]
    full = write_variants(sources, folder, total, quality=85)
    order = np.random.default_rng(seed).permutation(len(full))
    return [full[index] for index in order]


def scale_run(model_path: Path, data_dir: Path, fullres_dir: Path, work: Path, total: int, log: Callable[[str], None]) -> dict:
    """Seconds per file and peak memory of ``batch`` on growing prefixes of ``total`` files."""
    start = time.perf_counter()
    files = scale_set(data_dir, fullres_dir, work / "scale", total)
    log(f"batch bench: {len(files)} distinct files written in {time.perf_counter() - start:.0f} s")
    runs = []
    for share in SCALE_STEPS:
        count = max(1, int(round(share * len(files))))
        listing = work / f"scale_{count}.txt"
        listing.write_text("\n".join(str(path) for path in files[:count]) + "\n")
        runs.append(measure_batch_process(model_path, listing, work / f"scale_results_{count}"))
        log(f"batch bench: scale, {count} files: {runs[-1]['seconds']:.1f} s, {1000 * runs[-1]['seconds'] / count:.2f} ms a file, "
            f"{runs[-1]['images_per_s']:.0f} images/s, peak resident memory {runs[-1]['peak_rss_mb']:.0f} MB")
    per_file = [run["seconds"] / run["files"] for run in runs]
    return {
        "files": len(files), "runs": runs,
        "seconds_per_file_largest_over_smallest": max(per_file) / min(per_file),
        "peak_rss_mb_largest_over_smallest_run": runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"],
    }


def measure_batch_process(model_path: Path, listing: Path, out: Path) -> dict:
    """``batch`` on the files of ``listing`` in a fresh interpreter (``batch_in_this_process``)."""
    request = json.dumps({"model": str(model_path), "listing": str(listing), "out": str(out)})
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-m", __name__, request], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the scale run failed: {(done.stderr or done.stdout)[-2000:]}")
    return json.loads(lines[-1])


def batch_in_this_process(model_path: Path, listing: Path, out: Path) -> dict:
    """Runs ``batch`` (local engine) and returns its counts, seconds (model loaded, scoring only) and
    this process's peak resident memory (VmHWM) at the end, in MB."""
    from ..batch import LocalEngine, open_source, run_batch
    from ..prediction import Predictor

    engine = LocalEngine(Predictor.from_file(Path(model_path), runtime="keras"))
    summary = run_batch(open_source(listing), engine, out, progress=False)
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return {"files": summary.files, "scored": summary.scored, "errors": summary.errors, "seconds": summary.seconds,
            "images_per_s": summary.files / summary.seconds, "peak_rss_mb": peak_kb / 1024}


def run_batch_bench(model_path: Path, data_dir: Path, fullres_dir: Path, scale_files: int, copies: int = 20,
                    log: Callable[[str], None] = print, work_dir: Path | None = None) -> dict:
    """Both parts, in a temporary folder removed after."""
    with tempfile.TemporaryDirectory(dir=work_dir) as folder:
        work = Path(folder)
        speed = full_size_speed(Path(model_path), Path(fullres_dir), work, copies, log)
        scale = scale_run(Path(model_path), Path(data_dir), Path(fullres_dir), work, scale_files, log)
    return {"full_size": speed, "scale": scale, "targets": {
        "batch_local_full_size_images_per_s": {"measured": speed["batch_local"]["images_per_s"], "target": 150.0,
                                               "met": speed["batch_local"]["images_per_s"] >= 150.0},
        "ray_vs_local_steady": {"measured": speed["ray_vs_local_steady"], "target": 0.8, "met": speed["ray_vs_local_steady"] >= 0.8},
    }}


if __name__ == "__main__":  # one scale run in a fresh interpreter: measure_batch_process runs this
    _request = json.loads(sys.argv[1])
    print(json.dumps(batch_in_this_process(Path(_request["model"]), Path(_request["listing"]), Path(_request["out"]))))
