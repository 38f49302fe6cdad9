"""Label-free alignment, the lab side: the validation reference, the simulations that fixed the
rules of ``docs/label_free_rules.md``, and the test-split evaluation (``site evaluate --label-free``).

The app side (``pneumo_model.alignment``) holds the method itself; this module only scores the
model's own validation split (for the reference side file and the simulations) and the test split
(for the evaluation, under the site-calibration protocol of ``../shared/data/README.md``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path

import numpy as np

from ..data import model_split
from ..prediction import Predictor
from . import shifts
from .evaluation import call_files

# The deliberate shifts the simulations score validation under (lab/shifts.py), at the strengths the
# stress report and the grey-zone rule use, and stronger ones (a scanner's post-processing change).
SIMULATION_SHIFTS = {
    "plain": lambda x: x,
    "narrow": lambda x: shifts.change_aspect(x, 0.8),
    "wide": lambda x: shifts.change_aspect(x, 1.25),
    "lower_crop": lambda x: shifts.keep_top(x, 0.8),
    "low_resolution": lambda x: shifts.lower_resolution(x, 0.5),
    "brighter": lambda x: shifts.add_brightness(x, 0.08),
    "darker": lambda x: shifts.add_brightness(x, -0.08),
    "contrast_up": lambda x: shifts.scale_contrast(x, 1.25),
    "contrast_down": lambda x: shifts.scale_contrast(x, 0.8),
    "gamma_0.7": lambda x: shifts.apply_gamma(x, 0.7),
    "gamma_1.4": lambda x: shifts.apply_gamma(x, 1.4),
    "jpeg_q30": lambda x: shifts.jpeg_reencode(x, 30),
}


def score_validation(model_path: Path, data_dir: Path, shift_names=tuple(SIMULATION_SHIFTS)) -> dict:
    """The model's own validation split scored through the pipeline, plain and under each shift.

    Returns:
        ``{"labels": (n,), "groups": (n,), "ood": (n,) bool, "digests": (n,), "logits": {shift: (n,)}}``.
    """
    from ..paths import file_sha256

    predictor = Predictor.from_file(Path(model_path), runtime="keras")  # the lab scores on TensorFlow, as its reports
    split = model_split(predictor.metadata, Path(data_dir))
    validation = split.validation
    paths = [s.path for s in validation]
    calls, inputs = call_files(predictor, paths)  # inputs: (n, size, size, 1) float32
    logits = {"plain": np.array([call.logit for call in calls], dtype=np.float64)}
    for name in shift_names:
        if name == "plain":
            continue
        moved = np.stack([SIMULATION_SHIFTS[name](image) for image in inputs])  # (n, size, size, 1)
        logits[name] = np.concatenate(
            [predictor.logits(moved[start : start + 256]) for start in range(0, len(moved), 256)]
        )
    return {
        "labels": np.array([s.label for s in validation], dtype=int),
        "groups": np.array([split.groups[s.path] for s in validation]),
        "ood": np.array([bool(call.ood) for call in calls], dtype=bool),
        "digests": np.array([file_sha256(path) for path in paths]),
        "logits": logits,
        "model_sha256": predictor.metadata.model_sha256,
    }


def write_reference(model_path: Path, data_dir: Path, command: str = "") -> Path:
    """Scores the model's own validation split and writes ``<model>.reference.json`` beside it:
    the raw logits and labels of the validation films the gate does not flag (nothing from the test
    split), with the model's SHA-256 so any other model refuses it.

    Raises:
        DataError: the data folder differs from the data the model was trained on.
    """
    import datetime as dt

    from ..alignment import Reference, reference_path

    scored = score_validation(model_path, data_dir, shift_names=("plain",))
    kept = ~scored["ood"]
    reference = Reference(
        scored["model_sha256"],
        scored["logits"]["plain"][kept],
        scored["labels"][kept],
        {
            "split": "validation (the model's own, from official train by patient; data.model_split)",
            "images": int(kept.size),
            "excluded_by_gate": int((~kept).sum()),
            "normal": int((scored["labels"][kept] == 0).sum()),
            "pneumonia": int((scored["labels"][kept] == 1).sum()),
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
        },
    )
    path = reference_path(model_path)
    path.write_text(reference.to_json())
    return path


# --- the simulations on validation draws (they fixed docs/label_free_rules.md) ------------------

# Shifts of the raw logit itself, beside the image shifts: the test split's own kind of change
# (every film scoring higher) cannot be made from validation images by a post-processing step.
LOGIT_SHIFTS = {
    "logit+1": lambda z, y: z + 1.0,
    "logit+2": lambda z, y: z + 2.0,
    "logit-1": lambda z, y: z - 1.0,
    "logit_x1.3+1": lambda z, y: 1.3 * z + 1.0,
    "logit_x0.8+1.5": lambda z, y: 0.8 * z + 1.5,
    "normals+1.5_pneumonia+0.5": lambda z, y: z + np.where(y == 0, 1.5, 0.5),
}
SIM_SIZES = (100, 250)
SIM_PREVALENCES = ("own", 0.5, 0.3)
SIM_DRAWS = 40
SIM_BOOTSTRAP = 10
SIM_SEED = 20261207
CANDIDATES = ("shipped", "aligned_at_reference_prevalence", "aligned_at_estimated_prevalence", "affine_at_estimated_prevalence", "aligned_at_true_prevalence")


def halves(groups: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n,) bool: the site half (True) and the reference half, by merged patient group, about equal."""
    unique = np.unique(groups)
    site_groups = set(rng.permutation(unique)[: unique.size // 2])
    return np.array([g in site_groups for g in groups])


def simulate(cache: dict, threshold: float, temperature: float, grey_zone: tuple[float, float], draws: int = SIM_DRAWS, seed: int = SIM_SEED) -> list[dict]:
    """Every simulated draw: validation split in two halves by patient group; one half is the
    reference, the other the site under a shift (image or logit) and at a prevalence; a local
    sample of the site half (drawn by class with replacement, so any prevalence can be drawn) is
    aligned by each candidate rule, and the figures are computed on the whole site half."""
    from threadpoolctl import threadpool_limits

    from ..alignment import ClassDensities, Reference, estimate_prevalence, quantile_mapping

    labels, groups, ood = cache["labels"], cache["groups"], cache["ood"]
    t_raw = temperature * (np.log(threshold) - np.log1p(-threshold))
    z_low, z_high = (temperature * (np.log(p) - np.log1p(-p)) for p in grey_zone)
    settings = [(name, size, prev) for name in list(cache["logits"]) + list(LOGIT_SHIFTS) for size in (250,) for prev in ("own", 0.3)]
    settings += [(name, size, prev) for name in ("plain", "logit+1", "logit_x0.8+1.5", "normals+1.5_pneumonia+0.5") for size in (100,) for prev in SIM_PREVALENCES]
    settings += [(name, 250, 0.5) for name in ("plain", "logit+1", "logit_x0.8+1.5", "normals+1.5_pneumonia+0.5")]
    rows = []
    with threadpool_limits(limits=1):
        for draw in range(draws):
            rng = np.random.default_rng([seed, draw])
            site = halves(groups, labels, rng) & ~ood
            ref_rows = ~halves(groups, labels, np.random.default_rng([seed, draw])) & ~ood
            reference = Reference("", cache["logits"]["plain"][ref_rows], labels[ref_rows])
            densities = ClassDensities.of(reference)
            for name, size, prev in settings:
                if name in LOGIT_SHIFTS:
                    z = LOGIT_SHIFTS[name](cache["logits"]["plain"], labels)
                else:
                    z = cache["logits"][name]
                site_z, site_y = z[site], labels[site]
                truth = float(site_y.mean()) if prev == "own" else float(prev)
                n1 = int(round(size * truth))
                local_rng = np.random.default_rng([seed, draw, size, zlib.crc32(name.encode()), int(truth * 1000)])
                chosen = np.concatenate([
                    local_rng.choice(np.flatnonzero(site_y == 1), n1, replace=True),
                    local_rng.choice(np.flatnonzero(site_y == 0), size - n1, replace=True),
                ])
                local = site_z[chosen]
                fit = estimate_prevalence(reference, local, int(local_rng.integers(2**31)), SIM_BOOTSTRAP, densities)
                maps = {
                    "shipped": lambda v: v,
                    "aligned_at_reference_prevalence": quantile_mapping(reference, local, reference.prevalence),
                    "aligned_at_estimated_prevalence": quantile_mapping(reference, local, fit.prevalence),
                    "affine_at_estimated_prevalence": lambda v, f=fit: f.scale * v + f.offset,
                    "aligned_at_true_prevalence": quantile_mapping(reference, local, truth),
                }
                row = {
                    "draw": draw, "shift": name, "size": size, "prevalence": truth, "estimated": fit.prevalence,
                    "interval_width": fit.high - fit.low, "affine": (fit.scale, fit.offset),
                }
                for candidate, mapping in maps.items():
                    moved = np.asarray(mapping(site_z), dtype=np.float64)
                    called = moved >= t_raw
                    zone = (moved >= z_low) & (moved < z_high)
                    row[candidate] = {
                        "sensitivity": float(called[site_y == 1].mean()),
                        "specificity": float((~called[site_y == 0]).mean()),
                        "grey_zone_share": float(truth * zone[site_y == 1].mean() + (1 - truth) * zone[site_y == 0].mean()),
                    }
                    if candidate.startswith("aligned"):
                        row[candidate]["threshold_move"] = float(mapping.inverse(np.array([t_raw]))[0] - t_raw)
                rows.append(row)
    return rows


def simulation_summary(rows: list[dict]) -> dict:
    """Per (shift, size, prevalence) and candidate: median / 5th percentile of each figure; the
    prevalence estimate's error and interval width; the threshold moves."""
    from collections import defaultdict

    by = defaultdict(list)
    for row in rows:
        key = f"{row['shift']}|{row['size']}|{'own' if row['prevalence'] > 0.6 else row['prevalence']}"
        by[key].append(row)
    out = {}
    for key, group in by.items():
        entry = {
            "true_prevalence": float(np.median([r["prevalence"] for r in group])),
            "estimated_prevalence": {q: float(np.percentile([r["estimated"] for r in group], p)) for q, p in (("p5", 5), ("median", 50), ("p95", 95))},
            "interval_width": {q: float(np.percentile([r["interval_width"] for r in group], p)) for q, p in (("median", 50), ("p99", 99), ("max", 100))},
        }
        for candidate in CANDIDATES:
            entry[candidate] = {
                figure: {q: float(np.percentile([r[candidate][figure] for r in group], p)) for q, p in (("p5", 5), ("median", 50), ("p95", 95))}
                for figure in ("sensitivity", "specificity", "grey_zone_share")
            }
        entry["threshold_move_max_abs"] = float(max(abs(r["aligned_at_estimated_prevalence"]["threshold_move"]) for r in group))
        out[key] = entry
    return out


def simulate_main(cache_path: str, out_json: str) -> None:
    """Runs the simulations from a validation cache (``score_validation``) and writes their summary."""
    from ..artifacts import ModelMetadata
    from ..paths import DEFAULT_MODEL_PATH, metadata_path

    data = np.load(cache_path)
    cache = {
        "labels": data["labels"], "groups": data["groups"], "ood": data["ood"],
        "logits": {key[len("logits_"):]: data[key] for key in data.files if key.startswith("logits_")},
    }
    metadata = ModelMetadata.from_dict(json.loads(metadata_path(DEFAULT_MODEL_PATH).read_text()))
    rows = simulate(cache, metadata.threshold, metadata.temperature, tuple(metadata.grey_zone))
    summary = simulation_summary(rows)
    Path(out_json).write_text(json.dumps({"summary": summary, "draws": SIM_DRAWS, "bootstrap": SIM_BOOTSTRAP, "seed": SIM_SEED}, indent=1) + "\n")


if __name__ == "__main__":  # the simulations' cache: python -m pneumo_model.lab.label_free OUT.npz
    import sys

    if sys.argv[1] == "simulate":
        simulate_main(sys.argv[2], sys.argv[3])
        sys.exit(0)

    from ..paths import DEFAULT_DATA_DIR, DEFAULT_MODEL_PATH

    scored = score_validation(DEFAULT_MODEL_PATH, DEFAULT_DATA_DIR)
    np.savez(
        sys.argv[1], labels=scored["labels"], groups=scored["groups"], ood=scored["ood"], digests=scored["digests"],
        model_sha256=scored["model_sha256"], **{f"logits_{k}": v for k, v in scored["logits"].items()},
    )
    print(json.dumps({k: float(np.median(v)) for k, v in scored["logits"].items()}))


# --- the test split as a new site: `site evaluate --label-free` ---------------------------------

EVAL_REPORT_NAME = "site_label_free"
EVAL_FIGURE_PATH = "figures/site_label_free.png"
EVAL_SIZES = (100, 250, 500)
EVAL_LOW_PREVALENCE = 0.30
EVAL_LOW_SIZES = (100, 250)  # the split has too few normal films for 500 at 30 %
LABELLED_SIZE = 200
EVAL_SEED = 20261207
EVAL_POINTS = ("label_free", "shipped", "labelled_200")
EVAL_FIGURES = ("sensitivity", "specificity", "accuracy", "grey_zone_share", "accuracy_outside_grey_zone")
# The must-reach list: (size, prevalence, figure, statistic, op, target).
EVAL_MUST_REACH = (
    (250, "split", "sensitivity", "median", ">=", 0.95),
    (250, "split", "sensitivity", "p5", ">=", 0.90),
    (250, "split", "specificity", "median", ">=", 0.90),
    (250, "split", "specificity", "p5", ">=", 0.80),
    (250, "split", "grey_zone_share", "median", "<=", 0.15),
    (250, "low", "sensitivity", "median", ">=", 0.93),
    (250, "low", "specificity", "median", ">=", 0.90),
)
MAX_REFUSED_AT_250 = 0.05


def _labelled_rows(scored, local: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The 200 labelled films of the comparison profile, at the local sample's own mix: whole
    groups of the local sample when it has 200 or more films, else the local sample and whole
    groups drawn from the rest."""
    from .site_evaluation import draw_local

    labels = scored.labels
    prevalence = float(labels[local].mean())
    pneumonia = int(math.floor(LABELLED_SIZE * prevalence + 0.5))
    counts = (LABELLED_SIZE - pneumonia, pneumonia)
    if local.size >= LABELLED_SIZE:
        return np.sort(local[draw_local(labels[local], scored.groups[local], counts, rng)])
    rest = np.setdiff1d(np.arange(labels.size), local)
    have = (int((labels[local] == 0).sum()), int((labels[local] == 1).sum()))
    extra = (max(0, counts[0] - have[0]), max(0, counts[1] - have[1]))
    return np.sort(np.concatenate([local, rest[draw_local(labels[rest], scored.groups[rest], extra, rng)]]))


def one_label_free_draw(scored, reference, densities, metadata, size: int, prevalence: str, draw: int, seed: int) -> dict:
    """One unlabelled local sample aligned by the committed rules (its labels unseen), the labelled
    profile fitted on 200 films and the shipped point, all scored on the films drawn in neither."""
    from ..alignment import LocalScores, fit_alignment, refusal_reasons
    from ..operating_point import OperatingPoint
    from ..site import DEFAULT_TARGET_SENSITIVITY, fit_operating_point
    from .site_evaluation import draw_local, fit_sample, local_counts, low_prevalence_rows, operating_figures

    share = scored.prevalence if prevalence == "split" else EVAL_LOW_PREVALENCE
    counts = local_counts(size, share)
    tag = 0 if prevalence == "split" else 1
    local = draw_local(scored.labels, scored.groups, counts, np.random.default_rng([seed, size, tag, draw]))
    labelled = _labelled_rows(scored, local, np.random.default_rng([seed, size, tag, draw, 2]))
    remaining = np.setdiff1d(np.arange(scored.labels.size), np.union1d(local, labelled))
    if prevalence == "low":
        remaining = low_prevalence_rows(scored.labels, remaining, EVAL_LOW_PREVALENCE, np.random.default_rng([seed, size, tag, draw, 1]))
    # The local films as `site align` takes them: each image once, the gate's flags excluded (no ages in JPEGs).
    kept, seen, flagged = [], set(), 0
    for row in local:
        if scored.digests[row] in seen:
            continue
        seen.add(scored.digests[row])
        if scored.ood[row]:
            flagged += 1
        else:
            kept.append(row)
    kept = np.array(kept, dtype=int)
    scores = LocalScores(scored.raw[kept], tuple(scored.digests[kept]), metadata.model_sha256, int(local.size), flagged=flagged)
    point = OperatingPoint.shipped(metadata)
    t_raw = (math.log(point.threshold) - math.log1p(-point.threshold)) / point.scale
    result = {"true_prevalence": float(scored.labels[kept].mean()), "n_used": int(kept.size), "flagged": flagged}
    reasons = refusal_reasons(scores, None)
    alignment = None
    if not reasons:
        alignment = fit_alignment(reference, scores.logits, t_raw, scores.seed, densities=densities)
        reasons = refusal_reasons(None, alignment)
        result["estimated_prevalence"] = alignment.prevalence.prevalence
        result["interval"] = (alignment.prevalence.low, alignment.prevalence.high)
        result["threshold_move"] = alignment.threshold_move
    result["refused"] = bool(reasons)
    result["reasons"] = reasons
    labels = scored.labels[remaining]
    raw = scored.raw[remaining]
    figures = {}
    if alignment is not None and not reasons:
        aligned = dataclasses.replace(point, mapping=(alignment.mapping.x, alignment.mapping.y))
        p = aligned.probabilities(raw)
        figures["label_free"] = operating_figures(labels, p, p >= point.threshold, point.grey_zone.contains(p))
    figures["shipped"] = operating_figures(
        labels, scored.shipped_probability[remaining], scored.shipped_called[remaining], scored.shipped_grey_zone[remaining]
    )
    sample = fit_sample(scored, labelled)
    fit = fit_operating_point(sample.raw_logits, sample.labels, DEFAULT_TARGET_SENSITIVITY, sample.seed)
    p, called, zone = fit.calls(raw)
    figures["labelled_200"] = operating_figures(labels, p, called, zone)
    result["figures"] = figures
    result["remaining"] = (int((labels == 0).sum()), int((labels == 1).sum()))
    return result


def label_free_summary(draws: list[dict]) -> dict:
    from .site_evaluation import spread

    refused = [d for d in draws if d["refused"]]
    reasons: dict[str, int] = {}
    for d in refused:
        for reason in d["reasons"]:
            key = reason.split(":")[0].split(";")[0][:90]
            reasons[key] = reasons.get(key, 0) + 1
    accepted = [d for d in draws if not d["refused"]]
    summary = {
        "draws": len(draws),
        "refused": len(refused),
        "refused_share": len(refused) / len(draws),
        "refusal_reasons": reasons,
        "points": {
            point: {
                name: spread([d["figures"][point][name] for d in draws if point in d["figures"]]) for name in EVAL_FIGURES
            }
            for point in EVAL_POINTS
        },
        "true_prevalence": spread([d["true_prevalence"] for d in draws]),
        "estimated_prevalence": spread([d["estimated_prevalence"] for d in accepted]) if accepted else None,
        "prevalence_error": spread([d["estimated_prevalence"] - d["true_prevalence"] for d in accepted]) if accepted else None,
        "interval_covers_truth": float(np.mean([d["interval"][0] <= d["true_prevalence"] <= d["interval"][1] for d in accepted])) if accepted else None,
        "threshold_move": spread([d["threshold_move"] for d in accepted]) if accepted else None,
        "remaining_normal": spread([d["remaining"][0] for d in draws]),
        "remaining_pneumonia": spread([d["remaining"][1] for d in draws]),
        "flagged_in_sample": spread([d["flagged"] for d in draws]),
    }
    return summary


def label_free_settings(sizes=EVAL_SIZES) -> list[tuple[int, str]]:
    return [(size, "split") for size in sizes] + [(size, "low") for size in EVAL_LOW_SIZES if size in sizes]


def label_free_must_reach(results: dict) -> list[dict]:
    rows = []
    for size, prevalence, name, statistic, op, target in EVAL_MUST_REACH:
        block = results.get(f"{size}|{prevalence}")
        value = None if block is None else block["points"]["label_free"][name][statistic]
        met = value is not None and (value >= target if op == ">=" else value <= target)
        rows.append({"size": size, "prevalence": prevalence, "figure": name, "statistic": statistic, "op": op, "target": target, "value": value, "met": bool(met)})
    for prevalence in ("split", "low"):
        block = results.get(f"250|{prevalence}")
        value = None if block is None else block["refused_share"]
        rows.append({
            "size": 250, "prevalence": prevalence, "figure": "refused_share", "statistic": "share of draws", "op": "<=",
            "target": MAX_REFUSED_AT_250, "value": value, "met": value is not None and value <= MAX_REFUSED_AT_250,
        })
    return rows


def build_label_free_report(scored, draws_by_setting: dict, model: dict, reference, draws: int, seed: int) -> dict:
    from ..alignment import RULE as ALIGN_RULE, rule_facts
    from ..artifacts import REPO_ROOT
    from ..paths import file_sha256
    from .site_evaluation import rule_commit

    results = {key: label_free_summary(value) for key, value in draws_by_setting.items()}
    checks = label_free_must_reach(results)
    rule_path = REPO_ROOT / ALIGN_RULE
    return {
        "schema_version": 1,
        "model_sha256": model["model_sha256"],
        "architecture": model["architecture"],
        "rule": {
            "document": ALIGN_RULE,
            "commit": rule_commit(document=ALIGN_RULE),
            "sha256": file_sha256(rule_path) if rule_path.is_file() else None,
            "constants": rule_facts(),
        },
        "reference": {"sha256": reference.sha256, "images": int(reference.logits.size), "prevalence": reference.prevalence},
        "config": {
            "sizes": list(EVAL_SIZES), "low_prevalence": EVAL_LOW_PREVALENCE, "low_sizes": list(EVAL_LOW_SIZES),
            "draws": int(draws), "seed": int(seed), "labelled_size": LABELLED_SIZE,
            "draw_seed": "numpy.random.default_rng([seed, size, 0 split / 1 low, draw]); labelled [.., 2]; remainder subsample [.., 1]",
            "drawing": "whole merged patient groups with exact class counts (site_evaluation.draw_local)",
            "labelled": (
                "the labelled profile (site fit's rules, unchanged) on 200 films at the local sample's mix: whole groups of "
                "the local sample when it has 200 or more films, else the local sample plus groups from the rest; every "
                "point is scored on the films in neither sample"
            ),
            "low": "at 30 %: the local sample drawn at 30 % (the method is not told) and the remainder's pneumonia films subsampled to 30 %",
            "gate": "local films the gate flags are excluded and counted (as site align does); the remaining films include them",
        },
        "split": {
            "images": int(scored.labels.size), "normal": int((scored.labels == 0).sum()), "pneumonia": scored.n_pneumonia,
            "groups": int(np.unique(scored.groups).size), "prevalence": scored.prevalence, "gate_flagged": int(scored.ood.sum()),
        },
        "shipped_operating_point": model["shipped_operating_point"],
        "results": results,
        "must_reach": checks,
        "must_reach_met": all(row["met"] for row in checks),
        "figure": EVAL_FIGURE_PATH,
    }


POINT_NAMES = {"label_free": "label-free", "shipped": "shipped", "labelled_200": "labelled, 200"}


def _cell(s: dict | None) -> str:
    if s is None or s.get("median") is None:
        return "n/a"
    return f"{s['median']:.3f} ({s['p5']:.3f}-{s['p95']:.3f})"


def label_free_markdown(report: dict) -> str:
    from .site_evaluation import FIGURE_NAMES, SPREAD_SENTENCE, STATISTIC_NAMES

    split = report["split"]
    lines = [
        f"Model `{report['model_sha256'][:12]}`; the official test split ({split['images']} films, {split['normal']} normal / "
        f"{split['pneumonia']} pneumonia, {split['groups']} patient groups) plays a new site whose labels the method never "
        f"sees; {report['config']['draws']} seeded draws per setting (seed {report['config']['seed']}); rules "
        f"`{report['rule']['document']}`" + (f" (commit `{report['rule']['commit'][:12]}`)" if report["rule"]["commit"] else "")
        + ", applied unchanged; reference: the model's validation scores.",
        "",
        "**The protocol, in plain words.** A department aligns the tool on a few hundred of its own films without any "
        "diagnosis: the films' scores are mapped onto the validation films' scores at a prevalence estimated from the "
        "films themselves, and the validated threshold is kept. Here, in each draw, whole patients making up the local "
        "sample were the unlabelled films; every figure is measured on the other test films only, beside the shipped "
        f"operating point and a labelled profile fitted on {report['config']['labelled_size']} labelled films (drawn "
        "within or around the same sample) on the same films. Draws the method refuses are counted and have no "
        "label-free figures.",
        "",
        f"**{SPREAD_SENTENCE}**",
        "",
    ]
    for key, block in report["results"].items():
        size, prevalence = key.split("|")
        where = f"the split's prevalence ({split['prevalence']:.1%})" if prevalence == "split" else f"{report['config']['low_prevalence']:.0%} prevalence"
        lines += [
            f"### {size} unlabelled films, at {where}",
            "",
            f"Refused: {block['refused']} of {block['draws']} draws"
            + (" (" + "; ".join(f"{count}: {reason}" for reason, count in block["refusal_reasons"].items()) + ")" if block["refused"] else "")
            + ". Median (5th-95th percentile) over the draws, on the remaining films:",
            "",
            "| figure | " + " | ".join(POINT_NAMES[p] for p in EVAL_POINTS) + " |",
            "|---|" + "---|" * len(EVAL_POINTS),
        ]
        for name in EVAL_FIGURES:
            lines.append(f"| {FIGURE_NAMES[name]} | " + " | ".join(_cell(block["points"][p][name]) for p in EVAL_POINTS) + " |")
        lines += [
            f"| prevalence: true / estimated without labels | {_cell(block['true_prevalence'])} / {_cell(block['estimated_prevalence'])} | | |",
            "",
            f"Estimated minus true prevalence: {_cell(block['prevalence_error'])}; the interval held the truth in "
            + ("n/a" if block["interval_covers_truth"] is None else f"{block['interval_covers_truth']:.0%}")
            + f" of accepted draws. Remaining films per draw: {block['remaining_normal']['median']:.0f} normal, "
            f"{block['remaining_pneumonia']['median']:.0f} pneumonia.",
            "",
        ]
    lines += ["Must reach (label-free, at 250 unlabelled films):", ""]
    for row in report["must_reach"]:
        where = "the split's prevalence" if row["prevalence"] == "split" else "30 %"
        shown = "n/a" if row["value"] is None else f"{row['value']:.3f}"
        op = "≥" if row["op"] == ">=" else "≤"
        name = "share of draws refused" if row["figure"] == "refused_share" else f"{STATISTIC_NAMES[row['statistic']]} {FIGURE_NAMES[row['figure']]}"
        lines.append(f"- {'met' if row['met'] else '**missed**'}: at {where}, {name} {shown} (must reach {op} {row['target']:.3f}).")
    lines += [
        "",
        "All must-reach items met." if report["must_reach_met"] else
        f"**Must-reach not met**: {sum(not r['met'] for r in report['must_reach'])} of {len(report['must_reach'])} items missed. "
        "The rules are kept as committed; they were not retuned on the test split.",
    ]
    if "test_evaluations_so_far" in report:
        lines.append(f"The test split has been evaluated {report['test_evaluations_so_far']} time(s) in this repository's log.")
    return "\n".join(lines) + "\n"


def label_free_figure(report: dict, path: Path) -> Path:
    """Sensitivity, specificity and grey-zone share against the unlabelled sample's size: label-free,
    shipped and labelled-200 medians with 5-95 % bands, at the split's prevalence (30 % dotted)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 3.6))
    axes_row = figure.subplots(1, 3)
    colours = {"label_free": "#009E73", "shipped": "#D55E00", "labelled_200": "#0072B2"}
    for axes, name in zip(axes_row, ("sensitivity", "specificity", "grey_zone_share")):
        for point in EVAL_POINTS:
            for prevalence in ("split", "low"):
                keys = [k for k in report["results"] if k.endswith(f"|{prevalence}")]
                sizes = [int(k.split("|")[0]) for k in keys]
                stats = [report["results"][k]["points"][point][name] for k in keys]
                median = [np.nan if s["median"] is None else s["median"] for s in stats]
                if prevalence == "split":
                    axes.fill_between(sizes, [np.nan if s["p5"] is None else s["p5"] for s in stats],
                                      [np.nan if s["p95"] is None else s["p95"] for s in stats], color=colours[point], alpha=0.15, linewidth=0)
                    axes.plot(sizes, median, "o-", color=colours[point], label=f"{POINT_NAMES[point]}, split prevalence")
                else:
                    axes.plot(sizes, median, ":", marker=".", color=colours[point], label=f"{POINT_NAMES[point]}, 30 %")
        axes.set_title(name.replace("_", " "), fontsize=10)
        axes.set_xlabel("unlabelled local films")
        axes.set_xticks(list(EVAL_SIZES))
        axes.grid(alpha=0.3)
    axes_row[0].legend(fontsize=7, loc="lower right")
    figure.suptitle("Label-free alignment on the remaining test films (median; band 5th-95th percentile over draws)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def run_label_free_draws(scored, reference, metadata, sizes=EVAL_SIZES, draws: int = 200, seed: int = EVAL_SEED) -> dict:
    from threadpoolctl import threadpool_limits

    from ..alignment import ClassDensities

    densities = ClassDensities.of(reference)
    with threadpool_limits(limits=1):
        return {
            f"{size}|{prevalence}": [
                one_label_free_draw(scored, reference, densities, metadata, size, prevalence, draw, seed) for draw in range(draws)
            ]
            for size, prevalence in label_free_settings(sizes)
        }


def evaluate_label_free(model_path: Path, data_dir: Path, reports_dir: Path, draws: int = 200, seed: int = EVAL_SEED, sizes=EVAL_SIZES) -> dict:
    """``site evaluate --label-free``: the protocol above; writes ``site_label_free.{json,md}`` and its figure,
    and logs the test-split use."""
    import datetime as dt

    from ..alignment import Reference, reference_path
    from .evaluation import json_safe, record_test_use
    from .site_evaluation import model_facts, score_split

    predictor = Predictor.from_file(Path(model_path), runtime="keras")  # the lab scores on TensorFlow, as its reports
    reference = Reference.load(reference_path(model_path), predictor.metadata.model_sha256)
    scored = score_split(predictor, Path(data_dir))
    reports_dir = Path(reports_dir)
    count = record_test_use(reports_dir, predictor.metadata.model_sha256, "test")
    draws_by_setting = run_label_free_draws(scored, reference, predictor.metadata, sizes, draws, seed)
    report = build_label_free_report(scored, draws_by_setting, model_facts(predictor), reference, draws, seed)
    report["created_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    report["test_evaluations_so_far"] = count
    report = json_safe(report)
    (reports_dir / f"{EVAL_REPORT_NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    (reports_dir / f"{EVAL_REPORT_NAME}.md").write_text(label_free_markdown(report))
    label_free_figure(report, reports_dir / EVAL_FIGURE_PATH)
    return report
