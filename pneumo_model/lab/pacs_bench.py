"""The PACS bench: a study of full-size radiographs on a real Orthanc on localhost, searched, retrieved and
scored as ``pacs score`` does, against the naive way (one instance at a time: retrieve, decode, score)
in the same run.

The study is made from the full-size originals (every one at least 1024 px on its short side is
used, at its own size): half uncompressed 12-bit DX, half JPEG baseline CR, as a department's mix.
Figures: images per second both ways, and where the time goes (retrieval alone, decoding and
scoring alone from memory), each measured as its own pass over the same instances.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

TARGET_IMAGES_PER_S = 20.0
MIN_SIDE = 1024


def _films(fullres_dir: Path, n_images: int) -> list[np.ndarray]:
    from PIL import Image

    paths = sorted(p for p in Path(fullres_dir).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    films = []
    for path in paths:
        with Image.open(path) as image:
            if min(image.size) >= MIN_SIDE:
                films.append(np.asarray(image.convert("L")))
    if not films:
        raise FileNotFoundError(f"No full-size original of at least {MIN_SIDE} px in {fullres_dir}.")
    return [films[k % len(films)] for k in range(n_images)]


def run_pacs_bench(model_path: Path, fullres_dir: Path, n_images: int = 100, log: Callable[[str], None] = print) -> dict:
    """Loads an Orthanc with an ``n_images`` study and measures it (see the module's docstring)."""
    from pydicom.uid import generate_uid

    from ..pacs import PacsClient, PacsSettings, StudyQuery
    from ..pacs_workflow import iter_retrieved, score_instances
    from ..pipeline import DecodedImage
    from ..prediction import Predictor
    from .orthanc import PASSWORD, USER, OrthancServer, missing
    from .pacs_files import StudyFacts, chest_dicom

    reason = missing()
    if reason:
        raise FileNotFoundError(reason)
    predictor = Predictor.from_file(model_path, runtime="keras")
    films = _films(fullres_dir, n_images)
    with tempfile.TemporaryDirectory(prefix="pacs_bench_") as folder:
        server = OrthancServer(Path(folder) / "orthanc").start()
        try:
            study = StudyFacts(study_uid=generate_uid(), accession_number="BENCH0001")
            series = {"DX": generate_uid(), "CR": generate_uid()}
            stored_bytes = 0
            for k, film in enumerate(films):
                modality = "DX" if k % 2 == 0 else "CR"
                data = chest_dicom(film, study, series[modality], modality=modality, jpeg=modality == "CR",
                                   series_number=1 if modality == "DX" else 2, instance_number=k + 1)
                stored_bytes += len(data)
                server.upload(data)
            log(f"pacs bench: {len(films)} images stored ({stored_bytes / 2**20:.0f} MB, sides "
                f"{min(min(f.shape) for f in films)} to {max(max(f.shape) for f in films)} px)")
            client = PacsClient(PacsSettings(server.dicomweb_url, USER, PASSWORD))
            predictor.calls([DecodedImage.decode(chest_dicom(films[0], study, generate_uid()))])  # warm the model

            start = time.perf_counter()
            (found,) = client.query_studies(StudyQuery(accession_number="BENCH0001"))
            instances = client.instances(found.study_uid)
            results = score_instances(client, predictor, instances)
            pipelined = time.perf_counter() - start
            scored = sum(r.prediction is not None for r in results)

            start = time.perf_counter()
            retrieved = [data for _, data, _, _ in iter_retrieved(client, instances, decode=False)]
            retrieval = time.perf_counter() - start

            start = time.perf_counter()
            for batch_start in range(0, len(retrieved), 16):
                predictor.calls([DecodedImage.decode(data) for data in retrieved[batch_start:batch_start + 16]])
            scoring = time.perf_counter() - start

            start = time.perf_counter()
            naive = []
            for instance in instances:  # one at a time, as a loop over `predict` would
                naive.append(predictor.call(DecodedImage.decode(client.retrieve(instance))).probability)
            naive_s = time.perf_counter() - start
        finally:
            server.remove()
    same = max(abs(r.prediction.probability - p) for r, p in zip(results, naive))
    figures = {
        "images": len(instances),
        "scored": scored,
        "stored_mb": round(stored_bytes / 2**20, 1),
        "short_side_px": [int(min(min(f.shape) for f in films)), int(max(min(f.shape) for f in films))],
        "pacs_score_images_per_s": round(len(instances) / pipelined, 1),
        "naive_images_per_s": round(len(instances) / naive_s, 1),
        "speedup_over_naive": round(naive_s / pipelined, 2),
        "retrieval_only_images_per_s": round(len(instances) / retrieval, 1),
        "decode_and_score_only_images_per_s": round(len(instances) / scoring, 1),
        "retrieval_share": round(retrieval / (retrieval + scoring), 3),
        "scoring_share": round(scoring / (retrieval + scoring), 3),
        "max_abs_probability_difference_vs_naive": same,
        "target_images_per_s": TARGET_IMAGES_PER_S,
        "met": len(instances) / pipelined >= TARGET_IMAGES_PER_S and scored == len(instances),
    }
    log(
        f"pacs: {figures['pacs_score_images_per_s']} images/s queried, retrieved and scored "
        f"(naive one at a time {figures['naive_images_per_s']}, x{figures['speedup_over_naive']}); retrieval alone "
        f"{figures['retrieval_only_images_per_s']}/s, decoding and scoring alone "
        f"{figures['decode_and_score_only_images_per_s']}/s: {100 * figures['retrieval_share']:.0f} % of the time in "
        f"retrieval, {100 * figures['scoring_share']:.0f} % in decoding and scoring (target {TARGET_IMAGES_PER_S:g}/s: "
        f"{'met' if figures['met'] else 'MISSED'})"
    )
    return figures


README_START, README_END = "<!-- pacs_bench:start -->\n", "<!-- pacs_bench:end -->"


def markdown(figures: dict, machine: dict) -> str:
    """docs/pacs.md's lines on the PACS bench, made from its figures (``reports/bench.json``'s ``pacs``)."""
    verdict = "met" if figures["met"] else "missed"
    return (
        f"**Speed** (`python -m pneumo_model bench --only pacs`, {machine['cpus']} cores, same run): a study of "
        f"{figures['images']} full-size films ({figures['short_side_px'][0]} to {figures['short_side_px'][1]} px on the "
        f"short side, half uncompressed 12-bit DX, half JPEG CR, {figures['stored_mb']:g} MB) on Orthanc on localhost, "
        f"queried, retrieved and scored as `pacs score` does: **{figures['pacs_score_images_per_s']:g} images/s** "
        f"(aim: {figures['target_images_per_s']:g}, {verdict}), against {figures['naive_images_per_s']:g} images/s one "
        f"instance at a time (retrieve, decode, score), the same probabilities to "
        f"{figures['max_abs_probability_difference_vs_naive']:.1e}. Each step alone: retrieval "
        f"{figures['retrieval_only_images_per_s']:g} images/s, decoding and scoring "
        f"{figures['decode_and_score_only_images_per_s']:g} images/s, so {100 * figures['retrieval_share']:.0f} % of "
        f"the time is retrieval and {100 * figures['scoring_share']:.0f} % decoding and scoring.\n"
    )


def write_readme_block(readme: Path, text: str) -> None:
    """Puts ``text`` between the ``pacs_bench`` markers of ``readme`` (docs/pacs.md since issue 26)."""
    content = Path(readme).read_text()
    head, rest = content.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    Path(readme).write_text(head + README_START + text + README_END + tail)
