"""Can a hand-drawn crop manufacture a finding? Boxes at the sliders' limits, random allowed boxes
and the automatic crop, rescored on one split, read as the Crop page reads them.

For every film of the split (decoded once, ``DecodedImage``), the boxes a user of the Crop page
could draw (``box_set``): a 25 % strip at the top, the middle and the bottom (the smallest
full-width box ``CropLimits`` accepts), the left and the right half, ``RANDOM_BOXES`` random
boxes the sliders allow (two random positions per slider, grown by ``fit_box`` as the page grows
them; seeded per film), and the automatic diaphragm crop where one is suggested. Each box is
checked by the rescore rule (``crop.check_rescore``, on the whole film's lung outline) and called
as the page calls it (``Predictor.calls_on_crops``: ``edit_pixels``, ``preprocess``, the gate),
in batched forward passes. A refused box has no call after; it is counted as refused.

Two shares answer the question (docs/crop_rule.md): of the pairs whose film was read normal or
indeterminate before, the share read a confident pneumonia after (not flagged by the gate, not
refused); of the pneumonia films read pneumonia before, the share read a confident normal after.
Beside them, per kind of box, the share refused, so that refusing everything cannot pass.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Sequence

import numpy as np

from ..crop import CropLimits, DiaphragmSettings, RescoreRule, check_rescore, find_diaphragm, fit_box
from ..data import model_split
from ..prediction import Predictor
from .evaluation import (
    DEFAULT_REPORTS_DIR, REPORT_SCHEMA_VERSION, decoded_batches, json_safe, record_test_use,
    write_split_report,
)

RANDOM_BOXES = 5
SEED = 20261207
# The kinds of box, in report order. "random" and "auto" are the boxes a user would draw or accept.
LIMIT_KINDS = ("strip_top", "strip_middle", "strip_bottom", "half_left", "half_right")
KINDS = (*LIMIT_KINDS, "random", "auto")
KIND_WORDS = {
    "strip_top": "25 % strip, top",
    "strip_middle": "25 % strip, middle",
    "strip_bottom": "25 % strip, bottom",
    "half_left": "left half",
    "half_right": "right half",
    "random": f"random allowed box ({RANDOM_BOXES} a film)",
    "auto": "automatic diaphragm crop",
}
# The targets of issue 23, checked by the report's test (tests/test_crop_boxes.py).
MAX_MANUFACTURED = 0.02
MAX_REFUSED = 0.05


def box_set(width: int, height: int, index: int, seed: int = SEED, limits: CropLimits = CropLimits()) -> list[tuple[str, tuple]]:
    """The boxes drawn on one film: ``(kind, box)`` for the sliders' limits and the random boxes.

    The strips are the smallest full-width box ``fit_box`` grows a one-row box to; the random
    boxes put each slider's two handles at random whole positions (``numpy`` seeded with
    ``(seed, index)``) and grow them as the page does (``fit_box``).
    """
    strip = fit_box((0, 0, width, 1), width, height, limits)[3]  # rows of the smallest full-width box
    middle = (height - strip) // 2
    boxes = [
        ("strip_top", (0, 0, width, strip)),
        ("strip_middle", (0, middle, width, middle + strip)),
        ("strip_bottom", (0, height - strip, width, height)),
        ("half_left", (0, 0, width // 2, height)),
        ("half_right", (width // 2, 0, width, height)),
    ]
    rng = np.random.default_rng([seed, index])
    for _ in range(RANDOM_BOXES):
        x0, x1 = (int(v) for v in rng.integers(0, width + 1, 2))
        y0, y1 = (int(v) for v in rng.integers(0, height + 1, 2))
        boxes.append(("random", fit_box((x0, y0, x1, y1), width, height, limits)))
    return boxes


def score_boxes(predictor: Predictor, paths: Sequence[Path], labels: Sequence[int], seed: int = SEED) -> list[dict]:
    """Every box of every film, with its facts and both calls (the after-call of every box, refused or not).

    Returns:
        One row per (film, box): ``film``, ``label``, ``kind``, ``box``, the film's ``lung_count``,
        ``keeps_lungs`` (``crop.lung_share_kept``: the smallest shares of a lung box's width and
        height the crop keeps, None without an outline), ``aspect`` (the box's height / width), and both calls as
        ``RescoreResult.from_calls`` reads them (``before``, ``after``: ``Prediction``).
    """
    from ..crop import lung_share_kept

    rows: list[dict] = []
    index = 0
    for batch in decoded_batches(list(paths), predictor.batch_size):
        wholes = predictor.calls(batch)
        jobs = []
        for image, whole in zip(batch, wholes):
            pixels = image.pixels
            height, width = pixels.shape[:2]
            lungs = find_diaphragm(pixels, DiaphragmSettings())
            boxes = box_set(width, height, index, seed)
            if lungs.found and lungs.box is not None:
                boxes.append(("auto", lungs.box))
            for kind, box in boxes:
                rows.append(
                    {
                        "film": Path(paths[index]).name,
                        "label": int(labels[index]),
                        "kind": kind,
                        "box": tuple(int(v) for v in box),
                        "width": width,
                        "height": height,
                        "lungs": lungs,
                        "lung_count": lungs.lung_count,
                        "keeps_lungs": lung_share_kept(box, lungs),
                        "aspect": (box[3] - box[1]) / (box[2] - box[0]),
                        "before": whole,
                    }
                )
                jobs.append((image, box))
            index += 1
        afters = predictor.calls_on_crops(jobs)
        for row, after in zip(rows[len(rows) - len(jobs) :], afters):
            row["after"] = after
    return rows


def _keeps_both_lungs(row: dict, rule: RescoreRule) -> bool:
    """Both lungs outlined on the film, and the box keeps each as the rule asks (its width and height shares)."""
    kept = row["keeps_lungs"]
    return row["lung_count"] == 2 and kept is not None and kept[0] >= rule.lung_width_keep and kept[1] >= rule.lung_height_keep


def _reading(prediction) -> str:
    return "indeterminate" if prediction.grey_zone else prediction.label


def summarise(rows: list[dict], rule: RescoreRule) -> dict:
    """Per kind of box (and over all): pairs, refusals and the two flip shares, under ``rule``."""
    def counts(selected: list[dict]) -> dict:
        refused = [check_rescore(r["box"], r["width"], r["height"], r["lungs"], rule) is not None for r in selected]
        normalish = [i for i, r in enumerate(selected) if _reading(r["before"]) in ("normal", "indeterminate")]
        pneumonia = [i for i, r in enumerate(selected) if r["label"] == 1 and _reading(r["before"]) == "pneumonia"]

        def confident(i: int, reading: str) -> bool:
            after = selected[i]["after"]
            return not refused[i] and not after.ood and _reading(after) == reading

        made = sum(confident(i, "pneumonia") for i in normalish)
        lost = sum(confident(i, "normal") for i in pneumonia)
        both = [i for i, r in enumerate(selected) if _keeps_both_lungs(r, rule)]
        return {
            "pairs": len(selected),
            "refused": int(sum(refused)),
            "refused_share": float(np.mean(refused)) if selected else None,
            "normal_or_indeterminate_before": len(normalish),
            "confident_pneumonia_after": int(made),
            "manufactured_share": made / len(normalish) if normalish else None,
            "pneumonia_before": len(pneumonia),
            "confident_normal_after": int(lost),
            "lost_share": lost / len(pneumonia) if pneumonia else None,
            "keeping_both_lungs": len(both),
            "keeping_both_lungs_refused_share": float(np.mean([refused[i] for i in both])) if both else None,
        }

    kinds = {kind: counts([r for r in rows if r["kind"] == kind]) for kind in KINDS}
    kinds["all"] = counts(rows)
    kinds["boxes_keeping_both_lungs"] = counts([r for r in rows if _keeps_both_lungs(r, rule)])
    return kinds


def evaluate_crop_boxes(
    model_path: Path,
    data_dir: Path,
    reports_dir: Path = DEFAULT_REPORTS_DIR,
    split: str = "test",
    rule: RescoreRule = RescoreRule(),
    seed: int = SEED,
    limit: int | None = None,
) -> dict:
    """Scores every box of ``box_set`` and the automatic crop on a split; writes
    ``crop_boxes[_validation].{json,md}`` and returns the report. A test-split run is logged.

    Args:
        limit: score only the first ``limit`` films (a quick look; never for a written report).
    """
    predictor = Predictor.from_file(model_path, runtime="keras")
    metadata = predictor.metadata
    data_split = model_split(metadata, Path(data_dir))
    samples = data_split.test if split == "test" else data_split.validation
    samples = samples[:limit] if limit else samples
    rows = score_boxes(predictor, [s.path for s in samples], [s.label for s in samples], seed)
    kinds = summarise(rows, rule)
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_sha256": metadata.model_sha256,
        "split": split,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "films": len(samples),
        "threshold": predictor.threshold,
        "grey_zone": [predictor.grey_zone.low, predictor.grey_zone.high],
        "rule": dataclasses.asdict(rule),
        "seed": seed,
        "random_boxes_per_film": RANDOM_BOXES,
        "targets": {"max_manufactured_share": MAX_MANUFACTURED, "max_lost_share": MAX_MANUFACTURED,
                    "max_refused_share_auto_and_both_lungs": MAX_REFUSED},
        "kinds": kinds,
        "command": f"python -m pneumo_model evaluate --crop boxes{'' if split == 'test' else ' --split ' + split}",
    }
    if split == "test" and not limit:
        report["test_evaluations_so_far"] = record_test_use(Path(reports_dir), metadata.model_sha256, "test")
    report = json_safe(report)
    if not limit:
        write_split_report(reports_dir, "crop_boxes", split, report, boxes_markdown(report))
    return report


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def boxes_markdown(report: dict) -> str:
    """The per-kind table and whether the targets are met."""
    rule = report["rule"]
    lines = [
        f"Model `{report['model_sha256'][:12]}`, {report['split']} split ({report['films']} films), threshold "
        f"{report['threshold']:.3f}, grey zone [{report['grey_zone'][0]:.3f}, {report['grey_zone'][1]:.3f}). "
        f"Rescore rule (docs/crop_rule.md): each outlined lung's box kept to at least {rule['lung_width_keep']:.0%} of "
        f"its width and {rule['lung_height_keep']:.0%} of its height; the box may change the film's height / width by "
        f"at most the original films' spread ({rule['films']['high']} / {rule['films']['low']}) times "
        f"{rule['aspect_margin']}, either way.",
        "",
        "| box | pairs | refused | normal or indeterminate before → confident pneumonia after | pneumonia before → "
        "confident normal after |",
        "|---|---|---|---|---|",
    ]
    for kind, words in (*KIND_WORDS.items(), ("boxes_keeping_both_lungs", "boxes keeping both lungs (any kind)"),
                        ("all", "all boxes")):
        row = report["kinds"][kind]
        lines.append(
            f"| {words} | {row['pairs']} | {_share(row['refused_share'])} | {row['confident_pneumonia_after']} of "
            f"{row['normal_or_indeterminate_before']} ({_share(row['manufactured_share'])}) | {row['confident_normal_after']} "
            f"of {row['pneumonia_before']} ({_share(row['lost_share'])}) |"
        )
    lines += [
        "",
        f"Targets (issue 23): at most {MAX_MANUFACTURED:.0%} in each of the last two columns over all boxes; at most "
        f"{MAX_REFUSED:.0%} refused for the automatic crop and for boxes keeping both lungs.",
        f"Command: `{report['command']}`.",
        "",
    ]
    return "\n".join(lines)
