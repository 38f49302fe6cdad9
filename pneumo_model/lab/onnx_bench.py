"""The ``onnx`` section of the bench (``python -m pneumo_model bench --only onnx``): the run time on
ONNX Runtime against the TensorFlow path, in the same run, on the same files; written to
``reports/bench.json`` under ``onnx``.

* **One film, whole command**: ``predict`` on one 224 px test film in a fresh interpreter, wall
  time and peak resident memory of the process (``wait4``'s ``ru_maxrss``), ``repeats`` times per
  runtime: the ``predict`` command itself (ONNX Runtime), and the same steps (load, decode, call
  with the gate, print the record) on each runtime through ``Predictor.from_file(runtime=...)``.
* **Ray actor start**: what an actor does before its first batch (import, ``batch_ray._Scorer``:
  load the model and the gate) in a fresh interpreter, per runtime.
* **Throughput**: ``batch`` with the local engine and with the Ray engine (Ray started here), on
  each runtime, same distinct full-size files (``batch_bench.write_variants``); images/s overall
  and after the first quarter (steady), and Ray over local.
* **Parity**: both runtimes on every validation and test film (``onnx_export.parity``):
  the largest differences and the changed calls, grey-zone flags and gate flags.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ..paths import REPO_ROOT

RUNTIMES = ("onnx", "keras")
# The targets (issue 25): one film's command, and a Ray actor's start.
TARGETS = {"predict_wall_s": 1.5, "predict_peak_mb": 300.0, "actor_ready_s": 2.0, "ray_vs_local": 0.8}

_PREDICT_STEPS = """
import json, sys
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor
from pneumo_model.preprocessing import read_image_bytes
predictor = Predictor.from_file(runtime=sys.argv[1])
print(json.dumps(predictor.call(DecodedImage.decode(read_image_bytes(sys.argv[2]))).to_record(sys.argv[2])))
"""

_ACTOR_START = """
import json, sys, time
start = time.perf_counter()
from pneumo_model.batch_ray import _Scorer
from pneumo_model.preprocessing import ImageLimits
_Scorer(sys.argv[2], None, 1, ImageLimits(), runtime=sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


# Runs one command as its only child and reports the child's wall time and peak resident memory
# (RUSAGE_CHILDREN of a process with one child is that child's own), and its last line of output.
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
lines = done.stdout.strip().splitlines()
print(json.dumps({"seconds": seconds, "peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "returncode": done.returncode, "last_line": lines[-1] if lines else "", "stderr": done.stderr[-2000:]}))
"""


def timed_command(argv: list[str]) -> dict:
    """One command in a fresh process: its wall time (s), its peak resident memory (MB) and its last line.

    Raises:
        RuntimeError: the command failed (its last lines of error output are in the message).
    """
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", _MEASURE, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if measured["returncode"] != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed: {measured['stderr']}")
    return {"seconds": measured["seconds"], "peak_mb": measured["peak_kb"] / 1024, "last_line": measured["last_line"]}


def _medians(runs: list[dict]) -> dict:
    return {
        "runs": len(runs),
        "median_s": statistics.median(run["seconds"] for run in runs),
        "min_s": min(run["seconds"] for run in runs),
        "median_peak_mb": statistics.median(run["peak_mb"] for run in runs),
        "max_peak_mb": max(run["peak_mb"] for run in runs),
    }


def predict_one_film(model_path: Path, film: Path, repeats: int, log: Callable[[str], None]) -> dict:
    """``predict`` on one film, whole process, per runtime (see the module's docstring)."""
    python = sys.executable
    ways = {
        "predict_command_onnx": [python, "-m", "pneumo_model", "predict", str(film), "--model", str(model_path)],
        **{f"predict_steps_{runtime}": [python, "-c", _PREDICT_STEPS, runtime, str(film)] for runtime in RUNTIMES},
    }
    if Path(model_path).resolve() != (REPO_ROOT / "assets" / "model" / "pneumonet.keras").resolve():
        ways = {key: argv for key, argv in ways.items() if key.startswith("predict_command")}
    results = {"film": film.name, "commands": {key: " ".join(Path(a).name if a == python else a for a in argv[:5]) for key, argv in ways.items()}}
    runs = {key: [] for key in ways}
    for _ in range(repeats):  # interleaved, so that a change of load hits every way alike
        for key, argv in ways.items():
            runs[key].append(timed_command(argv))
    for key in ways:
        results[key] = _medians(runs[key])
        log(f"onnx bench: {key}: median {results[key]['median_s']:.2f} s, peak {results[key]['median_peak_mb']:.0f} MB")
    records = {key: json.loads(runs[key][0]["last_line"]) for key in ways}
    results["same_record"] = len({json.dumps({k: v for k, v in r.items() if k != "ood_score"}, sort_keys=True)
                                  for r in records.values()}) == 1
    if "predict_steps_keras" in results:
        onnx, keras = results["predict_steps_onnx"], results["predict_steps_keras"]
        results["wall_keras_over_onnx"] = keras["median_s"] / onnx["median_s"]
        results["peak_keras_over_onnx"] = keras["median_peak_mb"] / onnx["median_peak_mb"]
    return results


def actor_start(model_path: Path, repeats: int, log: Callable[[str], None]) -> dict:
    """Seconds from a fresh interpreter's first import to a ready ``_Scorer``, per runtime."""
    results = {}
    for runtime in RUNTIMES:
        seconds = [json.loads(timed_command([sys.executable, "-c", _ACTOR_START, runtime, str(model_path)])["last_line"])["seconds"]
                   for _ in range(repeats)]
        results[runtime] = {"runs": repeats, "median_s": statistics.median(seconds), "max_s": max(seconds)}
        log(f"onnx bench: Ray actor ready ({runtime}): median {results[runtime]['median_s']:.2f} s")
    results["keras_over_onnx"] = results["keras"]["median_s"] / results["onnx"]["median_s"]
    return results


def throughput(model_path: Path, fullres_dir: Path, work: Path, copies: int, log: Callable[[str], None]) -> dict:
    """``batch`` local and Ray, on each runtime, same files (see the module's docstring)."""
    import numpy as np
    import pandas as pd
    import ray

    from ..batch import BatchSettings, LocalEngine, open_source, run_batch
    from ..batch_ray import RayEngine, RaySettings
    from ..prediction import Predictor
    from .batch_bench import _Timed, write_variants

    originals = sorted(Path(fullres_dir).glob("**/*.jpeg"))
    write_variants(originals, work / "fullsize", len(originals) * copies)
    items = open_source(work / "fullsize")
    results: dict = {"files": len(items), "from_originals": len(originals)}
    for runtime in RUNTIMES:
        local = _Timed(LocalEngine(Predictor.from_file(model_path, runtime=runtime), BatchSettings()))
        run_batch(items, local, work / f"local_{runtime}", progress=False)
        results[f"local_{runtime}"] = local.rates()
        log(f"onnx bench: batch local ({runtime}): {results[f'local_{runtime}']['images_per_s']:.1f} images/s")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _temp_dir=str(work / "ray"))
    try:
        for runtime in RUNTIMES:
            started = time.perf_counter()
            remote = _Timed(RayEngine(model_path, settings=RaySettings(runtime=runtime)))
            run_batch(items, remote, work / f"ray_{runtime}", progress=False)
            results[f"ray_{runtime}"] = remote.rates() | {"seconds_with_engine_start": time.perf_counter() - started}
            log(f"onnx bench: batch ray ({runtime}): {results[f'ray_{runtime}']['images_per_s']:.1f} images/s, steady "
                f"{results[f'ray_{runtime}']['steady_images_per_s']:.1f}, first row after {results[f'ray_{runtime}']['first_row_after_s']:.1f} s")
    finally:
        ray.shutdown()
    rows = {name: pd.read_parquet(work / name).sort_values("file") for name in ("local_onnx", "local_keras", "ray_onnx", "ray_keras")}
    reference = rows["local_keras"]["probability"].to_numpy()
    results["max_abs_probability_difference_vs_local_keras"] = {
        name: float(np.max(np.abs(frame["probability"].to_numpy() - reference))) for name, frame in rows.items()
    }
    for runtime in RUNTIMES:
        local, remote = results[f"local_{runtime}"], results[f"ray_{runtime}"]
        results[f"ray_vs_local_{runtime}"] = remote["images_per_s"] / local["images_per_s"]
        results[f"ray_vs_local_steady_{runtime}"] = remote["steady_images_per_s"] / local["steady_images_per_s"]
    results["local_onnx_over_keras"] = results["local_onnx"]["images_per_s"] / results["local_keras"]["images_per_s"]
    return results


def run_onnx_bench(model_path: Path, data_dir: Path, fullres_dir: Path, repeats: int = 3, copies: int = 5,
                   log: Callable[[str], None] = print, work_dir: Path | None = None) -> dict:
    """Every figure of the section, and the targets' verdicts."""
    import tempfile

    from ..artifacts import read_metadata
    from ..data import model_split, scan_split
    from .onnx_export import parity

    film = scan_split(Path(data_dir), "test")[0].path
    report = {"predict": predict_one_film(Path(model_path), film, repeats, log),
              "actor_start": actor_start(Path(model_path), repeats, log)}
    with tempfile.TemporaryDirectory(dir=work_dir) as folder:
        report["throughput"] = throughput(Path(model_path), Path(fullres_dir), Path(folder), copies, log)
    split = model_split(read_metadata(Path(model_path)), Path(data_dir))
    report["parity"] = parity(Path(model_path), [sample.path for sample in split.validation + split.test])
    log(f"onnx bench: parity on {report['parity']['films']} validation and test films: "
        f"max |dp| {report['parity']['max_abs_probability_difference']:.2g}, changed calls {report['parity']['changed_calls']}, "
        f"grey-zone flags {report['parity']['changed_grey_zone_flags']}, gate flags {report['parity']['changed_gate_flags']}")
    command = report["predict"]["predict_command_onnx"]
    report["targets"] = {
        "predict_wall_s": {"measured": command["median_s"], "target": TARGETS["predict_wall_s"],
                           "met": command["median_s"] <= TARGETS["predict_wall_s"]},
        "predict_peak_mb": {"measured": command["median_peak_mb"], "target": TARGETS["predict_peak_mb"],
                            "met": command["median_peak_mb"] <= TARGETS["predict_peak_mb"]},
        "actor_ready_s": {"measured": report["actor_start"]["onnx"]["median_s"], "target": TARGETS["actor_ready_s"],
                          "met": report["actor_start"]["onnx"]["median_s"] <= TARGETS["actor_ready_s"]},
        "ray_vs_local": {"measured": report["throughput"]["ray_vs_local_onnx"], "target": TARGETS["ray_vs_local"],
                         "met": report["throughput"]["ray_vs_local_onnx"] >= TARGETS["ray_vs_local"]},
        "local_onnx_no_slower_than_keras": {"measured": report["throughput"]["local_onnx_over_keras"], "target": 1.0,
                                            "met": report["throughput"]["local_onnx_over_keras"] >= 1.0},
        "parity_max_abs_probability_difference": {"measured": report["parity"]["max_abs_probability_difference"], "target": 1e-5,
                                                  "met": report["parity"]["max_abs_probability_difference"] <= 1e-5},
    }
    return report
