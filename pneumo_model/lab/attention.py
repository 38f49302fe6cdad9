"""Attention outside the body, measured: the cut-off fitted on validation by the committed rule
(``docs/attention_rule.md``), the official test split measured into ``reports/attention.{json,md}``,
and the contact sheet of the thorax mask's check by eye (``assets/annotations/thorax.md``).

Every image is scored as the app scores it: decoded once (``DecodedImage.decode``), called with the
gate in batches (``Predictor.calls``, as ``evaluation.call_files`` does), its Grad-CAM made on the
same model input (only where the heat lies enters the share, not its strength), its
markers found (``find_markers``) and its body outlined (``thorax_mask``) on the decoded pixels.
Maps are the raw ones (``GradCam.raw_heatmaps``); one the model's heat-map scale calls weak is not
judged (``docs/attention_rule.md``, amendment 1).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure

from ..artifacts import REPO_ROOT
from ..crop import find_diaphragm, find_markers
from ..data import Sample, model_split
from ..display import screen_grey
from ..explain import GradCam, HeatmapScale, heatmap_scale_path, overlay_heatmap
from ..pipeline import DecodedImage
from ..prediction import Predictor
from ..thorax import (
    MOST,
    MOSTLY_OUTSIDE,
    REGIONS,
    RULE_DOCUMENT,
    AttentionRule,
    ThoraxMask,
    attention_inside,
    attention_on_markers,
    attention_path,
    attention_regions,
    anatomy_map,
    thorax_mask,
)
from .evaluation import DEFAULT_REPORTS_DIR, decoded_batches, json_safe, record_test_use

REPORT_NAME = "attention"
UNUSUAL_PERCENTILE = 5.0  # docs/attention_rule.md: the note's cut-off is this percentile on validation
CHECK_CSV = REPO_ROOT / "assets" / "annotations" / "thorax_check.csv"
SHEET_FIGURE = "figures/thorax_check.jpg"  # photographs: a JPEG is a quarter of the PNG
HISTOGRAM_FIGURE = "figures/attention_share.png"
WARNED_FIGURE = "figures/attention_warned.png"


@dataclass(frozen=True)
class ImageAttention:
    """Where the model's heat lay on one image.

    Attributes:
        file: the file's name.
        label: 0 normal, 1 pneumonia (the truth).
        probability: calibrated probability of pneumonia.
        called: 1 when called pneumonia at the operating threshold.
        ood: the gate's verdict (None without a gate).
        weak: the map is weak by the heat-map scale (not judged).
        share_inside: share of the heat inside the body and off markers; None when undefined.
        share_on_markers: share of the heat on detected markers; None for a map without heat.
        outline_found: whether ``thorax_mask`` found the body.
        whole_image: the outline is the whole image (no background visible).
        markers: how many markers ``find_markers`` found.
        regions: the share of the heat per region (``attention_regions``: the lung fields, the
            heart and mediastinum, below the diaphragm, the rest of the body, outside); None when
            the lungs were not both outlined or the map holds no heat.
        anatomy_reason: why the heat was not placed on the anatomy ("" when it was).
    """

    file: str
    label: int
    probability: float
    called: int
    ood: bool | None
    weak: bool
    share_inside: float | None
    share_on_markers: float | None
    outline_found: bool
    whole_image: bool
    markers: int
    regions: dict | None = None
    anatomy_reason: str = ""

    @property
    def correct(self) -> bool:
        return self.called == self.label

    @property
    def judged(self) -> bool:
        """The map is judged: not weak, and its share is defined."""
        return not self.weak and self.share_inside is not None

    @property
    def placed(self) -> bool:
        """The map is judged and its heat was placed on the anatomy (both lungs outlined)."""
        return self.judged and self.regions is not None


def measure(
    predictor: Predictor,
    gradcam: GradCam,
    scale: HeatmapScale,
    samples: Sequence[Sample],
    progress: Callable[[int, int], None] | None = None,
    keep: Callable[[ImageAttention], bool] | None = None,
) -> tuple[list[ImageAttention], dict[str, tuple[np.ndarray, np.ndarray, ThoraxMask]]]:
    """The attention of every sample, scored through the pipeline.

    Args:
        keep: which images to keep the pixels' screen copy, heat map and mask of (for figures).

    Returns:
        One ``ImageAttention`` per sample, in order, and for the kept images (by file name) the
        screen copy (uint8), the heat map and the outline.
    """
    size = predictor.input_size
    results: list[ImageAttention] = []
    kept: dict[str, tuple[np.ndarray, np.ndarray, ThoraxMask]] = {}
    paths = [sample.path for sample in samples]
    for batch in decoded_batches(paths, predictor.batch_size):
        start = len(results)
        calls = predictor.calls(batch)
        inputs = np.stack([image.model_input(size) for image in batch])  # (n, size, size, 1) float32
        heatmaps = gradcam.raw_heatmaps(inputs)  # (n, size, size) float32 >= 0, in logit units
        for offset, (image, call, heat) in enumerate(zip(batch, calls, heatmaps)):
            sample = samples[start + offset]
            found = find_markers(image.pixels)
            mask = thorax_mask(image.pixels, markers=found.mask)
            anatomy = anatomy_map(find_diaphragm(image.pixels))
            result = ImageAttention(
                file=sample.path.name,
                label=int(sample.label),
                probability=float(call.probability),
                called=int(call.label == "pneumonia"),
                ood=call.ood,
                weak=scale.is_weak(heat),
                share_inside=attention_inside(heat, mask, found.mask),
                share_on_markers=attention_on_markers(heat, found.mask),
                outline_found=mask.found,
                whole_image=mask.whole_image,
                markers=len(found.boxes),
                regions=attention_regions(heat, mask, anatomy, found.mask),
                anatomy_reason="" if anatomy.found else anatomy.reason,
            )
            results.append(result)
            if keep is not None and keep(result):
                kept[result.file] = (screen_grey(image.pixels), scale.unit(heat), mask)
        if progress is not None:
            progress(len(results), len(samples))
    return results, kept


def distribution(values: Sequence[float]) -> dict:
    """n, median, quartiles and 5th percentile of the defined values (NumPy's linear percentiles)."""
    values = np.array([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        return {"n": 0, "median": None, "q1": None, "q3": None, "p5": None}
    p5, q1, median, q3 = np.percentile(values, [UNUSUAL_PERCENTILE, 25, 50, 75])
    return {"n": int(values.size), "median": float(median), "q1": float(q1), "q3": float(q3), "p5": float(p5)}


def _rates(results: Sequence[ImageAttention], rule: AttentionRule) -> dict:
    """How often each level fires among the judged images (not weak, share defined)."""
    defined = [r for r in results if r.judged]
    warned = sum(r.share_inside < rule.mostly_outside for r in defined)
    noted = sum(rule.mostly_outside <= r.share_inside < rule.unusual for r in defined)
    n = len(defined)
    return {
        "n_images": len(results),
        "n_weak": sum(r.weak for r in results),
        "n": n,
        "warned": int(warned),
        "warning_rate": warned / n if n else None,
        "noted": int(noted),
        "note_rate": noted / n if n else None,
    }


def _groups(results: Sequence[ImageAttention]) -> dict[str, list[ImageAttention]]:
    return {
        "all": list(results),
        "correct": [r for r in results if r.correct],
        "wrong": [r for r in results if not r.correct],
        "normal": [r for r in results if r.label == 0],
        "pneumonia": [r for r in results if r.label == 1],
        "normal, correct": [r for r in results if r.label == 0 and r.correct],
        "normal, wrong": [r for r in results if r.label == 0 and not r.correct],
        "pneumonia, correct": [r for r in results if r.label == 1 and r.correct],
        "pneumonia, wrong": [r for r in results if r.label == 1 and not r.correct],
    }


def summary(results: Sequence[ImageAttention], rule: AttentionRule) -> dict:
    """Share inside (median, quartiles) and how often each level fires, per group of images."""
    no_outline = [r.file for r in results if not r.outline_found]
    no_heat = [r.file for r in results if r.outline_found and r.share_inside is None]
    weak = [r for r in results if r.weak]
    with_markers = [r for r in results if r.markers]
    on_markers = [r.share_on_markers for r in with_markers if r.share_on_markers is not None]
    return {
        "n_images": len(results),
        "anatomy": anatomy_summary(results, rule),
        "left_out": {"no_outline": no_outline, "no_heat": no_heat, "weak": len(weak)},
        "weak_by_class": {"normal": sum(r.label == 0 for r in weak), "pneumonia": sum(r.label == 1 for r in weak)},
        "whole_image_outline": sum(r.whole_image for r in results),
        "gate_flagged": sum(bool(r.ood) for r in results),
        "images_with_markers": len(with_markers),
        "share_on_markers_where_found": distribution(on_markers),
        "groups": {
            name: {"share_inside": distribution([r.share_inside for r in group if r.judged]), **_rates(group, rule)}
            for name, group in _groups(results).items()
        },
    }


def _not_placed_reason(reason: str) -> str:
    """The kind of outline failure, from ``AnatomyMap.reason``: for counting, not for showing."""
    if "one lung only" in reason:
        return "one lung only"
    if "no lung field" in reason:
        return "no lung"
    if "to their apex" in reason:
        return "an outline short of its apex"
    if "down to their base" in reason:
        return "an outline short of its base"
    return "the diaphragm refused (a hazy base, or no diaphragm in view)"


def anatomy_summary(results: Sequence[ImageAttention], rule: AttentionRule) -> dict:
    """Where the heat lies on the anatomy, per group: the shares per region over the judged maps
    placed on it, why the others were not placed, and how often each anatomy level fires."""
    judged = [r for r in results if r.judged]
    not_placed: dict[str, int] = {}
    for r in judged:
        if r.regions is None:
            kind = _not_placed_reason(r.anatomy_reason)
            not_placed[kind] = not_placed.get(kind, 0) + 1

    def block(group: Sequence[ImageAttention]) -> dict:
        placed = [r for r in group if r.placed]
        n = len(placed)
        most = {name: sum(max(r.regions, key=r.regions.get) == name for r in placed) for name in REGIONS}
        out = {
            "n_judged": sum(r.judged for r in group),
            "n_placed": n,
            "shares": {name: distribution([r.regions[name] for r in placed]) for name in REGIONS},
            "largest_region": most,
            "lungs_at_most_half": sum(r.regions["lungs"] <= MOST for r in placed),
        }
        if rule.lungs_unusual is not None:
            out["off_lungs"] = sum(r.regions["lungs"] < rule.lungs_unusual for r in placed)
            out["off_lungs_rate"] = out["off_lungs"] / n if n else None
        return out

    return {
        "not_placed": not_placed,
        "groups": {name: block(group) for name, group in _groups(results).items() if name in (
            "all", "correct", "wrong", "normal", "pneumonia")},
    }


def fit_rule(model_path: Path, data_dir: Path, progress: Callable[[int, int], None] | None = None) -> AttentionRule:
    """The attention cut-offs for one model, by the committed rule, on its validation split only.

    Raises:
        DataError: the data folder differs from the data the model was trained on.
        ModelFileError: the model has no heat-map scale of its own (it decides which maps are weak).
        ConfigError: no validation image has a judged map.
    """
    from ..errors import ConfigError

    predictor = Predictor.from_file(model_path, runtime="keras")
    metadata = predictor.metadata
    scale = HeatmapScale.load(heatmap_scale_path(model_path), metadata.model_sha256)
    validation = model_split(metadata, Path(data_dir)).validation
    results, _ = measure(predictor, GradCam(predictor.model, metadata.gradcam_layer), scale, validation, progress)
    shares = distribution([r.share_inside for r in results if r.judged])
    if shares["n"] == 0:
        raise ConfigError(
            "No validation image had a body outline and a map that is not weak, so no cut-off can be fitted."
        )
    unusual = max(MOSTLY_OUTSIDE, shares["p5"])
    lungs = distribution([r.regions["lungs"] for r in results if r.placed])
    if lungs["n"] == 0:
        raise ConfigError(
            "On no validation image were both lungs outlined under a map that is not weak, so the anatomy "
            "cut-off cannot be fitted."
        )
    rule = AttentionRule(
        model_sha256=metadata.model_sha256,
        mostly_outside=MOSTLY_OUTSIDE,
        unusual=unusual,
        validation_median=shares["median"],
        heatmap_scale_id=scale.id,
        rule=RULE_DOCUMENT,
        lungs_unusual=lungs["p5"],
        lungs_median=lungs["median"],
    )
    facts = {
        "split": "validation",
        "percentile": UNUSUAL_PERCENTILE,
        "p5_measured": shares["p5"],
        "note_never_fires": shares["p5"] <= MOSTLY_OUTSIDE,
        **summary(results, rule),
    }
    return dataclasses.replace(rule, facts=json_safe(facts))


def write_rule(rule: AttentionRule, model_path: Path) -> tuple[Path, bool]:
    """Saves the rule beside the model; an existing file with the same content (but its date) is
    kept as it is, so a rerun changes nothing. Returns the path and whether it was written."""
    path = attention_path(model_path)
    if path.is_file():
        old = json.loads(path.read_text())
        new = rule.to_dict()
        if {k: v for k, v in old.items() if k != "created_utc"} == {k: v for k, v in new.items() if k != "created_utc"}:
            return path, False
    rule.save(path)
    return path, True


# --------------------------------------------------------------------------------------------
# The test split, to report


def _histogram(results: Sequence[ImageAttention], rule: AttentionRule, path: Path) -> None:
    figure = Figure(figsize=(6.4, 3.2))
    axes = figure.subplots()
    bins = np.linspace(0.0, 1.0, 41)
    for name, colour, group in (
        ("correct calls", "#0072B2", [r.share_inside for r in results if r.correct and r.judged]),
        ("wrong calls", "#D55E00", [r.share_inside for r in results if not r.correct and r.judged]),
    ):
        if group:
            axes.hist(group, bins=bins, histtype="step", linewidth=1.6, color=colour, density=True, label=f"{name} ({len(group)})")
    axes.axvline(rule.mostly_outside, color="0.2", linestyle="--", linewidth=1, label=f"warning below {rule.mostly_outside:.2f}")
    if rule.unusual > rule.mostly_outside:
        axes.axvline(rule.unusual, color="0.5", linestyle=":", linewidth=1, label=f"note below {rule.unusual:.2f}")
    axes.set(xlabel="share of the Grad-CAM heat inside the body's outline", ylabel="density of images", xlim=(0, 1))
    axes.set_title("Official test split, maps that are not weak: where the model's heat lies", fontsize=10)
    axes.legend(fontsize=7, loc="upper left")
    _save(figure, path)


def _outlined(screen: np.ndarray, heat: np.ndarray, mask: ThoraxMask) -> np.ndarray:
    """The heat map over the screen copy with the body's outline drawn (uint8 RGB)."""
    picture = overlay_heatmap(screen, heat, alpha=0.45)
    if mask.found:
        outline = (mask.coverage(*screen.shape) >= 0.5).astype(np.uint8)
        contours, _ = cv2.findContours(outline, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(picture, contours, -1, (255, 255, 255), max(1, round(max(screen.shape) / 160)))
    return picture


def _gallery(
    items: Sequence[tuple[str, np.ndarray]], title: str, path: Path, columns: int = 4, dpi: int = 110, cell: float = 2.6
) -> None:
    rows = max(1, -(-len(items) // columns))
    figure = Figure(figsize=(cell * columns, (cell + 0.3) * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (caption, picture) in zip(axes.ravel(), items):
        axis.imshow(picture)
        axis.set_title(caption, fontsize=7)
    figure.suptitle(title, fontsize=10)
    _save(figure, path, dpi)


def _save(figure: Figure, path: Path, dpi: int = 110) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"pil_kwargs": {"quality": 85}} if path.suffix == ".jpg" else {}
    figure.savefig(path, dpi=dpi, bbox_inches="tight", **extra)


def evaluate_test(model_path: Path, data_dir: Path, reports_dir: Path = DEFAULT_REPORTS_DIR, progress=None) -> dict:
    """Measures the official test split with the model's committed cut-offs, to report; logged.

    Writes ``reports/attention.json`` and ``.md`` and two figures (the share inside for correct and
    wrong calls; the test images on which the warning fired, with their heat and outline).

    Raises:
        ModelFileError: the model has no heat-map scale or cut-off file of its own, or the cut-off
            was fitted with another scale (``AttentionRule.load``).
    """
    predictor = Predictor.from_file(model_path, runtime="keras")
    metadata = predictor.metadata
    scale = HeatmapScale.load(heatmap_scale_path(model_path), metadata.model_sha256)
    rule = AttentionRule.load(attention_path(model_path), metadata.model_sha256, scale.id)
    test = model_split(metadata, Path(data_dir)).test
    results, kept = measure(
        predictor, GradCam(predictor.model, metadata.gradcam_layer), scale, test, progress,
        keep=lambda r: r.judged and r.share_inside < rule.mostly_outside,
    )
    reports_dir = Path(reports_dir)
    uses = record_test_use(reports_dir, metadata.model_sha256, "test")
    _histogram(results, rule, reports_dir / HISTOGRAM_FIGURE)
    warned = sorted((r for r in results if r.file in kept), key=lambda r: r.share_inside)
    items = [
        (f"{r.file}\n{'P' if r.label else 'N'}, p={r.probability:.3f}, {100 * r.share_inside:.0f} % inside",
         _outlined(*kept[r.file]))
        for r in warned[:12]
    ]
    if items:
        _gallery(items, "Test images whose warning fired: heat (viridis) and the body's outline (white)", reports_dir / WARNED_FIGURE)
    report = {
        "schema_version": 1,
        "model_sha256": metadata.model_sha256,
        "split": "test",
        "split_description": "official Kermany 2018 test split (624 images)" if metadata.protocol == "official" else "test part",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rule": rule.rule,
        "mostly_outside": rule.mostly_outside,
        "unusual": rule.unusual,
        "lungs_unusual": rule.lungs_unusual,
        "lungs_median": rule.lungs_median,
        "validation": {
            "anatomy": {
                key: rule.facts.get("anatomy", {}).get("groups", {}).get("all", {}).get(key)
                for key in ("n_placed", "off_lungs")
            } if rule.places_on_anatomy else {},
            "median": rule.validation_median,
            "p5": rule.facts.get("p5_measured"),
            "groups": {k: rule.facts["groups"][k] for k in ("all", "correct", "wrong", "normal", "pneumonia") if k in rule.facts.get("groups", {})},
        },
        "test": summary(results, rule),
        "warned_images": [
            {"file": r.file, "label": r.label, "probability": r.probability, "share_inside": r.share_inside}
            for r in warned
        ],
        "figures": {"share": HISTOGRAM_FIGURE, **({"warned": WARNED_FIGURE} if items else {})},
        "test_evaluations_logged": uses,
        "threshold": predictor.threshold,
    }
    report = json_safe(report)
    (reports_dir / f"{REPORT_NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    (reports_dir / f"{REPORT_NAME}.md").write_text(markdown(report))
    return report


def _percent(value, decimals: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{decimals}f} %"


def _spread(block: dict) -> str:
    if block["median"] is None:
        return "n/a"
    return f"{_percent(block['median'])} ({100 * block['q1']:.1f}-{_percent(block['q3'])})"


REGION_NAMES = {
    "lungs": "lung fields", "heart": "heart and mediastinum", "below": "below the diaphragm",
    "elsewhere": "beside or above the outlined lungs", "outside": "outside the body",
}


def anatomy_markdown(report: dict) -> list[str]:
    """The anatomy section of the report (amendment 2): the shares per region, why maps were not
    placed, how often the "not on the lungs" warning fired; empty for a report made before it."""
    anatomy = report["test"].get("anatomy")
    if not anatomy or report.get("lungs_unusual") is None:
        return []
    groups = anatomy["groups"]
    every = groups["all"]
    names = [name for name in ("all", "correct", "wrong", "normal", "pneumonia") if name in groups]
    lines = [
        f"**Where the heat lies on the anatomy** (amendment 2 of the rule): the heat is placed on the regions only "
        f"where both lungs were outlined; that was so for {every['n_placed']} of the {every['n_judged']} judged maps. "
        "Not placed: " + (", ".join(f"{kind} {count}" for kind, count in anatomy["not_placed"].items()) or "none") + ".",
        "",
        "| share of the heat: median (quartiles) | " + " | ".join(f"{name} ({groups[name]['n_placed']})" for name in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for region in REGIONS:
        lines.append(f"| {REGION_NAMES[region]} | " + " | ".join(_spread(groups[name]["shares"][region]) for name in names) + " |")
    lines.append(
        "| largest region: lungs / heart / below / rest / outside | "
        + " | ".join(" / ".join(str(groups[name]["largest_region"][r]) for r in REGIONS) for name in names) + " |"
    )
    lines.append(
        f"| warning *not on the lungs* (under {_percent(report['lungs_unusual'])} over the lung fields) | "
        + " | ".join(f"{groups[name].get('off_lungs', 0)} ({_percent(groups[name].get('off_lungs_rate'), 0)})" for name in names)
        + " |"
    )
    validation = report.get("validation", {}).get("anatomy", {})
    lines += [
        "",
        f"The warning's cut-off is the 5th percentile of the share over the lung fields on validation (median "
        f"{_percent(report.get('lungs_median'))}), fixed before the test split was measured"
        + (f"; on validation it fired on {validation['off_lungs']} of {validation['n_placed']} placed maps." if validation else "."),
        "",
    ]
    return lines


def markdown(report: dict) -> str:
    """The report as Markdown, for ``reports/attention.md`` and the Model card."""
    test = report["test"]
    groups = test["groups"]
    lines = [
        f"Model `{report['model_sha256'][:12]}`, {report['split_description']}: where the model's Grad-CAM heat lies "
        f"against the body's outline (`pneumo_model.thorax`), by the rule in `{report['rule']}`. Heat on a detected "
        "burned-in marker counts as outside.",
        "",
        f"Warning (*the model's attention is mostly outside the chest*) below {_percent(report['mostly_outside'], 0)} of the "
        f"heat inside; note (*more outside than on 19 validation films in 20*) below {_percent(report['unusual'])}, the "
        "5th percentile on validation. Both fixed before the test split was measured.",
        "",
        "| images | judged maps | heat inside: median (quartiles) | warning fired | note fired |",
        "|---|---|---|---|---|",
    ]
    for name in ("all", "correct", "wrong", "normal", "pneumonia", "normal, correct", "normal, wrong",
                 "pneumonia, correct", "pneumonia, wrong"):
        block = groups[name]
        lines.append(
            f"| {name} | {block['n']} | {_spread(block['share_inside'])} | "
            f"{block['warned']} ({_percent(block['warning_rate'], 0)}) | {block['noted']} ({_percent(block['note_rate'], 0)}) |"
        )
    left = test["left_out"]
    validation = report["validation"]["groups"].get("all", {})
    lines += [
        "",
        f"Judged: the maps that are not weak by the heat-map scale (`docs/heatmap_scale.md`). Of {test['n_images']} "
        f"images, {left['weak']} had a weak map (normal {test['weak_by_class']['normal']}, pneumonia "
        f"{test['weak_by_class']['pneumonia']}; {len(left['no_heat'])} of them without any heat at all): no region "
        "raised the pneumonia score much, so the page does not judge where the model looked. "
        f"{len(left['no_outline'])} had no body outline; on {test['whole_image_outline']} no background was visible and "
        f"the whole image was taken as the body. `find_markers` found markers on {test['images_with_markers']} images; "
        f"there the median share of the heat on them was {_percent(test['share_on_markers_where_found']['median'], 2)}. "
        f"The gate flagged {test['gate_flagged']} images (included).",
        "",
        f"On validation, where the cut-off was fitted: {validation.get('n', 'n/a')} judged maps, median "
        f"{_percent(report['validation']['median'])} inside, warning {validation.get('warned', 'n/a')}, note "
        f"{validation.get('noted', 'n/a')}.",
        "",
        *anatomy_markdown(report),
        f"Generated by `python -m pneumo_model attention --test`. The test split has been evaluated "
        f"{report['test_evaluations_logged']} time(s) in this repository's log.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The check by eye


def check_sheet(data_root: Path, out: Path, csv_path: Path = CHECK_CSV, columns: int = 6) -> Path:
    """Draws every image of ``thorax_check.csv`` with its outline (white) and the outside dimmed,
    with its set and verdict: the figure the check by eye was made on, for the record."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    items = []
    for row in rows:
        image = DecodedImage.decode(Path(data_root) / row["file"])
        mask = thorax_mask(image.pixels)
        screen = screen_grey(image.pixels, 256)
        picture = np.repeat(screen[:, :, np.newaxis], 3, axis=2)
        if mask.found:
            inside = mask.coverage(*screen.shape) >= 0.5
            picture[~inside] = (picture[~inside] * 0.45 + np.array([0, 60, 160]) * 0.55).astype(np.uint8)
            contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(picture, contours, -1, (255, 255, 255), 2)
        caption = f"{Path(row['file']).name}\n{row['set']}: {row['verdict']}"
        items.append((caption, picture))
    passed = sum(row["verdict"] == "pass" for row in rows)
    _gallery(
        items,
        f"Thorax mask checked by eye (assets/annotations/thorax.md): {passed} of {len(rows)} pass; outside dimmed",
        Path(out),
        columns,
        dpi=90,
        cell=2.1,
    )
    return Path(out)
